"""BERT and RoBERTa encoders as pure functions over a parameter pytree.

    params, config = load_bert("path/or/hub-id")
    hidden = bert_apply(params, input_ids, attention_mask, config=config)   # (batch, seq, hidden)

``bert_apply`` is jit-able (``config`` is a frozen dataclass, pass it as a static argument or
close over it). ``bert_apply(..., layers=slice(a, b), hidden_states=...)`` runs a range of layers
(``bert_embed`` and ``bert_layers`` are the two halves), as partial fine-tuning does: the frozen
bottom once, the tuned top in every step. Parameters stay float32; with ``dtype=jnp.bfloat16`` the
matrix products run in bfloat16 while softmax and layer norms run in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import core, hub
from emojax.encoders.core import dense as _dense, dropout as _dropout, layer_norm

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT / RoBERTa encoder (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` by :meth:`from_hf`; ``dropout`` and
    ``attention_dropout`` are the hidden and attention-probability dropout rates.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    model_type: str = "bert"
    pad_token_id: int = 0
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def is_roberta(self) -> bool:
        return self.model_type in ROBERTA_TYPES

    @property
    def max_length(self) -> int:
        """Longest input (tokens) the position table covers (RoBERTa's starts after the pad id)."""
        return self.max_positions - (self.pad_token_id + 1 if self.is_roberta else 0)

    @classmethod
    def from_hf(cls, config: dict) -> "BertConfig":
        return cls(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                   num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                   intermediate_size=config["intermediate_size"],
                   max_positions=config["max_position_embeddings"],
                   type_vocab_size=config.get("type_vocab_size", 2),
                   layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                   hidden_act=config.get("hidden_act", "gelu"),
                   dropout=config.get("hidden_dropout_prob", 0.1),
                   attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
                   model_type=config.get("model_type", "bert"),
                   pad_token_id=config.get("pad_token_id", 0) or 0)


ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
FAMILIES = ("bert",) + ROBERTA_TYPES


# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "bert.", "roberta.", "model.")


def load_bert(name_or_path: str, **overrides) -> tuple[Params, BertConfig]:
    """Parameters (float32 pytree) and config of a BERT or RoBERTa checkpoint (folder or hub id).

    ``overrides`` replace :class:`BertConfig` fields (e.g. ``remat=True``, ``dropout=0.0``).
    """
    return core.load(FAMILY, name_or_path, **overrides)


def params_from_state(state: hub.StateReader, c: BertConfig) -> Params:
    """The parameter pytree from PyTorch-named tensors; dense weights stored ``(in, out)``."""
    h, i = c.hidden_size, c.intermediate_size

    dense = state.dense

    norm = functools.partial(state.norm, size=h)

    params = {
        "embeddings": {
            "word": jnp.asarray(state.take("embeddings.word_embeddings.weight", (c.vocab_size, h))),
            "position": jnp.asarray(state.take("embeddings.position_embeddings.weight", (c.max_positions, h))),
            "token_type": jnp.asarray(state.take("embeddings.token_type_embeddings.weight", (c.type_vocab_size, h))),
            "norm": norm("embeddings.LayerNorm"),
        },
        "layers": [],
    }
    for n in range(c.num_layers):
        p = f"encoder.layer.{n}."
        params["layers"].append({
            "query": dense(p + "attention.self.query", h, h),
            "key": dense(p + "attention.self.key", h, h),
            "value": dense(p + "attention.self.value", h, h),
            "attention_out": dense(p + "attention.output.dense", h, h),
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense", h, i),
            "output": dense(p + "output.dense", i, h),
            "output_norm": norm(p + "output.LayerNorm"),
        })
    state.unused(ignore=("pooler.", "position_ids", "cls.", "lm_head.", "classifier."))
    return params


FAMILY = core.register(core.Family(
    BertConfig, model_types=FAMILIES, default_type="bert", params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("hidden_act", "hidden_act"),)))


