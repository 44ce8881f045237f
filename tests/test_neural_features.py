"""Neural encoders selected from the config: Featurizer features equal the pure functions, cached,
unreadable files skipped, a training run on them, and the config errors.

Tiny random checkpoints in the Hugging Face layout are written to temporary folders: Whisper,
wav2vec2 and CLIP as the ``flax_model.msgpack`` transformers' Flax models saved (parameter
structures frozen under ``tests/fixtures/flax_oracles``, since transformers 5 has no Flax models;
written by ``tests/flax_checkpoints.py``), data2vec-audio, VideoMAE and ModernBERT (never a Flax
model in transformers) as PyTorch-named ``model.safetensors``; each with its transformers config
and feature extractor / image processor or tokenizer.
The dataset is the generated MELD-format demo (FLAC audio, MP4 video), 14 / 7 / 7 utterances.
"""
import json
import logging
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import flax_checkpoints as fc
from configs.compose import compose
from emojax import config as config_lib
from emojax.encoders import hub

pytest.importorskip("transformers")

HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 64
SIZES = {"train": 14, "dev": 7, "test": 7}


# -- tiny checkpoints --------------------------------------------------------------------------

def _write_flax_msgpack(folder: pathlib.Path, hf_config, structure: str, seed: int) -> pathlib.Path:
    """Random weights with the frozen parameter structure of the transformers Flax model for
    ``hf_config``, saved as that model's ``save_pretrained`` did: ``config.json`` +
    ``flax_model.msgpack``."""
    hf_config.architectures = [type(hf_config).__name__.replace("Config", "Model")]
    fc.save_msgpack(folder, fc.random_params(fc.structure(structure), seed, 0.2, ones=("scale", "weight_g")),
                    hf_config)
    return folder


class _RandomState(hub.StateReader):
    """Hands out a random tensor for every name a loader asks for (optional ones absent), and
    keeps them: the checkpoint the loader expects, to be written as ``model.safetensors``."""

    def __init__(self, seed):
        super().__init__({}, "random")
        self.rng = np.random.default_rng(seed)
        self.tensors = {}

    def has(self, name):
        return name in self.tensors

    def take(self, name, shape=None):
        if name not in self.tensors:
            centre = 1.0 if "norm" in name.lower() and name.endswith(".weight") else 0.0
            self.tensors[name] = self.rng.normal(centre, 0.2, tuple(shape)).astype(np.float32)
        return self.tensors[name]

    def unused(self, ignore=()):
        return []


def _write_torch_named(folder, hf_config, params_from_state, config_from_hf, seed):
    from safetensors.numpy import save_file

    hf_config.save_pretrained(str(folder))
    state = _RandomState(seed)
    params_from_state(state, config_from_hf(json.loads((folder / "config.json").read_text())))
    save_file(state.tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_whisper(folder):
    import transformers

    config = transformers.WhisperConfig(d_model=HIDDEN, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
                                        encoder_ffn_dim=FFN, decoder_layers=1, decoder_attention_heads=HEADS,
                                        decoder_ffn_dim=FFN, num_mel_bins=16, max_source_positions=100,
                                        max_target_positions=8, vocab_size=20)
    _write_flax_msgpack(folder, config, "features-whisper", 1)
    # a 2 s window: 200 mel frames, the 100 positions of this encoder
    transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=2).save_pretrained(str(folder))
    return folder


def write_wav2vec2(folder):
    import transformers

    config = transformers.Wav2Vec2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                         intermediate_size=FFN, conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3),
                                         conv_stride=(5, 2, 2), conv_bias=True, feat_extract_norm="layer",
                                         do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                                         num_conv_pos_embedding_groups=4, vocab_size=8)
    _write_flax_msgpack(folder, config, "features-wav2vec2", 2)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(str(folder))
    return folder


def write_data2vec_audio(folder):
    import transformers

    from emojax.encoders import wav2vec2

    config = transformers.Data2VecAudioConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                              intermediate_size=FFN, conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3),
                                              conv_stride=(5, 2, 2), num_conv_pos_embeddings=2,
                                              conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4, vocab_size=8)
    _write_torch_named(folder, config, wav2vec2.params_from_state, wav2vec2.Wav2Vec2Config.from_hf, 3)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(str(folder))
    return folder


