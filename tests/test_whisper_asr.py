"""Whisper speech recognition in JAX: greedy decoding against transformers' references, the key/value
cache against a full recompute, and the estimator's speech-to-text fallback.

References: the golden ``whisper-asr`` tokens (a plain greedy argmax loop of transformers' PyTorch
``WhisperForConditionalGeneration`` from decoder start id 3), and
``FlaxWhisperForConditionalGeneration.generate`` on a tiny random checkpoint saved here as
``flax_model.msgpack`` and as PyTorch-named ``model.safetensors``. transformers 5 has no Flax
models: the tokens ``generate`` returned, the model's parameter structure, ``config.json`` and
``generation_config.json`` are frozen under ``tests/fixtures/flax_oracles``
(``tests/scripts/make_flax_oracles.py``, run with transformers 4.57).
"""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import flax_checkpoints as fc
from emojax.encoders.whisper_decoder import (decode_step, decoder_apply, greedy_decode, init_cache,
                                             load_whisper_asr, cross_keys_values)
from emojax.encoders.whisper import whisper_apply
from test_audio_encoder_parity import arrays, golden, randomised, torch_named_copy

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|transcribe|>", "<|translate|>",
           "<|notimestamps|>"]
VOCAB = {t: i for i, t in enumerate(LETTERS + ["Ġ"] + SPECIAL)}  # "Ġ": the byte-level space
EOT, START, EN, ZH, TRANSCRIBE, TRANSLATE, NO_TS = (VOCAB[t] for t in SPECIAL)


def _decode(model, mel, prompt, new, **kwargs):
    return np.asarray(greedy_decode(model.params, mel, encoder_config=model.encoder_config,
                                    decoder_config=model.decoder_config, prompt=prompt, max_new_tokens=new, **kwargs))