def position_ids(input_ids, config: BertConfig):
    """``(batch, seq)`` position ids: ``0..seq-1`` for BERT; for RoBERTa, as transformers computes
    them, ``pad_token_id + 1, + 2, ...`` over non-padding tokens and ``pad_token_id`` on padding."""
    if config.is_roberta:
        mask = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(mask, axis=1) * mask + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def _layer(layer, x, bias, c: BertConfig, dtype, rng, deterministic, at=None):
    """One encoder layer. ``at`` ``(batch,)`` int: compute the output at that position of each row
    only, ``(batch, 1, hidden)`` (its query attends over every key; the rest of the sequence is
    not needed after the last layer)."""
    batch, seq, hidden = x.shape
    heads, size = c.num_heads, hidden // c.num_heads
    rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
    scale = 1.0 / math.sqrt(size)

    def split(t):
        return t.reshape(batch, t.shape[1], heads, size)

    # One matrix product for the projections; the 1/sqrt(d) scale goes on the queries
    # (seq x hidden values) rather than on the scores (heads x seq x seq).
    names = ("query", "key", "value") if at is None else ("key", "value")
    w = jnp.concatenate([layer[n]["w"] for n in names], axis=1)
    b = jnp.concatenate([layer[n]["b"] for n in names])
    projected = jnp.split(_dense(x, {"w": w, "b": b}, dtype), len(names), axis=-1)
    if at is None:
        q, k, v = projected
    else:
        x = jnp.take_along_axis(x, at[:, None, None], axis=1)
        q, (k, v) = _dense(x, layer["query"], dtype), projected
    q, k, v = split(q * jnp.asarray(scale, q.dtype)), split(k), split(v)
    context = core.attention(q, k, v, bias=bias, scale=1.0, dropout_rate=c.attention_dropout, rng=rngs[0],
                             deterministic=deterministic)
    attended = _dropout(_dense(context, layer["attention_out"], dtype), c.dropout, rngs[1], deterministic)
    x = layer_norm(attended.astype(jnp.float32) + x, layer["attention_norm"], c.layer_norm_eps)
    inner = core.ACTIVATIONS[c.hidden_act](_dense(x, layer["intermediate"], dtype))
    out = _dropout(_dense(inner, layer["output"], dtype), c.dropout, rngs[2], deterministic)
    return layer_norm(out.astype(jnp.float32) + x, layer["output_norm"], c.layer_norm_eps)


def _dropout_keys(rng, c: BertConfig, deterministic: bool) -> list:
    """Dropout keys by place: 0 for the embeddings, ``n + 1`` for layer ``n``; the same keys
    whether the encoder runs whole or in layer ranges (:func:`bert_layers`)."""
    if rng is None or deterministic:
        return [None] * (c.num_layers + 1)
    return list(jax.random.split(rng, c.num_layers + 1))


def _check_dropout_rng(c: BertConfig, deterministic: bool, rng) -> None:
    if not deterministic and rng is None and (c.dropout > 0 or c.attention_dropout > 0):
        raise ValueError("bert_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")


def bert_embed(params: Params, input_ids, *, config: BertConfig, token_type_ids=None, deterministic: bool = True,
               rng: Optional[jax.Array] = None):
    """The input of layer 0, ``(batch, seq, hidden)`` float32: word + position + token-type
    embeddings, LayerNorm, dropout. ``rng``: the key the whole encoder is given."""
    c = config
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    emb = params["embeddings"]
    x = (emb["word"][input_ids] + emb["position"][position_ids(input_ids, c)]
         + emb["token_type"][token_type_ids])
    x = layer_norm(x, emb["norm"], c.layer_norm_eps)
    return _dropout(x, c.dropout, _dropout_keys(rng, c, deterministic)[0], deterministic)


