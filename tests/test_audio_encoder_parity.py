"""Whisper, wav2vec2 and data2vec-audio encoders against transformers' outputs.

The golden folders hold tiny random checkpoints (PyTorch tensor names) and what transformers'
PyTorch models return for fixed inputs (``whisper``: ``WhisperModel``'s encoder; ``wav2vec2``: a
stable-layer-norm ``Wav2Vec2Model``; ``data2vec-audio``: ``Data2VecAudioModel``; the audio rows
have a padded second sample). Whisper and wav2vec2 are also checked against transformers'
``FlaxWhisperModel`` / ``FlaxWav2Vec2Model`` on random weights saved as ``flax_model.msgpack``, and
against the same weights written as PyTorch-named ``model.safetensors``. transformers 5 has no
Flax models: their outputs and parameter structures are frozen under ``tests/fixtures/flax_oracles``
(``tests/scripts/make_flax_oracles.py``, run with transformers 4.57) and the msgpack files are
written by ``tests/flax_checkpoints.py``. The wav2vec2-base variant (group-norm feature encoder)
has neither a golden nor a Flax reference: its feature encoder is checked against a NumPy
transcription of transformers' layers, its transformer shares the post-LN path the
data2vec-audio golden checks.
"""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_checkpoints as fc
from golden_outputs import arrays, golden
from emojax.encoders import hub
from emojax.encoders.wav2vec2 import (Wav2Vec2Config, feature_encoder, feature_lengths, frame_mask,
                                      load_wav2vec2, load_wav2vec2_feature_extractor, wav2vec2_apply,
                                      wav2vec2_pool, wav2vec2_preprocess)
from emojax.encoders.whisper import (load_whisper, load_whisper_feature_extractor, sinusoids, whisper_apply,
                                     whisper_frame_mask, whisper_pool, whisper_preprocess)


STATIC = ("config", "dtype", "deterministic", "return_extract_features")
whisper_jit = jax.jit(whisper_apply, static_argnames=STATIC[:3])
wav2vec2_jit = jax.jit(wav2vec2_apply, static_argnames=STATIC)

TOL = 1e-4       # float32 parity, relative to the reference's scale (max |value|, at least 1)
BF16_TOL = 5e-2  # bfloat16 keeps 8 mantissa bits; through these 2-layer models the outputs stay this close


@pytest.fixture(scope="module", autouse=True)
def full_float32_matmuls():
    """Float32 references are compared at 1e-4: keep accelerators from using TF32 matmuls."""
    with jax.default_matmul_precision("highest"):
        yield