def test_whisper_asr_parity_golden_greedy_tokens():
    """The golden tokens exactly: 8 argmax steps from start id 3 (no stop at EOS, as the reference)."""
    folder = golden("whisper-asr")
    model = load_whisper_asr(str(folder), with_processors=False)
    mel = arrays(folder, "inputs.npz")["input_features"]
    expected = arrays(folder, "outputs.npz")["greedy_tokens"].astype(np.int64)
    assert expected.shape == (2, 9)
    np.testing.assert_array_equal(_decode(model, mel, (3,), 8), expected)


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    """Random weights of ``FlaxWhisperForConditionalGeneration``'s structure (multilingual
    generation settings, a byte-level tokenizer, a 1 s feature extractor) saved as msgpack and as
    PyTorch-named SafeTensors, with the tokens the Flax model's ``generate`` returned for them."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer

    oracle = fc.oracle_arrays("whisper-asr")
    params = randomised(fc.structure("whisper-asr"), seed=7)
    root = tmp_path_factory.mktemp("whisper-asr")
    folder = fc.save_msgpack(root / "msgpack", params, json.loads(fc.oracle_path("whisper-asr", "config.json")
                                                                  .read_text()))
    shutil.copy(fc.oracle_path("whisper-asr", "generation_config.json"), folder / "generation_config.json")
    (root / "vocab.json").write_text(json.dumps(VOCAB))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), unk_token=SPECIAL[0],
                                 bos_token=SPECIAL[0], eos_token=SPECIAL[0], pad_token=SPECIAL[0])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    tokenizer.save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(str(folder))
    torch_named_copy(folder, root / "torch", params)
    for path in folder.iterdir():  # tokenizer, extractor and generation files, whichever transformers wrote
        if path.name not in ("config.json", fc.MSGPACK):
            shutil.copy(path, root / "torch" / path.name)
    return dict(root=root, params=params, mel=oracle["input_features"],
                generated={language: oracle[f"sequences_{language.strip('<|>')}"] for language in ("<|en|>", "<|zh|>")})


def test_whisper_asr_parity_flax_generate_both_layouts(tiny_asr):
    """Forced language/task/no-timestamps tokens, suppress and begin-suppress tokens, EOS and
    padding: the same token ids as ``FlaxWhisperForConditionalGeneration.generate`` (frozen)."""
    mel = tiny_asr["mel"]
    for language in ("<|en|>", "<|zh|>"):
        expected = tiny_asr["generated"][language]  # generate(..., task="transcribe", max_new_tokens=14)
        assert expected.shape == (3, 15)
        for layout in ("msgpack", "torch"):
            model = load_whisper_asr(str(tiny_asr["root"] / layout))
            prompt = model.prompt(language=language.strip("<|>"), task="transcribe")
            assert prompt == (START, VOCAB[language], TRANSCRIBE, NO_TS)
            ours = _decode(model, mel, prompt, 14 - 3, eos_token_id=model.eos_token_id,
                           pad_token_id=model.pad_token_id, suppress_tokens=model.suppress_tokens,
                           begin_suppress_tokens=model.begin_suppress_tokens)
            np.testing.assert_array_equal(ours, expected[:, :ours.shape[1]], err_msg=f"{layout} {language}")
            assert (expected[:, ours.shape[1]:] == EOT).all()  # the reference only pads beyond
            assert not np.isin(ours[:, 4:], model.suppress_tokens).any()


@pytest.mark.slow
def test_whisper_asr_cached_decode_equals_full_recompute(tiny_asr):
    """Every step of the cached loop gives the logits of a full causal pass over the tokens so far."""
    model = load_whisper_asr(str(tiny_asr["root"] / "msgpack"), with_processors=False)
    mel = tiny_asr["mel"]
    tokens = _decode(model, mel, (START,), 12)
    enc = whisper_apply(model.params["encoder"], mel, config=model.encoder_config)
    full = np.asarray(decoder_apply(model.params["decoder"], tokens, enc, config=model.decoder_config))
    np.testing.assert_array_equal(full[:, :-1].argmax(-1), tokens[:, 1:])
    cache = init_cache(model.decoder_config, mel.shape[0], tokens.shape[1])
    cross = cross_keys_values(model.params["decoder"], enc, config=model.decoder_config)
    for t in range(tokens.shape[1]):
        logits, cache = decode_step(model.params["decoder"], jnp.asarray(tokens[:, t]), t, cache, cross,
                                    config=model.decoder_config)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=1e-4, rtol=1e-4)


def test_whisper_asr_prompt_errors_and_language_detection(tiny_asr):
    model = load_whisper_asr(str(tiny_asr["root"] / "msgpack"))
    with pytest.raises(ValueError, match="language '<\\|fr\\|>' is not known.*<\\|en\\|>"):
        model.prompt(language="fr")
    with pytest.raises(ValueError, match="timestamp"):
        model.prompt(language="en", timestamps=True)
    assert model.prompt() == (START, -1, TRANSCRIBE, NO_TS)
    detected = _decode(model, tiny_asr["mel"], model.prompt(), 4, language_tokens=model.language_tokens)
    assert np.isin(detected[:, 1], [EN, ZH]).all()
    enc = whisper_apply(model.params["encoder"], tiny_asr["mel"], config=model.encoder_config)
    first = np.asarray(decoder_apply(model.params["decoder"], np.full((3, 1), START), enc,
                                     config=model.decoder_config))[:, 0]
    np.testing.assert_array_equal(detected[:, 1], np.where(first[:, EN] >= first[:, ZH], EN, ZH))


@pytest.mark.slow
def test_estimator_transcribes_audio_without_text(tiny_asr, tmp_path, text_meld, tiny_bert):
    """A text run given only audio scores the Whisper transcript: the same result as giving that
    text; batch prediction reports it per row, and an unreadable file is that row's error."""
    from configs.compose import compose
    from emojax.training.loop import fit
    from emojax.encoders.whisper_decoder import Transcriber
    from emojax.inference import Estimator, predict_table

    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(tiny_bert)
    cfg.train.epochs, cfg.progress = 1, False
    run = fit(cfg, tmp_path / "runs")
    asr = str(tiny_asr["root"] / "msgpack")
    rng = np.random.default_rng(0)
    clips = []
    for i in range(2):
        clips.append(tmp_path / f"clip{i}.wav")
        sf.write(clips[-1], (0.3 * rng.normal(size=12000)).astype(np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"not audio")

    expected = Transcriber(asr, language="en").transcribe([str(c) for c in clips])
    assert all(isinstance(t, str) for t in expected) and any(expected)
    estimator = Estimator(run, asr_model=asr, asr_language="en")
    heard = estimator.predict(audio=str(clips[0]))
    assert heard["transcript"] == expected[0]
    said = estimator.predict(text=expected[0])
    assert heard["predicted"] == said["predicted"]
    assert heard["probabilities"] == pytest.approx(said["probabilities"], abs=1e-6)
    assert "transcript" not in estimator.predict(text="hello", audio=str(clips[0]))  # given text wins

    with pytest.raises(ValueError, match="give at least one of the run's modalities"):
        Estimator(run).predict(audio=str(clips[0]))  # no recognizer: audio alone says nothing to a text run

    csv = tmp_path / "batch.csv"
    csv.write_text("audio,text\n" + "".join(f"{c.name},\n" for c in clips) + "broken.wav,\n")
    table = predict_table(estimator, csv, tmp_path / "out.csv", progress=False)
    assert table["transcript"].tolist()[:2] == expected
    assert table["error"].tolist()[:2] == ["", ""] and "broken.wav" in table["error"].iloc[2]
    assert table["predicted"].iloc[0] == heard["predicted"]
