"""Checkpoint discovery and reading: errors that name what is wrong, every weight layout, and the
Flax -> PyTorch layout conversion checked against the layer arithmetic of each convention."""
import json
import logging
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from emojax.encoders import hub
from emojax.encoders.bert import load_bert


def _copy_config(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


# -- missing and malformed files ---------------------------------------------------------------

def test_missing_weights_error_names_folder_and_pytorch_bin_hint(tmp_path):
    with pytest.raises(hub.WeightError, match=f"{tmp_path}.*no weights found.*model.safetensors"):
        hub.load_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(hub.WeightError, match="pytorch_model.bin needs PyTorch"):
        hub.load_state_dict(tmp_path)
    with pytest.raises(hub.WeightError, match="config.json: missing"):
        hub.load_config(tmp_path)
    with pytest.raises(hub.WeightError, match="no such model folder"):
        hub.load_state_dict(tmp_path / "absent")


def test_corrupt_safetensors_error_names_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(hub.WeightError, match="model.safetensors: unreadable SafeTensors"):
        hub.load_state_dict(tmp_path)


def test_misshaped_tensor_error_names_tensor_and_both_shapes(tmp_path, tiny_bert):
    state = hub.load_state_dict(tiny_bert)
    vocab = state["embeddings.word_embeddings.weight"].shape[0]
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:, :16]
    bad = _copy_config(tiny_bert, tmp_path / "bad")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(hub.WeightError) as err:
        load_bert(str(bad))
    message = str(err.value)
    assert "embeddings.word_embeddings.weight" in message
    assert f"({vocab}, 16)" in message and f"({vocab}, 32)" in message
    assert str(bad) in message


def test_missing_tensor_error_names_tensor_and_prefixes(tmp_path, tiny_bert):
    state = hub.load_state_dict(tiny_bert)
    del state["encoder.layer.1.output.dense.bias"]
    bad = _copy_config(tiny_bert, tmp_path / "bad")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(hub.WeightError, match=r"'encoder\.layer\.1\.output\.dense\.bias' is missing "
                                              r"\(expected shape \(32,\)\).*'bert\.encoder"):
        load_bert(str(bad))


def test_state_reader_prefixes_and_unused_logged_once(caplog):
    state = {"roberta.a.weight": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32),
             "lm_head.bias": np.zeros(5, np.float32), "extra.weight": np.zeros(1, np.float32)}
    reader = hub.StateReader(state, "ckpt", prefixes=("", "bert.", "roberta."))
    assert reader.has("a.weight") and not reader.has("c")
    assert reader.take("a.weight", (2, 3)).shape == (2, 3)
    assert reader.take("b").shape == (4,)
    with pytest.raises(hub.WeightError, match=r"ckpt: tensor 'roberta\.a\.weight' has shape \(2, 3\), "
                                              r"the model expects \(3, 2\)"):
        reader.take("a.weight", (3, 2))
    with caplog.at_level(logging.INFO, logger="emojax.encoders.hub"):
        assert reader.unused(ignore=("lm_head.",)) == ["extra.weight"]
        assert reader.unused(ignore=("lm_head.",)) == ["extra.weight"]
    assert caplog.text.count("unused tensors: extra.weight") == 1


# -- layouts -----------------------------------------------------------------------------------

def test_sharded_safetensors_index_and_missing_shard(tmp_path, tiny_bert):
    state = hub.load_state_dict(tiny_bert)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / shard), metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    sharded = hub.load_state_dict(tmp_path)
    assert set(sharded) == set(state)
    for k in state:
        np.testing.assert_array_equal(sharded[k], state[k])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(hub.WeightError, match="model-00002-of-00002.safetensors: shard named in "
                                              "model.safetensors.index.json is missing"):
        hub.load_state_dict(tmp_path)