def assert_close(out, ref, tol=TOL) -> float:
    """``max |out - ref| <= tol * max(1, max |ref|)``; returns the maximum difference."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    diff = float(np.abs(out - ref).max())
    bound = tol * max(1.0, float(np.abs(ref).max()))
    assert diff <= bound, f"max |difference| {diff:.3g} > {bound:.3g}"
    return diff


def randomised(shapes, seed):
    """Random float32 parameters with the structure of ``shapes`` (norm scales and weight-norm
    magnitudes around 1, everything else around 0), so every parameter really matters."""
    return fc.random_params(shapes, seed, 0.3, ones=("scale", "weight_g"))


def torch_named_copy(flax_folder: pathlib.Path, folder: pathlib.Path, params, rename=None) -> pathlib.Path:
    """The Flax ``params`` written as ``model.safetensors`` with PyTorch names and layouts."""
    from safetensors.numpy import save_file

    folder.mkdir()
    shutil.copy(flax_folder / "config.json", folder / "config.json")
    state = hub.flax_to_torch_state(params)
    if rename:
        state = {rename.get(k, k): v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# -- Whisper -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper_golden():
    folder = golden("whisper")
    params, config = load_whisper(str(folder))
    return params, config, arrays(folder, "inputs.npz")["input_features"], \
        arrays(folder, "outputs.npz")["last_hidden_state"], folder


def test_whisper_parity_golden(whisper_golden):
    params, config, mel, expected, _ = whisper_golden
    assert (config.num_mel_bins, config.max_source_positions, config.num_layers) == (16, 30, 2)
    out = whisper_jit(params, mel, config=config)
    assert out.shape == expected.shape == (2, 30, 32) and out.dtype == jnp.float32
    diff = assert_close(out, expected)
    print(f"whisper golden: max |diff| {diff:.3g}")
    # the checkpoint's position table is Whisper's sinusoid table
    np.testing.assert_allclose(np.asarray(params["positions"]), sinusoids(30, 32), atol=1e-6, rtol=0)


def test_whisper_parity_bf16_and_jit_vs_eager(whisper_golden):
    params, config, mel, expected, _ = whisper_golden
    eager = whisper_apply(params, jnp.asarray(mel), config=config)
    assert_close(eager, whisper_jit(params, mel, config=config), tol=1e-5)
    half = whisper_jit(params, mel, config=config, dtype=jnp.bfloat16)
    assert half.dtype == jnp.float32
    assert_close(half, expected, tol=BF16_TOL)
    assert np.abs(np.asarray(half) - expected).max() > 1e-6  # the products really ran in bfloat16


def test_whisper_parity_batch_and_pooling(whisper_golden):
    """Whisper has no attention mask (the reference attends to the padding of its 30 s window):
    rows of a batch are independent, and pooling averages the frames covering the real audio,
    ``ceil(mel frames / 2)`` of them."""
    params, config, mel, expected, _ = whisper_golden
    alone = whisper_jit(params, mel[1:], config=config)
    assert_close(alone[0], expected[1], tol=1e-5)
    mel_mask = np.zeros((2, 60), np.int32)
    mel_mask[0, :60] = 1
    mel_mask[1, :21] = 1  # 21 mel frames of audio -> 11 encoder frames
    pooled = np.asarray(whisper_pool(jnp.asarray(expected), mel_mask))
    np.testing.assert_allclose(pooled[0], expected[0].mean(0), atol=1e-6)
    np.testing.assert_allclose(pooled[1], expected[1, :11].mean(0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(whisper_pool(jnp.asarray(expected))), expected.mean(1), atol=1e-6)
    # shorter inputs than the 30 s window (transformers refuses them) use the first positions
    short = whisper_jit(params, mel[:, :, :21], config=config)
    assert short.shape == (2, 11, 32) and np.isfinite(np.asarray(short)).all()


def test_whisper_preprocessing_mask_and_pool():
    """``WhisperFeatureExtractor`` (80 mels, 30 s window, hop 160): 1 s of audio -> 100 mel frames
    -> 50 encoder frames in the pooled mean."""
    extractor = load_whisper_feature_extractor()
    t = np.arange(16000) / 16000
    mel, mel_mask = whisper_preprocess([np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 220 * t[:8001])],
                                       extractor)
    assert mel.shape == (2, 80, 3000) and mel.dtype == np.float32
    assert mel_mask.sum(1).tolist() == [100, 51]
    frames = np.asarray(whisper_frame_mask(mel_mask, 1500))
    assert frames.sum(1).tolist() == [50, 26] and frames[:, 0].all()
    hidden = np.random.default_rng(0).normal(size=(2, 1500, 8)).astype(np.float32)
    pooled = np.asarray(whisper_pool(jnp.asarray(hidden), mel_mask))
    np.testing.assert_allclose(pooled, np.stack([hidden[0, :50].mean(0), hidden[1, :26].mean(0)]), atol=1e-6)


@pytest.fixture(scope="module")
def whisper_flax(tmp_path_factory):
    """Random weights of ``FlaxWhisperModel``'s structure saved as ``flax_model.msgpack`` (and as
    PyTorch-named SafeTensors), with the Flax encoder's frozen output for 3 inputs."""
    oracle = fc.oracle_arrays("whisper")
    params = randomised(fc.structure("whisper"), seed=1)
    root = tmp_path_factory.mktemp("whisper-flax")
    fc.save_msgpack(root / "msgpack", params, json.loads(fc.oracle_path("whisper", "config.json").read_text()))
    assert (root / "msgpack" / "flax_model.msgpack").exists()
    torch_named_copy(root / "msgpack", root / "torch", params)
    return root, oracle["input_features"], oracle["last_hidden_state"]


def test_whisper_parity_flax_msgpack_and_safetensors(whisper_flax):
    root, mel, expected = whisper_flax
    params, config = load_whisper(str(root / "msgpack"))
    assert (config.hidden_size, config.max_source_positions, config.num_mel_bins) == (24, 20, 12)
    out = whisper_jit(params, mel, config=config)
    diff = assert_close(out, expected)
    print(f"whisper flax: max |diff| {diff:.3g}")
    torch_params, torch_config = load_whisper(str(root / "torch"))
    assert torch_config == config
    np.testing.assert_array_equal(np.asarray(whisper_jit(torch_params, mel, config=config)), np.asarray(out))


