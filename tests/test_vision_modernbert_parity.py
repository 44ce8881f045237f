"""ModernBERT, VideoMAE and CLIP vision encoders against transformers' outputs.

The golden folders hold tiny random checkpoints (PyTorch tensor names) and what transformers'
PyTorch models return for fixed inputs; the CLIP tower is also checked against transformers'
``FlaxCLIPVisionModel`` on random weights saved as ``flax_model.msgpack``. transformers 5 has no
Flax models: that model's outputs and parameter structure are frozen under
``tests/fixtures/flax_oracles`` (``tests/scripts/make_flax_oracles.py``, run with transformers
4.57) and the msgpack file is written by ``tests/flax_checkpoints.py``.
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_checkpoints as fc
from golden_outputs import arrays, golden
from emojax.encoders.clip_vision import clip_video_features, clip_vision_apply, load_clip_vision
from emojax.encoders.modernbert import load_modernbert, modernbert_apply
from emojax.encoders.videomae import load_videomae, videomae_apply, videomae_pool


STATIC = ("config", "dtype", "deterministic")
modernbert_jit = jax.jit(modernbert_apply, static_argnames=STATIC)
videomae_jit = jax.jit(videomae_apply, static_argnames=STATIC)
clip_jit = jax.jit(clip_vision_apply, static_argnames=STATIC)

# bfloat16 keeps 8 mantissa bits (relative rounding ~4e-3 per product); through these 2-3 layer
# models the last hidden state stays within this absolute distance of the float32 reference.
BF16_ATOL = 5e-2


@pytest.fixture(scope="module", autouse=True)
def full_float32_matmuls():
    """Float32 references are compared at 1e-4: keep accelerators from using TF32 matmuls."""
    with jax.default_matmul_precision("highest"):
        yield




def numpy_layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


# -- ModernBERT --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def modernbert():
    folder = golden("modernbert")
    params, config = load_modernbert(str(folder))
    return params, config, arrays(folder, "inputs.npz"), arrays(folder, "outputs.npz")["last_hidden_state"]


def test_modernbert_parity_golden(modernbert):
    params, config, inputs, expected = modernbert
    assert config.num_layers == 3 and config.global_every == 3 and config.local_attention == 8
    mask = inputs["attention_mask"]
    assert (mask == 0).any(), "the golden batch should contain a padded row"
    out = np.asarray(modernbert_jit(params, inputs["input_ids"], mask, config=config))
    assert out.shape == expected.shape and out.dtype == np.float32
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-4, rtol=0)


def test_modernbert_parity_bf16(modernbert):
    params, config, inputs, expected = modernbert
    out = np.asarray(modernbert_jit(params, inputs["input_ids"], inputs["attention_mask"], config=config,
                                    dtype=jnp.bfloat16))
    assert out.dtype == np.float32
    valid = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[valid], expected[valid], atol=BF16_ATOL, rtol=0)
    assert np.abs(out - expected).max() > 1e-6  # the products really ran in bfloat16


def test_modernbert_parity_remat_and_dropout(modernbert):
    import dataclasses

    params, config, inputs, expected = modernbert
    remat = dataclasses.replace(config, remat=True)
    ids, mask = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
    out = np.asarray(modernbert_jit(params, ids, mask, config=remat))
    valid = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-4, rtol=0)

    noisy = dataclasses.replace(remat, mlp_dropout=0.5)

    def total(p):
        out = modernbert_apply(p, ids, mask, config=noisy, deterministic=False, rng=jax.random.PRNGKey(0))
        return out.sum(), out

    grads, dropped = jax.jit(jax.grad(total, has_aux=True))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert not np.allclose(np.asarray(dropped)[valid], expected[valid], atol=1e-3)
    with pytest.raises(ValueError, match="rng"):
        modernbert_apply(params, ids, mask, config=noisy, deterministic=False)


# -- VideoMAE ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videomae():
    folder = golden("videomae")
    params, config = load_videomae(str(folder))
    return (params, config, arrays(folder, "inputs.npz")["pixel_values"],
            arrays(folder, "outputs.npz")["last_hidden_state"], folder)


def test_videomae_parity_golden(videomae):
    params, config, pixels, expected, _ = videomae
    assert config.use_mean_pooling and "final_norm" not in params  # last_hidden_state is un-normed
    out = np.asarray(videomae_jit(params, pixels, config=config))
    assert out.shape == expected.shape == (2, 32, 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_videomae_parity_bf16(videomae):
    params, config, pixels, expected, _ = videomae
    out = np.asarray(videomae_jit(params, pixels, config=config, dtype=jnp.bfloat16))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=BF16_ATOL, rtol=0)
    assert np.abs(out - expected).max() > 1e-6  # the products really ran in bfloat16


def test_videomae_parity_pool_fc_norm(videomae, tmp_path):
    """A classification checkpoint (encoder under ``videomae.``, ``fc_norm`` on top) pools as
    ``fc_norm(mean over tokens)``, the LayerNorm at PyTorch's default eps 1e-5."""
    from safetensors.numpy import load_file, save_file

    params, config, pixels, expected, folder = videomae
    plain = np.asarray(videomae_pool(params, jnp.asarray(expected), config=config))
    np.testing.assert_allclose(plain, expected.mean(axis=1), atol=1e-6, rtol=0)

    rng = np.random.default_rng(0)
    state = {"videomae." + k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
    weight, bias = rng.normal(1.0, 0.3, 32).astype(np.float32), rng.normal(0.0, 0.3, 32).astype(np.float32)
    state.update({"fc_norm.weight": weight, "fc_norm.bias": bias,
                  "classifier.weight": np.zeros((7, 32), np.float32), "classifier.bias": np.zeros(7, np.float32)})
    raw = json.loads((folder / "config.json").read_text())
    raw["architectures"] = ["VideoMAEForVideoClassification"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(state, str(tmp_path / "model.safetensors"))

    cls_params, cls_config = load_videomae(str(tmp_path))
    pooled = videomae_pool(cls_params, videomae_jit(cls_params, pixels, config=cls_config), config=cls_config)
    reference = numpy_layer_norm(expected.astype(np.float64).mean(axis=1), weight, bias, 1e-5)
    np.testing.assert_allclose(np.asarray(pooled), reference, atol=1e-4, rtol=0)


def test_videomae_parity_rejects_wrong_frames(videomae):
    params, config, pixels, _, _ = videomae
    with pytest.raises(ValueError, match="num_frames"):
        videomae_apply(params, pixels[:, :2], config=config)


# -- CLIP vision -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_golden():
    folder = golden("clip-vision")
    params, config = load_clip_vision(str(folder))
    return params, config, arrays(folder, "inputs.npz")["pixel_values"], arrays(folder, "outputs.npz")


def test_clip_vision_parity_golden(clip_golden):
    params, config, pixels, expected = clip_golden
    hidden, pooled = clip_jit(params, pixels, config=config)
    np.testing.assert_allclose(np.asarray(hidden), expected["last_hidden_state"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(pooled), expected["pooler_output"], atol=1e-4, rtol=0)


def test_clip_vision_parity_bf16(clip_golden):
    params, config, pixels, expected = clip_golden
    hidden, pooled = clip_jit(params, pixels, config=config, dtype=jnp.bfloat16)
    assert hidden.dtype == pooled.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(hidden), expected["last_hidden_state"], atol=BF16_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(pooled), expected["pooler_output"], atol=BF16_ATOL, rtol=0)
    assert np.abs(np.asarray(hidden) - expected["last_hidden_state"]).max() > 1e-6  # really bfloat16


@pytest.fixture(scope="module")
def clip_flax(tmp_path_factory):
    """Random weights of ``FlaxCLIPVisionModel``'s structure (LayerNorm scales away from 1, so the
    norms are really exercised) saved as ``flax_model.msgpack``, and the Flax model's frozen
    outputs on 6 images (two videos of three frames)."""
    oracle = fc.oracle_arrays("clip-vision")
    params = fc.random_params(fc.structure("clip-vision"), 3, 0.2, ones=("scale",))
    folder = tmp_path_factory.mktemp("clip-flax")
    fc.save_msgpack(folder, params, json.loads(fc.oracle_path("clip-vision", "config.json").read_text()))
    assert (folder / "flax_model.msgpack").exists()
    return folder, oracle["pixel_values"], oracle["last_hidden_state"], oracle["pooler_output"]


def test_clip_vision_parity_flax(clip_flax):
    folder, pixels, hidden_ref, pooled_ref = clip_flax
    params, config = load_clip_vision(str(folder))
    assert (config.image_size, config.patch_size, config.num_layers) == (24, 6, 2)
    hidden, pooled = clip_jit(params, pixels, config=config)
    assert hidden.shape == (6, 17, 32)
    np.testing.assert_allclose(np.asarray(hidden), hidden_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(pooled), pooled_ref, atol=1e-4, rtol=0)


def test_clip_vision_parity_video_features(clip_flax):
    folder, pixels, _, pooled_ref = clip_flax
    params, config = load_clip_vision(str(folder))
    frames = jnp.asarray(pixels.reshape(2, 3, 3, 24, 24))
    video_jit = jax.jit(clip_video_features, static_argnames=("config", "pooling"))
    mean = video_jit(params, frames, config=config)
    np.testing.assert_allclose(np.asarray(mean), pooled_ref.reshape(2, 3, -1).mean(axis=1), atol=1e-4, rtol=0)
    top = video_jit(params, frames, config=config, pooling="max")
    np.testing.assert_allclose(np.asarray(top), pooled_ref.reshape(2, 3, -1).max(axis=1), atol=1e-4, rtol=0)


def test_clip_vision_parity_full_clip_config(clip_golden, tmp_path):
    """A ``CLIPModel`` folder (``vision_config`` nested, text tower beside) loads the same tower."""
    params, config, pixels, expected = clip_golden
    folder = golden("clip-vision")
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    vision = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"],
                                                      "vision_config": vision, "text_config": {}}))
    full_params, full_config = load_clip_vision(str(tmp_path))
    assert full_config == config
    _, pooled = clip_jit(full_params, pixels, config=full_config)
    np.testing.assert_allclose(np.asarray(pooled), expected["pooler_output"], atol=1e-4, rtol=0)