def bert_layers(layers, hidden, attention_mask, *, config: BertConfig, start: int = 0, dtype=jnp.float32,
                deterministic: bool = True, rng: Optional[jax.Array] = None, pool_positions=None):
    """Layers ``start, start + 1, ...`` (``layers``: their parameters, in order) applied to
    ``hidden`` ``(batch, seq, hidden)``, the output of layer ``start - 1`` (of the embeddings for
    ``start`` 0); returns the output of the last of them, ``(batch, seq, hidden)`` float32.

    ``pool_positions`` ``(batch,)`` int (the range must end at the encoder's last layer): that
    layer is computed at those positions only and ``(batch, hidden)`` is returned.
    ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for padding (None: all tokens). ``rng``:
    the key the whole encoder is given; layer ``n`` draws from its own sub-key, so a run in two
    ranges applies the same dropout as one pass.
    """
    c = config
    layers = list(layers)
    stop = start + len(layers)
    if not 0 <= start <= stop <= c.num_layers:
        raise ValueError(f"layers {start}..{stop - 1}: this {c.model_type} model has layers 0..{c.num_layers - 1}")
    if pool_positions is not None and stop != c.num_layers:
        raise ValueError(f"pool_positions applies at the last layer ({c.num_layers - 1}); these layers stop at "
                         f"{stop - 1}")
    _check_dropout_rng(c, deterministic, rng)
    if attention_mask is None:
        attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
    keys = _dropout_keys(rng, c, deterministic)
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    step = _layer
    if c.remat:
        step = jax.checkpoint(_layer, static_argnums=(3, 4, 6))
    x = hidden
    for n, layer in enumerate(layers, start):
        at = pool_positions if n == c.num_layers - 1 else None
        x = step(layer, x, bias, c, dtype, keys[n + 1], deterministic, at)
    if pool_positions is None:
        return x
    if not layers:  # no layer left: the input is the output
        return jnp.take_along_axis(x, pool_positions[:, None, None], axis=1)[:, 0]
    return x[:, 0]


def bert_apply(params: Params, input_ids, attention_mask, *, config: BertConfig, dtype=jnp.float32,
               deterministic: bool = True, rng: Optional[jax.Array] = None, token_type_ids=None,
               pool_positions=None, layers: Optional[slice] = None, hidden_states=None):
    """Last hidden state ``(batch, seq, hidden)`` float32 for ``input_ids`` ``(batch, seq)`` int.

    ``pool_positions`` ``(batch,)`` int: return only the last hidden state at that position of
    each row, ``(batch, hidden)`` (CLS or mask-token pooling). The last layer then computes its
    queries, feed-forward and norms at those positions only, which gives the same values as
    indexing the full output and skips most of that layer's work.

    ``layers`` (a ``slice`` of layer numbers, e.g. ``slice(0, 4)``; default all) runs those
    layers only and returns the output of the last of them: from the embeddings when the slice
    starts at 0, else from ``hidden_states`` ``(batch, seq, hidden)``, the output of the layer
    before (``input_ids`` is then unused and may be None). Running ``slice(0, k)`` and then
    ``slice(k, None)`` on its output computes what one pass computes.

    ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for padding (None: all tokens).
    ``token_type_ids`` default to zeros. ``dtype`` is the matmul dtype (float32 or bfloat16);
    softmax and layer norms run in float32. Dropout (hidden and attention, rates from the config)
    applies when ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    start, stop = core.layer_range(layers, c.num_layers, hidden_states, input_ids, caller="bert_apply")
    _check_dropout_rng(c, deterministic, rng)
    if hidden_states is None:
        if input_ids.shape[1] > c.max_length:
            raise ValueError(f"input of {input_ids.shape[1]} tokens is longer than the {c.max_length} positions "
                             f"of this {c.model_type} model; truncate to max_length={c.max_length}")
        hidden_states = bert_embed(params, input_ids, config=c, token_type_ids=token_type_ids,
                                   deterministic=deterministic, rng=rng)
    return bert_layers(params["layers"][start:stop], hidden_states, attention_mask, config=c, start=start,
                       dtype=dtype, deterministic=deterministic, rng=rng, pool_positions=pool_positions)


def grow_embeddings(params: Params, n_new: int) -> Params:
    """Append ``n_new`` word-embedding rows, each the mean of the existing rows.

    For tokens added to the tokenizer (speaker tokens ``<s0>``, ...): word embeddings
    ``(vocab, hidden)`` -> ``(vocab + n_new, hidden)``; the existing rows are unchanged.
    """
    if n_new <= 0:
        return params
    word = params["embeddings"]["word"]
    rows = jnp.broadcast_to(word.mean(axis=0, keepdims=True), (n_new, word.shape[1]))
    embeddings = dict(params["embeddings"], word=jnp.concatenate([word, rows], axis=0))
    return dict(params, embeddings=embeddings)


def params_hash(params: Params, *extra: str) -> str:
    """SHA-256 over a parameter pytree (leaf paths, shapes, dtypes, bytes, in sorted path order)
    and any ``extra`` strings."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.shape}:{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for text in extra:
        digest.update(b"\x00" + text.encode())
    return digest.hexdigest()