def test_whisper_parity_conditional_generation_checkpoint(whisper_golden, tmp_path):
    """A ``WhisperForConditionalGeneration`` folder (encoder under ``model.encoder.``, decoder and
    ``proj_out`` beside it) gives the same encoder; the golden ASR checkpoint loads too."""
    from safetensors.numpy import load_file, save_file

    _, _, mel, expected, folder = whisper_golden
    state = {"model." + k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    raw = json.loads((folder / "config.json").read_text())
    raw["architectures"] = ["WhisperForConditionalGeneration"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    params, config = load_whisper(str(tmp_path))
    assert_close(whisper_jit(params, mel, config=config), expected)

    asr = golden("whisper-asr")
    params, config = load_whisper(str(asr))
    out = whisper_jit(params, arrays(asr, "inputs.npz")["input_features"], config=config)
    assert out.shape == (2, 30, 32) and np.isfinite(np.asarray(out)).all()


def test_whisper_parity_rejects_misshaped_tensor_and_input(whisper_golden, tmp_path):
    from safetensors.numpy import load_file, save_file

    params, config, mel, _, folder = whisper_golden
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layers.1.fc1.weight"] = state["encoder.layers.1.fc1.weight"][:, :31]
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(hub.WeightError, match=r"'encoder\.layers\.1\.fc1\.weight' has shape \(64, 31\).*"
                                              r"expects \(64, 32\)"):
        load_whisper(str(tmp_path))
    with pytest.raises(ValueError, match="n_mels = 16"):
        whisper_apply(params, mel[:, :8], config=config)
    with pytest.raises(ValueError, match="1 to 60"):
        whisper_apply(params, np.concatenate([mel, mel], axis=2), config=config)


# -- wav2vec2 / data2vec-audio -----------------------------------------------------------------

@pytest.fixture(scope="module", params=["wav2vec2", "data2vec-audio"])
def audio_golden(request):
    folder = golden(request.param)
    params, config = load_wav2vec2(str(folder))
    return request.param, params, config, arrays(folder, "inputs.npz"), arrays(folder, "outputs.npz"), folder


def test_wav2vec2_data2vec_parity_golden(audio_golden):
    name, params, config, inputs, expected, _ = audio_golden
    assert config.model_type == name
    assert config.do_stable_layer_norm == (name == "wav2vec2") and config.feat_extract_norm == "layer"
    mask = inputs["attention_mask"]
    assert mask.sum(1).tolist() == [1600, 1200]
    hidden, extract = wav2vec2_jit(params, inputs["input_values"], mask, config=config, return_extract_features=True)
    assert hidden.dtype == jnp.float32 and hidden.shape == (2, 159, 32)
    assert feature_lengths(1200, config) == 119
    # padded frames are defined in the reference too (zeroed before the positional convolution)
    diff = assert_close(hidden, expected["last_hidden_state"])
    diff_extract = assert_close(extract, expected["extract_features"])
    print(f"{name} golden: last_hidden_state max |diff| {diff:.3g}, extract_features {diff_extract:.3g}")


@pytest.mark.slow
def test_wav2vec2_data2vec_parity_bf16_and_jit_vs_eager(audio_golden):
    name, params, config, inputs, expected, _ = audio_golden
    audio, mask = jnp.asarray(inputs["input_values"]), jnp.asarray(inputs["attention_mask"])
    jitted = wav2vec2_jit(params, audio, mask, config=config)
    assert_close(wav2vec2_apply(params, audio, mask, config=config), jitted, tol=1e-5)
    half = wav2vec2_jit(params, audio, mask, config=config, dtype=jnp.bfloat16)
    assert half.dtype == jnp.float32
    assert_close(half, expected["last_hidden_state"], tol=BF16_TOL)
    assert np.abs(np.asarray(half) - expected["last_hidden_state"]).max() > 1e-6  # really bfloat16


def test_wav2vec2_parity_padded_batch_equals_unpadded():
    """Stable-layer-norm wav2vec2 with the layer-norm feature encoder: the padded row's valid
    frames and pooled vectors equal those of the row run alone (the padding holds noise)."""
    folder = golden("wav2vec2")
    params, config = load_wav2vec2(str(folder))
    inputs = arrays(folder, "inputs.npz")
    audio, mask = inputs["input_values"], inputs["attention_mask"]
    batch = wav2vec2_jit(params, audio, mask, config=config)
    alone = wav2vec2_jit(params, audio[1:, :1200], None, config=config)
    assert alone.shape == (1, 119, 32)
    assert_close(batch[1, :119], alone[0], tol=1e-5)
    for pooling in ("mean", "first"):
        pooled = wav2vec2_pool(batch, mask, config=config, pooling=pooling)
        assert_close(pooled[1], wav2vec2_pool(alone, None, config=config, pooling=pooling)[0], tol=1e-5)
    valid = np.asarray(frame_mask(mask, 159, config))
    np.testing.assert_allclose(np.asarray(wav2vec2_pool(batch, mask, config=config))[1],
                               np.asarray(batch)[1][valid[1]].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        wav2vec2_pool(batch, mask, config=config, pooling="max")


def test_wav2vec2_parity_preprocessing_padded_batch():
    """``Wav2Vec2FeatureExtractor`` normalises each clip and zero-pads the batch: the pooled
    vector of the short clip is the same as when it is preprocessed and encoded alone."""
    folder = golden("wav2vec2")
    params, config = load_wav2vec2(str(folder))
    extractor = load_wav2vec2_feature_extractor(str(folder))  # no preprocessor_config.json: defaults
    rng = np.random.default_rng(5)
    clips = [rng.normal(0.3, 2.0, 1600), rng.normal(-0.1, 0.5, 1100)]
    audio, mask = wav2vec2_preprocess(clips, extractor)
    assert audio.shape == (2, 1600) and mask.sum(1).tolist() == [1600, 1100] and (audio[1, 1100:] == 0).all()
    np.testing.assert_allclose(audio[1, :1100].std(), 1.0, atol=1e-3)
    pooled = wav2vec2_pool(wav2vec2_jit(params, audio, mask, config=config), mask, config=config)
    audio_1, mask_1 = wav2vec2_preprocess(clips[1:], extractor)
    alone = wav2vec2_pool(wav2vec2_jit(params, audio_1, mask_1, config=config), mask_1, config=config)
    assert_close(pooled[1], alone[0], tol=1e-5)


def test_data2vec_parity_padding_leaks_through_positional_stack():
    """data2vec-audio's stacked positional convolutions carry the (non-zero) outputs of padded
    frames into valid ones, in the reference as here: the padded batch matches the golden above,
    and differs from the row run alone."""
    folder = golden("data2vec-audio")
    params, config = load_wav2vec2(str(folder))
    inputs = arrays(folder, "inputs.npz")
    batch = wav2vec2_jit(params, inputs["input_values"], inputs["attention_mask"], config=config)
    alone = wav2vec2_jit(params, inputs["input_values"][1:, :1200], None, config=config)
    assert np.abs(np.asarray(batch)[1, :119] - np.asarray(alone)[0]).max() > 1e-4


@pytest.fixture(scope="module")
def wav2vec2_flax(tmp_path_factory):
    """Random weights of ``FlaxWav2Vec2Model``'s structure (layer-norm feature encoder with conv
    biases, stable layer norm, odd positional window) saved as ``flax_model.msgpack``, the same
    weights as PyTorch-named SafeTensors (current ``parametrizations`` weight-norm names), and the
    Flax model's frozen outputs on a padded batch."""
    oracle = fc.oracle_arrays("wav2vec2")
    params = randomised(fc.structure("wav2vec2"), seed=3)
    root = tmp_path_factory.mktemp("wav2vec2-flax")
    fc.save_msgpack(root / "msgpack", params, json.loads(fc.oracle_path("wav2vec2", "config.json").read_text()))
    assert (root / "msgpack" / "flax_model.msgpack").exists()
    conv = "encoder.pos_conv_embed.conv."
    torch_named_copy(root / "msgpack", root / "torch", params,
                     rename={conv + "weight_g": conv + "parametrizations.weight.original0",
                             conv + "weight_v": conv + "parametrizations.weight.original1"})
    return (root, oracle["input_values"], oracle["attention_mask"], oracle["last_hidden_state"],
            oracle["extract_features"])


def test_wav2vec2_parity_flax_msgpack_and_safetensors(wav2vec2_flax):
    root, audio, mask, expected, expected_extract = wav2vec2_flax
    params, config = load_wav2vec2(str(root / "msgpack"))
    assert config.conv_bias and config.num_conv_pos_embeddings == 7 and config.do_stable_layer_norm
    hidden, extract = wav2vec2_jit(params, audio, mask, config=config, return_extract_features=True)
    assert hidden.shape == expected.shape == (3, 44, 24)
    valid = np.asarray(frame_mask(mask, 44, config))
    assert valid.sum(1).tolist() == [44, 34, 21]
    diff = assert_close(np.asarray(hidden)[valid], expected[valid])
    assert_close(extract, expected_extract)
    print(f"wav2vec2 flax: max |diff| {diff:.3g}")
    torch_params, torch_config = load_wav2vec2(str(root / "torch"))
    assert torch_config == config
    np.testing.assert_array_equal(np.asarray(wav2vec2_jit(torch_params, audio, mask, config=config)),
                                  np.asarray(hidden))


def test_wav2vec2_parity_rejects_misshaped_tensor(wav2vec2_flax, tmp_path):
    from safetensors.numpy import load_file, save_file

    root = wav2vec2_flax[0]
    name = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    state = load_file(str(root / "torch" / "model.safetensors"))
    assert state[name].shape == (24, 8, 7)
    state[name] = state[name][:, :, :6]
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(root / "torch" / "config.json", tmp_path / "config.json")
    with pytest.raises(hub.WeightError, match=rf"'{name}' has shape \(24, 8, 6\).*expects \(24, 8, 7\)"):
        load_wav2vec2(str(tmp_path))
    params, config = load_wav2vec2(str(root / "msgpack"))
    with pytest.raises(ValueError, match="shorter than the 30 samples"):
        wav2vec2_apply(params, np.zeros((1, 29), np.float32), config=config)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        wav2vec2_apply(params, np.zeros((1, 1, 900), np.float32), config=config)


def _numpy_group_norm_encoder(audio, state, config: Wav2Vec2Config):
    """transformers' group-norm feature encoder, transcribed with NumPy (float64): Conv1d (no
    padding) -> GroupNorm(groups = channels, eps 1e-5) on the first layer only -> exact GELU."""
    from scipy.special import erf

    x = audio.astype(np.float64)[:, None, :]  # (batch, channels, time), PyTorch layout
    for n, (kernel, stride) in enumerate(zip(config.conv_kernel, config.conv_stride)):
        weight = state[f"feature_extractor.conv_layers.{n}.conv.weight"].astype(np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=2)[:, :, ::stride]  # b, c, t, k
        x = np.einsum("bctk,ock->bot", windows, weight)
        if n == 0:
            mean = x.mean(2, keepdims=True)
            var = x.var(2, keepdims=True)
            x = (x - mean) / np.sqrt(var + 1e-5)
            x = x * state["feature_extractor.conv_layers.0.layer_norm.weight"][None, :, None] \
                + state["feature_extractor.conv_layers.0.layer_norm.bias"][None, :, None]
        x = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return x.transpose(0, 2, 1)


def test_wav2vec2_base_group_norm_variant(tmp_path):
    """wav2vec2-base layout: group-norm feature encoder (norm on the first layer only), post-LN
    transformer, weight norm under the older ``weight_g`` / ``weight_v`` names, even positional
    window, encoder under ``wav2vec2.`` as in a CTC checkpoint."""
    from safetensors.numpy import save_file

    raw = {"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"], "hidden_size": 16,
           "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24, "conv_dim": [8, 8],
           "conv_kernel": [10, 3], "conv_stride": [5, 2], "conv_bias": False, "feat_extract_norm": "group",
           "do_stable_layer_norm": False, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2,
           "layer_norm_eps": 1e-5, "vocab_size": 6}
    config = Wav2Vec2Config.from_hf(raw)
    rng = np.random.default_rng(7)
    shapes = {"feature_extractor.conv_layers.0.conv.weight": (8, 1, 10),
              "feature_extractor.conv_layers.0.layer_norm.weight": (8,),
              "feature_extractor.conv_layers.0.layer_norm.bias": (8,),
              "feature_extractor.conv_layers.1.conv.weight": (8, 8, 3),
              "feature_projection.layer_norm.weight": (8,), "feature_projection.layer_norm.bias": (8,),
              "feature_projection.projection.weight": (16, 8), "feature_projection.projection.bias": (16,),
              "encoder.pos_conv_embed.conv.weight_g": (1, 1, 8), "encoder.pos_conv_embed.conv.weight_v": (16, 8, 8),
              "encoder.pos_conv_embed.conv.bias": (16,), "encoder.layer_norm.weight": (16,),
              "encoder.layer_norm.bias": (16,), "masked_spec_embed": (16,)}
    for n in range(2):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"attention.{proj}.weight"], shapes[p + f"attention.{proj}.bias"] = (16, 16), (16,)
        shapes.update({p + "feed_forward.intermediate_dense.weight": (24, 16),
                       p + "feed_forward.intermediate_dense.bias": (24,),
                       p + "feed_forward.output_dense.weight": (16, 24), p + "feed_forward.output_dense.bias": (16,)})
        for norm in ("layer_norm", "final_layer_norm"):
            shapes[p + f"{norm}.weight"], shapes[p + f"{norm}.bias"] = (16,), (16,)
    state = {k: rng.normal(1.0 if k.endswith(("norm.weight", "weight_g")) else 0.0, 0.3, s).astype(np.float32)
             for k, s in shapes.items()}
    state.update({"lm_head.weight": np.zeros((6, 16), np.float32), "lm_head.bias": np.zeros(6, np.float32)})
    save_file({"wav2vec2." + k if not k.startswith("lm_head") else k: v for k, v in state.items()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    params, loaded = load_wav2vec2(str(tmp_path))
    assert loaded == config and "norm" not in params["conv_layers"][1]

    audio = rng.normal(size=(2, 700)).astype(np.float32)
    features = feature_encoder(params, jnp.asarray(audio), config=config)
    reference = _numpy_group_norm_encoder(audio, state, config)
    assert features.shape == reference.shape == (2, 69, 8)
    assert_close(features, reference)
    # weight norm with the old names: weight = g * v / ||v||, the norm per window position
    v, g = state["encoder.pos_conv_embed.conv.weight_v"], state["encoder.pos_conv_embed.conv.weight_g"]
    np.testing.assert_allclose(np.asarray(params["pos_conv"]["g"]), g.reshape(8), atol=0)
    kernel = v * g / np.linalg.norm(v, axis=(0, 1), keepdims=True)
    p = params["pos_conv"]
    folded = p["v"] * (p["g"] / jnp.sqrt(jnp.square(p["v"]).sum(axis=(1, 2))))[:, None, None]
    np.testing.assert_allclose(np.asarray(folded), kernel.transpose(2, 1, 0), atol=1e-6)

    mask = np.ones_like(audio, dtype=np.int32)
    mask[1, 500:] = 0
    hidden = wav2vec2_jit(params, audio, mask, config=config)
    assert hidden.shape == (2, 69, 16) and np.isfinite(np.asarray(hidden)).all()
    # the GroupNorm statistics run over the whole padded row: the padded sample differs from
    # the sample alone, unlike the layer-norm variant
    alone = wav2vec2_jit(params, audio[1:, :500], None, config=config)
    assert np.abs(np.asarray(hidden)[1, :49] - np.asarray(alone)[0]).max() > 1e-4


def test_wav2vec2_parity_dropout_needs_rng_and_remat_gradients():
    import dataclasses

    folder = golden("wav2vec2")
    params, config = load_wav2vec2(str(folder))
    inputs, expected = arrays(folder, "inputs.npz"), arrays(folder, "outputs.npz")
    audio, mask = jnp.asarray(inputs["input_values"]), jnp.asarray(inputs["attention_mask"])
    remat = dataclasses.replace(config, remat=True)
    assert_close(wav2vec2_jit(params, audio, mask, config=remat), expected["last_hidden_state"])
    with pytest.raises(ValueError, match="rng"):
        wav2vec2_apply(params, audio, mask, config=remat, deterministic=False)

    def total(p):
        out = wav2vec2_apply(p, audio, mask, config=remat, deterministic=False, rng=jax.random.PRNGKey(0))
        return out.sum(), out

    grads, dropped = jax.jit(jax.grad(total, has_aux=True))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert np.abs(np.asarray(grads["pos_conv"]["g"])).max() > 0
    assert not np.allclose(np.asarray(dropped), expected["last_hidden_state"], atol=1e-3)


def test_audio_loaders_reject_other_families():
    with pytest.raises(hub.WeightError, match="not 'whisper'"):
        load_whisper(str(golden("wav2vec2")))
    with pytest.raises(hub.WeightError, match="not one of"):
        load_wav2vec2(str(golden("whisper")))