def write_videomae(folder):
    import transformers

    from emojax.encoders import videomae

    config = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2,
                                         hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                         intermediate_size=FFN)
    _write_torch_named(folder, config, videomae.params_from_state, videomae.VideoMAEConfig.from_hf, 4)
    transformers.VideoMAEImageProcessor(size={"shortest_edge": 32},
                                        crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def write_clip(folder):
    import transformers

    config = transformers.CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                           num_attention_heads=HEADS, image_size=32, patch_size=16, projection_dim=8)
    _write_flax_msgpack(folder, config, "features-clip", 5)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def write_modernbert(folder, bert_folder):
    """ModernBERT weights with the tiny BERT's WordPiece tokenizer (vocab.txt, [CLS] ... [SEP])."""
    import transformers

    from emojax.encoders import modernbert

    vocab = (bert_folder / "vocab.txt").read_text().split()
    config = transformers.ModernBertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=48,
                                           num_hidden_layers=3, num_attention_heads=HEADS, max_position_embeddings=128,
                                           local_attention=8, global_attn_every_n_layers=2, pad_token_id=0,
                                           cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
    _write_torch_named(folder, config, modernbert.params_from_state, modernbert.ModernBertConfig.from_hf, 6)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(bert_folder / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("neural-encoders")
    return {"whisper": write_whisper(root / "whisper"), "wav2vec2": write_wav2vec2(root / "wav2vec2"),
            "data2vec-audio": write_data2vec_audio(root / "data2vec-audio"),
            "videomae": write_videomae(root / "videomae"), "clip": write_clip(root / "clip"),
            "modernbert": write_modernbert(root / "modernbert", tiny_bert)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from emojax.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0, sizes=SIZES)


@pytest.fixture(scope="module")
def dataset(demo):
    from emojax.data import load_dataset

    return load_dataset("meld", str(demo), target="emotion")


def make_config(demo, text=None, **encoders):
    """A run config over the demo for the modalities given as ``X=(family, model[, pooling])``
    (``text``: further ``encoders.T`` settings)."""
    cfg = compose(f"dataset=MELD--E,encoders={'+'.join(m for m in 'TAV' if m in encoders)}")
    cfg.dataset.path = str(demo)
    cfg.progress = False
    for m, (family, model, *pooling) in encoders.items():
        cfg.encoders[m].family = family
        cfg.encoders[m].model = str(model)
        if pooling:
            cfg.encoders[m].pooling = pooling[0]
    if text:
        cfg.encoders.T.update(text)
    config_lib.validate(cfg)
    return cfg


# -- by hand -----------------------------------------------------------------------------------

def by_hand(family, folder, paths, pooling):
    """The files' features ``(len(paths), hidden)`` from the pure functions and transformers'
    preprocessing, run eagerly as one batch."""
    import transformers

    from emojax.data.media import read_audio, read_video_frames
    from emojax.encoders import clip_vision, media_encoders, videomae, wav2vec2, whisper

    if family == "whisper":
        params, config = whisper.load_whisper(str(folder))
        extractor = transformers.WhisperFeatureExtractor.from_pretrained(str(folder))
        mel, mask = whisper.whisper_preprocess([read_audio(p, 16000) for p in paths], extractor)
        assert mel.shape == (len(paths), 16, 200)
        return whisper.whisper_pool(whisper.whisper_apply(params, jnp.asarray(mel), config=config), mask)
    if family in ("wav2vec2", "data2vec-audio"):
        params, config = wav2vec2.load_wav2vec2(str(folder))
        assert config.model_type == family
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
        waves = [read_audio(p, 16000) for p in paths]
        if family == "wav2vec2":  # layer-norm, stable: padding to the longest does not reach valid frames
            audio, mask = wav2vec2.wav2vec2_preprocess(waves, extractor)
        else:  # data2vec's stacked positional convolutions see the padding: pad to the clips' bucket
            bucket = next(s * 16000 for s in media_encoders.WAV2VEC2_BUCKETS_S if s * 16000 >= max(map(len, waves)))
            assert all(len(w) > bucket // 2 for w in waves), "choose clips of one bucket"
            out = extractor(waves, sampling_rate=16000, padding="max_length", max_length=bucket,
                            return_attention_mask=True, return_tensors="np")
            audio, mask = out["input_values"], out["attention_mask"]
        hidden = wav2vec2.wav2vec2_apply(params, jnp.asarray(audio), jnp.asarray(mask), config=config)
        return wav2vec2.wav2vec2_pool(hidden, jnp.asarray(mask), config=config, pooling=pooling)
    if family == "videomae":
        params, config = videomae.load_videomae(str(folder))
        assert config.num_frames == 4
        processor = transformers.VideoMAEImageProcessor.from_pretrained(str(folder))
        pixels = processor([list(read_video_frames(p, num_frames=4)) for p in paths],
                           return_tensors="np")["pixel_values"]
        assert pixels.shape == (len(paths), 4, 3, 32, 32)
        hidden = videomae.videomae_apply(params, jnp.asarray(pixels), config=config)
        assert pooling == "first"
        return hidden[:, 0]
    params, config = clip_vision.load_clip_vision(str(folder))
    processor = transformers.CLIPImageProcessor.from_pretrained(str(folder))
    pixels = np.stack([processor(images=list(read_video_frames(p, num_frames=media_encoders.CLIP_FRAMES)),
                                 return_tensors="np")["pixel_values"] for p in paths])
    if pooling == "first":
        return clip_vision.clip_video_features(params, jnp.asarray(pixels), config=config)
    hidden, _ = clip_vision.clip_vision_apply(params, jnp.asarray(pixels.reshape((-1,) + pixels.shape[2:])),
                                              config=config)
    return hidden.reshape(len(paths), -1, HIDDEN).mean(axis=1)


@pytest.mark.parametrize("family, modality, pooling", [
    pytest.param("whisper", "A", "default", marks=pytest.mark.slow),
    pytest.param("wav2vec2", "A", "default", marks=pytest.mark.slow),
    pytest.param("data2vec-audio", "A", "mean", marks=pytest.mark.slow),
    ("videomae", "V", "default"), ("clip", "V", "default"), ("clip", "V", "mean")])
@pytest.mark.slow
def test_media_encoder_features_equal_pure_functions(checkpoints, demo, dataset, family, modality, pooling):
    from emojax.encoders import media_encoders
    from emojax.features.featurizer import Featurizer

    config_family = "wav2vec2" if family == "data2vec-audio" else family
    cfg = make_config(demo, **{modality: (config_family, checkpoints[family], pooling)})
    featurizer = Featurizer(cfg)
    encoder = featurizer.encoders[modality]
    assert isinstance(encoder, media_encoders.ENCODERS[config_family]) and featurizer.dims == {modality: HIDDEN}
    split = dataset.splits["dev"]
    data = featurizer.split_features(split)
    assert data.features[modality].shape == (7, HIDDEN) and data.present[modality].all()
    resolved = media_encoders.resolve_pooling(config_family, pooling)
    rows = [0, 2, 6]  # clips of 1 to 2 s: one wav2vec2 length bucket
    paths = [getattr(split.samples[i], "audio" if modality == "A" else "video") for i in rows]
    expected = np.asarray(by_hand(family, checkpoints[family], paths, resolved))
    np.testing.assert_allclose(data.features[modality][rows], expected,
                               atol=2e-4 * max(1.0, np.abs(expected).max()), rtol=0)
    assert np.abs(expected[0] - expected[1]).max() > 1e-4  # the inputs really differ


def test_media_encoder_namespace_and_pooling_features(checkpoints):
    from emojax.encoders.media_encoders import media_encoder

    spec = {"family": "wav2vec2", "model": str(checkpoints["wav2vec2"]), "pooling": "default"}
    base = media_encoder("A", spec)
    assert base.pooling == "first" and base.namespace == media_encoder("A", dict(spec, pooling="first")).namespace
    assert media_encoder("A", dict(spec, pooling="mean")).namespace != base.namespace
    assert media_encoder("A", spec, dtype=jnp.bfloat16).namespace != base.namespace
    other = media_encoder("A", dict(spec, model=str(checkpoints["data2vec-audio"])))
    assert other.weights_hash != base.weights_hash and other.namespace != base.namespace
    assert media_encoder("A", {"family": "whisper", "model": str(checkpoints["whisper"])}).pooling == "mean"
    with pytest.raises(ValueError, match="encoders.V.family"):
        media_encoder("V", spec)


@pytest.mark.slow
def test_modernbert_text_encoder_features_with_speaker_tokens(checkpoints, demo, dataset, tiny_bert):
    from emojax.data.context import all_speaker_tokens
    from emojax.encoders import modernbert
    from emojax.encoders.text import pool_hidden
    from emojax.features.featurizer import Featurizer

    cfg = make_config(demo, T=("modernbert", checkpoints["modernbert"], "mask"),
                      text=dict(prompt=True, context_turns=1, max_length=64))
    tokens = all_speaker_tokens(dataset)
    featurizer = Featurizer(cfg, tokens)
    text = featurizer.encoders["T"]
    assert isinstance(text.encoder.config, modernbert.ModernBertConfig)
    # speaker tokens: one token each, new embedding rows holding the mean of the checkpoint's rows
    params, _ = modernbert.load_modernbert(str(checkpoints["modernbert"]))
    ids = text.encoder.tokenizer.convert_tokens_to_ids(tokens)
    word = np.asarray(text.encoder.params["embeddings"]["word"])
    assert text.encoder.tokenizer.tokenize(f"{tokens[1]}: fine") == [tokens[1], ":", "fine"]
    np.testing.assert_allclose(word[ids], np.broadcast_to(np.asarray(params["embeddings"]["word"]).mean(0),
                                                          (len(ids), HIDDEN)), atol=1e-6)
    split = dataset.splits["dev"]
    data = featurizer.split_features(split)
    texts = text.texts(split)
    assert all(t in " ".join(texts) for t in tokens[:2]) and text.encoder.mask_token in texts[0]
    batch = text.encoder.tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="np")
    hidden = modernbert.modernbert_apply(text.encoder.params, jnp.asarray(batch["input_ids"]),
                                         jnp.asarray(batch["attention_mask"]), config=text.encoder.config)
    expected = pool_hidden(hidden, jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["input_ids"]),
                           pooling="mask", mask_token_id=text.encoder.tokenizer.mask_token_id)
    np.testing.assert_allclose(data.features["T"], np.asarray(expected), atol=2e-4, rtol=0)
    # family "bert" reads the same checkpoint by its model_type; "modernbert" refuses a BERT one
    cfg.encoders.T.family = "bert"
    assert Featurizer(cfg, tokens).encoders["T"].namespace == text.namespace
    cfg.encoders.T.update(family="modernbert", model=str(tiny_bert))
    with pytest.raises(ValueError, match="encoders.T.family"):
        Featurizer(cfg, tokens)