def test_bfloat16_and_float16_tensors_come_back_float32(tmp_path):
    from safetensors.flax import save_file as save_jax

    values = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    save_jax({"half": jnp.asarray(values, jnp.float16), "brain": jnp.asarray(values, jnp.bfloat16),
              "ids": jnp.arange(3, dtype=jnp.int32)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    state = hub.load_state_dict(tmp_path)
    assert state["half"].dtype == np.float32 and state["brain"].dtype == np.float32
    assert state["ids"].dtype == np.int32
    np.testing.assert_allclose(state["brain"], values, rtol=1e-2)  # 0.5 is exact in bfloat16; others to 8 bits
    np.testing.assert_allclose(state["half"], values, rtol=1e-3)


class _Layers(nn.Module):
    """One of each layer whose Flax layout differs from PyTorch's."""

    @nn.compact
    def __call__(self, tokens, seq, image, video):
        return {
            "embed": nn.Embed(11, 6, name="embed")(tokens),
            "dense": nn.Dense(5, name="dense")(seq),
            "norm": nn.LayerNorm(name="norm")(seq),
            "conv1d": nn.Conv(4, (3,), padding="VALID", name="conv1d")(seq),
            "conv2d": nn.Conv(4, (3, 2), padding="VALID", name="conv2d")(image),
            "conv3d": nn.Conv(4, (2, 3, 3), padding="VALID", name="conv3d")(video),
            "batch": nn.BatchNorm(use_running_average=True, name="batch")(seq),
        }


def test_flax_to_torch_layouts_compute_the_pytorch_layers(tmp_path):
    """Converted tensors, used with PyTorch's conventions (``x @ W.T``, NC* convolutions with
    OI* kernels, running statistics), reproduce what the Flax layers compute."""
    from flax import serialization

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, size=(2, 5))
    seq = rng.normal(size=(2, 7, 3)).astype(np.float32)
    image = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    video = rng.normal(size=(2, 4, 6, 5, 3)).astype(np.float32)
    module = _Layers()
    # Random values of the right shapes (no initialisers to compile); variances kept positive.
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens, seq, image, video)
    variables = {"params": jax.tree_util.tree_map(lambda v: rng.normal(size=v.shape).astype(np.float32),
                                                  shapes["params"]),
                 "batch_stats": jax.tree_util.tree_map(lambda v: rng.uniform(0.5, 2.0, v.shape).astype(np.float32),
                                                       shapes["batch_stats"])}
    out = jax.jit(module.apply)(variables, tokens, seq, image, video)
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.to_bytes(variables))
    t = hub.load_state_dict(tmp_path)

    def conv(x_channels_last, name, spatial):
        lhs = jnp.moveaxis(jnp.asarray(x_channels_last), -1, 1)  # N, C, *spatial
        dims = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
        y = jax.lax.conv_general_dilated(lhs, t[f"{name}.weight"], (1,) * len(spatial), "VALID",
                                         dimension_numbers=dims, precision="highest")
        y = y + t[f"{name}.bias"].reshape((1, -1) + (1,) * len(spatial))
        return np.moveaxis(np.asarray(y), 1, -1)

    np.testing.assert_allclose(t["embed.weight"][tokens], out["embed"], atol=1e-6)
    np.testing.assert_allclose(seq @ t["dense.weight"].T + t["dense.bias"], out["dense"], atol=1e-5)
    mean, var = seq.mean(-1, keepdims=True), seq.var(-1, keepdims=True)
    np.testing.assert_allclose((seq - mean) / np.sqrt(var + 1e-6) * t["norm.weight"] + t["norm.bias"],
                               out["norm"], atol=1e-5)
    np.testing.assert_allclose(conv(seq, "conv1d", "H"), out["conv1d"], atol=1e-5)
    np.testing.assert_allclose(conv(image, "conv2d", "HW"), out["conv2d"], atol=1e-5)
    np.testing.assert_allclose(conv(video, "conv3d", "DHW"), out["conv3d"], atol=1e-5)
    batch = (seq - t["batch.running_mean"]) / np.sqrt(t["batch.running_var"] + 1e-5)
    np.testing.assert_allclose(batch * t["batch.weight"] + t["batch.bias"], out["batch"], atol=1e-5)
    assert t["conv3d.weight"].shape == (4, 3, 2, 3, 3)  # (out, in, depth, height, width)


def test_flax_named_safetensors_are_converted(tmp_path):
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"encoder.dense.kernel": kernel, "encoder.norm.scale": np.ones(3, np.float32)},
              str(tmp_path / "model.safetensors"), metadata={"format": "flax"})
    state = hub.load_state_dict(tmp_path)
    assert set(state) == {"encoder.dense.weight", "encoder.norm.weight"}
    np.testing.assert_array_equal(state["encoder.dense.weight"], kernel.T)


# -- resolving names ---------------------------------------------------------------------------

def _fake_hub_cache(cache, repo_id, source):
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/files}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        shutil.copy(source / name, snapshot / name)
    return snapshot


def test_resolve_model_local_folder_and_cached_hub_id_offline(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_model(str(tiny_bert)) == tiny_bert
    snapshot = _fake_hub_cache(tmp_path / "cache", "emojax-test/tiny-bert", tiny_bert)
    folder = hub.resolve_model("emojax-test/tiny-bert", cache_dir=tmp_path / "cache")
    assert folder.resolve() == snapshot.resolve()
    params, config = load_bert(str(folder))
    assert config.hidden_size == 32


def test_resolve_model_offline_uncached_hub_id_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.WeightError) as err:
        hub.resolve_model("emojax-test/not-a-model", cache_dir=tmp_path / "empty-cache")
    message = str(err.value)
    assert message.startswith("emojax-test/not-a-model:")
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "hub cannot be reached" in message and "(hf download emojax-test/not-a-model)" in message


def test_resolve_model_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(hub.WeightError, match="no such model folder"):
        hub.resolve_model(str(tmp_path / "missing" / "model"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(hub.WeightError, match="is a file"):
        hub.resolve_model(str(tmp_path / "weights.safetensors"))
