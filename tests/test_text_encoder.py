"""TextEncoder: tokenizer growth for speaker tokens, pooling, left truncation, bucketing, hashing,
saved preprocessing. Pooled features are checked against NumPy pooling of ``bert_apply``'s hidden
states on the same padded batch (``bert_apply`` itself is checked against transformers in
test_bert_parity.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.encoders.bert import bert_apply
from emojax.encoders.text import POOLINGS, TextEncoder, pool_hidden

apply = jax.jit(bert_apply, static_argnames=("config", "dtype", "deterministic"))

PROMPTED = ["<s0>: i am so happy [SEP] Now <s0> feels [MASK]",
            "<s1>: sad [SEP] Now <s1> feels [MASK]",
            "<s0>: wow really [SEP] <s1>: the table is fine [SEP] Now <s1> feels [MASK] ."]


@pytest.fixture(scope="module")
def speaker_encoder(tiny_bert):
    encoder = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=32)
    before = np.asarray(encoder.params["embeddings"]["word"])
    hash_before = encoder.weights_hash
    added = encoder.add_special_tokens(["<s0>", "<s1>"])
    return encoder, before, hash_before, added


def _reference_hidden(encoder, texts):
    batch = encoder.tokenizer(texts, padding=True, return_tensors="np")
    hidden = np.asarray(apply(encoder.params, batch["input_ids"], batch["attention_mask"], config=encoder.config))
    return hidden, batch["input_ids"], batch["attention_mask"]


def test_add_special_tokens_grows_mean_rows_indexed_by_new_ids(speaker_encoder):
    encoder, before, hash_before, added = speaker_encoder
    word = np.asarray(encoder.params["embeddings"]["word"])
    assert added == 2
    assert word.shape == (before.shape[0] + 2, before.shape[1]) and len(encoder.tokenizer) == word.shape[0]
    np.testing.assert_array_equal(word[:-2], before)
    np.testing.assert_allclose(word[-2:], np.repeat(before.mean(0, keepdims=True), 2, 0), atol=1e-7)
    ids = encoder.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])
    assert ids == [before.shape[0], before.shape[0] + 1]
    # a speaker token is one token, never split into "<", "s", "0", ">"
    assert encoder.tokenizer.tokenize("<s1>: sad") == ["<s1>", ":", "sad"]
    assert encoder.weights_hash != hash_before
    # adding known tokens again changes nothing
    assert encoder.add_special_tokens(["<s0>"]) == 0
    assert encoder.params["embeddings"]["word"].shape[0] == word.shape[0]


def test_add_special_tokens_uses_spare_rows_of_a_padded_vocabulary(tiny_bert):
    from emojax.encoders.bert import grow_embeddings

    base = TextEncoder.from_pretrained(str(tiny_bert), pooling="cls")
    vocab = len(base.tokenizer)
    padded = grow_embeddings(base.params, 3)  # a matrix with 3 spare rows, as padded vocabularies have
    padded["embeddings"]["word"] = padded["embeddings"]["word"].at[vocab:].set(7.0)
    encoder = TextEncoder("tiny", base.tokenizer, padded, base.config, pooling="cls")
    mean = np.asarray(padded["embeddings"]["word"]).mean(0)
    encoder.add_special_tokens(["<s0>", "<s1>", "<s2>", "<s3>"])
    word = np.asarray(encoder.params["embeddings"]["word"])
    assert word.shape[0] == vocab + 4
    ids = encoder.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>", "<s2>", "<s3>"])
    assert ids == list(range(vocab, vocab + 4))
    np.testing.assert_allclose(word[ids], np.repeat(mean[None], 4, 0), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_numpy_on_hidden_states(speaker_encoder, pooling):
    encoder, *_ = speaker_encoder
    encoder = TextEncoder(encoder.name, encoder.tokenizer, encoder.params, encoder.config, pooling=pooling,
                          max_length=32)
    hidden, ids, mask = _reference_hidden(encoder, PROMPTED)
    if pooling == "mask":
        positions = [int(np.flatnonzero(row == encoder.tokenizer.mask_token_id)[-1]) for row in ids]
        expected = hidden[np.arange(len(PROMPTED)), positions]
    elif pooling == "mean":
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    else:
        expected = hidden[:, 0]
    features = encoder.encode(PROMPTED, batch_size=2, progress=False)
    assert features.shape == (3, encoder.dim) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-5, rtol=0)
    # pool_hidden on the reference states is the same NumPy formula
    np.testing.assert_allclose(np.asarray(pool_hidden(jnp.asarray(hidden), jnp.asarray(mask), jnp.asarray(ids),
                                                      pooling=pooling,
                                                      mask_token_id=encoder.tokenizer.mask_token_id)),
                               expected, atol=1e-6)


def test_mask_pooling_takes_the_last_mask_and_names_rows_without_one(speaker_encoder):
    encoder, *_ = speaker_encoder
    texts = ["[MASK] happy [SEP] Now <s0> feels [MASK]"]
    hidden, ids, _ = _reference_hidden(encoder, texts)
    last = int(np.flatnonzero(ids[0] == encoder.tokenizer.mask_token_id)[-1])
    assert last == ids.shape[1] - 2  # before the final [SEP]
    np.testing.assert_allclose(encoder.encode(texts, progress=False)[0], hidden[0, last], atol=1e-5)
    with pytest.raises(ValueError, match="text 1 has no \\[MASK\\] token"):
        encoder.encode([PROMPTED[0], "no prompt here"], progress=False)


def test_batching_and_buckets_do_not_change_features(speaker_encoder):
    encoder, *_ = speaker_encoder
    texts = PROMPTED + ["<s1>: " + " ".join(["happy"] * 20) + " [SEP] Now <s1> feels [MASK]"]  # 2nd bucket
    together = encoder.encode(texts, batch_size=64, progress=False)
    alone = np.concatenate([encoder.encode([t], progress=False) for t in texts])
    small = encoder.encode(texts, batch_size=3, progress=False)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(small, alone, atol=1e-5)
    assert encoder.encode([], progress=False).shape == (0, encoder.dim)


def test_left_truncation_keeps_the_prompt(tiny_bert):
    encoder = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=12)
    long = " ".join(["happy"] * 40) + " [SEP] now feels [MASK]"
    ids = encoder.tokenize([long])["input_ids"][0]
    assert len(ids) == 12
    assert ids[0] == encoder.tokenizer.cls_token_id and ids[-1] == encoder.tokenizer.sep_token_id
    assert encoder.tokenizer.convert_ids_to_tokens(ids[-5:-1]) == ["[SEP]", "now", "feels", "[MASK]"]
    assert encoder.encode([long], progress=False).shape == (1, 32)
    # max_length is capped by the position table
    assert TextEncoder.from_pretrained(str(tiny_bert), max_length=10_000).max_length == 128


def test_properties_hash_and_saved_preprocessing(speaker_encoder, tiny_bert, tmp_path):
    encoder, *_ = speaker_encoder
    assert (encoder.dim, encoder.sep_token, encoder.mask_token) == (32, "[SEP]", "[MASK]")
    encoder.save_preprocessing(tmp_path / "T")
    again = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=32, preprocessing=tmp_path / "T")
    assert again.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"]) == \
        encoder.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])
    np.testing.assert_array_equal(np.asarray(again.params["embeddings"]["word"]),
                                  np.asarray(encoder.params["embeddings"]["word"]))
    assert again.weights_hash == encoder.weights_hash and len(encoder.weights_hash) == 64
    # the hash follows the weights: one changed value gives another hash
    changed = TextEncoder.from_pretrained(str(tiny_bert), pooling="mask", max_length=32, preprocessing=tmp_path / "T")
    changed.params["embeddings"]["word"] = changed.params["embeddings"]["word"].at[0, 0].add(1e-3)
    changed._hash = None
    assert changed.weights_hash != encoder.weights_hash


def test_bfloat16_features_close_to_float32(speaker_encoder):
    """bfloat16 matmuls: pooled features within 0.05 (absolute, layer-normed scale) of float32."""
    encoder, *_ = speaker_encoder
    half = TextEncoder(encoder.name, encoder.tokenizer, encoder.params, encoder.config, pooling="mean",
                       max_length=32, dtype=jnp.bfloat16)
    full = TextEncoder(encoder.name, encoder.tokenizer, encoder.params, encoder.config, pooling="mean", max_length=32)
    diff = np.abs(half.encode(PROMPTED, progress=False) - full.encode(PROMPTED, progress=False))
    assert diff.max() < 0.05


def test_constructor_errors(speaker_encoder):
    encoder, *_ = speaker_encoder
    with pytest.raises(ValueError, match="pooling 'max' is not one of"):
        TextEncoder("x", encoder.tokenizer, encoder.params, encoder.config, pooling="max")
    shrunk = dict(encoder.params, embeddings=dict(encoder.params["embeddings"],
                                                  word=encoder.params["embeddings"]["word"][:-1]))
    with pytest.raises(ValueError, match="embedding matrix only"):
        TextEncoder("x", encoder.tokenizer, shrunk, dataclasses.replace(encoder.config), pooling="cls")