def test_featurizer_neural_features_second_run_served_from_cache(checkpoints, demo, dataset, tmp_path, monkeypatch):
    from emojax.features.cache import FeatureCache
    from emojax.encoders import media_encoders
    from emojax.encoders.text import TextEncoder
    from emojax.features.featurizer import Featurizer

    cfg = make_config(demo, T=("modernbert", checkpoints["modernbert"]), A=("whisper", checkpoints["whisper"]),
                      V=("clip", checkpoints["clip"]))
    split = dataset.splits["test"]
    first = Featurizer(cfg, cache=FeatureCache(tmp_path / "cache")).split_features(split)
    assert all(first.present[m].all() for m in "AV") and {m: first.features[m].shape for m in "TAV"} == \
        {m: (7, HIDDEN) for m in "TAV"}

    def fail(*args, **kwargs):
        raise AssertionError("an encoder ran although every feature is cached")

    monkeypatch.setattr(media_encoders._MediaEncoder, "compute", fail)
    monkeypatch.setattr(TextEncoder, "encode", fail)
    second = Featurizer(cfg, cache=FeatureCache(tmp_path / "cache")).split_features(split)
    for m in "TAV":
        np.testing.assert_array_equal(second.features[m], first.features[m])
        np.testing.assert_array_equal(second.present[m], first.present[m])


@pytest.mark.slow
def test_corrupt_media_file_features_missing_with_logged_skip(checkpoints, demo, tmp_path, caplog):
    from emojax.features.cache import FeatureCache
    from emojax.data import load_dataset
    from emojax.features.featurizer import Featurizer

    root = tmp_path / "demo"
    shutil.copytree(demo, root)
    split = load_dataset("meld", str(root), target="emotion").splits["dev"]
    bad_audio, bad_video = pathlib.Path(split.samples[2].audio), pathlib.Path(split.samples[4].video)
    bad_audio.write_bytes(b"not audio at all " * 50)
    bad_video.write_bytes(b"not a video either " * 50)
    cfg = make_config(root, A=("wav2vec2", checkpoints["wav2vec2"]), V=("videomae", checkpoints["videomae"]))
    cache = FeatureCache(tmp_path / "cache")
    featurizer = Featurizer(cfg, cache=cache)
    with caplog.at_level(logging.WARNING):
        data = featurizer.split_features(split)
    assert data.present["A"].tolist() == [i != 2 for i in range(7)]
    assert data.present["V"].tolist() == [i != 4 for i in range(7)]
    assert not data.features["A"][2].any() and np.isfinite(data.features["A"]).all()
    assert f"skipping A input: {bad_audio}" in caplog.text and f"skipping V input: {bad_video}" in caplog.text
    assert "1 A file(s) unreadable" in caplog.text and "1 V file(s) unreadable" in caplog.text
    assert str(bad_audio) in featurizer.encoders["A"].errors and str(bad_video) in featurizer.encoders["V"].errors
    # the unreadable files are not cached: a repaired file is computed on the next run
    assert cache.stats()[featurizer.encoders["A"].namespace]["entries"] == 6
    shutil.copy(demo / bad_audio.relative_to(root), bad_audio)
    assert Featurizer(cfg, cache=cache).split_features(split).present["A"].all()


@pytest.mark.slow
def test_train_fit_with_wav2vec2_and_videomae_encoders(checkpoints, demo, tmp_path):
    from emojax.training.loop import fit

    cfg = make_config(demo, A=("wav2vec2", checkpoints["wav2vec2"]), V=("videomae", checkpoints["videomae"]))
    cfg.train.update(epochs=3, batch_size=8, patience=100)
    run_dir = fit(cfg, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert 1 <= results["best_epoch"] <= 3 and results["test"]["scored"]
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["encoders"]["A"]["family"] == "wav2vec2" and saved["encoders"]["V"]["family"] == "videomae"


@pytest.mark.parametrize("modality, field, value, key", [
    ("A", "family", "whisperx", "encoders.A.family"),
    ("A", "family", "videomae", "encoders.A.family"),  # a video family for audio
    ("V", "family", "wav2vec2", "encoders.V.family"),
    ("T", "family", "whisper", "encoders.T.family"),
    ("A", "pooling", "first", "encoders.A.pooling"),  # whisper pools over frames only
    ("V", "pooling", "max", "encoders.V.pooling"),
])
def test_neural_encoder_config_errors(modality, field, value, key):
    cfg = compose("encoders=T+A+V")
    cfg.encoders.A.family, cfg.encoders.V.family = "whisper", "clip"
    for good in ("default", "mean"):
        cfg.encoders.A.pooling = cfg.encoders.V.pooling = good
        config_lib.validate(cfg)
    cfg.encoders[modality][field] = value
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(cfg)


def test_encoder_config_accepts_every_family_and_classic_pooling_error():
    cfg = compose("encoders=T+A+V")
    config_lib.validate(cfg)  # the classic defaults
    for text, audio, video, pooling in (("modernbert", "wav2vec2", "videomae", "first"),
                                        ("bert", "wav2vec2", "clip", "mean"),
                                        ("bert", "whisper", "videomae", "default")):
        cfg.encoders.T.family, cfg.encoders.A.family, cfg.encoders.V.family = text, audio, video
        cfg.encoders.A.pooling = pooling if audio != "whisper" else "mean"
        cfg.encoders.V.pooling = pooling
        config_lib.validate(cfg)
    cfg = compose("encoders=A")
    cfg.encoders.A.pooling = "mean"
    with pytest.raises(config_lib.ConfigError, match=r"encoders\.A\.pooling.*classic-audio"):
        config_lib.validate(cfg)


def test_whisper_inputs_on_worker_processes_equal_one_worker(checkpoints, demo, tmp_path):
    """Whisper's log-mel inputs come from the media pool's worker processes: the same arrays, in
    the same order, as one worker gives, with an unreadable clip's MediaError in its place."""
    from emojax.data.media import MediaError
    from emojax.encoders.media_encoders import media_encoder

    encoder = media_encoder("A", {"family": "whisper", "model": str(checkpoints["whisper"])})
    paths = sorted(str(p) for p in pathlib.Path(demo).rglob("*.flac"))[:5]
    assert len(paths) == 5
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio " * 40)
    paths.insert(2, str(bad))
    pooled = list(encoder.inputs(paths, workers=2))
    alone = list(encoder.inputs(paths, workers=1))
    assert isinstance(pooled[2], MediaError) and str(bad) in str(pooled[2]) and isinstance(alone[2], MediaError)
    for i in (0, 1, 3, 4, 5):
        mel, mask = pooled[i]
        np.testing.assert_array_equal(mel, alone[i][0])
        np.testing.assert_array_equal(mask, alone[i][1])
        np.testing.assert_array_equal(mel, encoder.load(paths[i])[0])
    tuned = list(encoder.inputs(paths[:2], tuning=True, workers=2))
    assert tuned[0]["mel"].dtype == np.float32 and tuned[0]["mel_mask"].dtype == np.int32
    np.testing.assert_array_equal(tuned[1]["mel"], alone[1][0])
