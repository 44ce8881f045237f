"""BERT and RoBERTa encoders as pure functions over a parameter pytree.

    params, config = load_bert("path/or/hub-id")
    hidden = bert_apply(params, input_ids, attention_mask, config=config)   # (batch, seq, hidden)

``bert_apply`` is jit-able (``config`` is a frozen dataclass, pass it as a static argument or
close over it). Parameters stay float32; with ``dtype=jnp.bfloat16`` the matrix products run in
bfloat16 while softmax and layer norms run in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import hub

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

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "bert.", "roberta.", "model.")


def load_bert(name_or_path: str, **overrides) -> tuple[Params, BertConfig]:
    """Parameters (float32 pytree) and config of a BERT or RoBERTa checkpoint (folder or hub id).

    ``overrides`` replace :class:`BertConfig` fields (e.g. ``remat=True``, ``dropout=0.0``).
    """
    folder = hub.resolve_model(name_or_path)
    raw = hub.load_config(folder)
    if raw.get("model_type", "bert") not in FAMILIES:
        raise hub.WeightError(f"{folder / 'config.json'}: model_type {raw.get('model_type')!r} is not one of "
                              f"{FAMILIES}; load it with its own family's loader")
    if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
        raise hub.WeightError(f"{folder / 'config.json'}: hidden_act {raw['hidden_act']!r} is not supported "
                              f"(known: {sorted(_ACTIVATIONS)})")
    config = dataclasses.replace(BertConfig.from_hf(raw), **overrides)
    state = hub.StateReader(hub.load_state_dict(folder), str(folder),
                            prefixes=STATE_PREFIXES)
    return params_from_state(state, config), config


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


def layer_norm(x, p, eps):
    """LayerNorm in float32 whatever the compute dtype."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p, dtype):
    return jnp.dot(x.astype(dtype), p["w"].astype(dtype)) + p["b"].astype(dtype)


def _dropout(x, rate, rng, deterministic):
    if deterministic or rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


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
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1)
    probs = _dropout(probs, c.attention_dropout, rngs[0], deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v).reshape(x.shape)
    attended = _dropout(_dense(context, layer["attention_out"], dtype), c.dropout, rngs[1], deterministic)
    x = layer_norm(attended.astype(jnp.float32) + x, layer["attention_norm"], c.layer_norm_eps)
    inner = _ACTIVATIONS[c.hidden_act](_dense(x, layer["intermediate"], dtype))
    out = _dropout(_dense(inner, layer["output"], dtype), c.dropout, rngs[2], deterministic)
    return layer_norm(out.astype(jnp.float32) + x, layer["output_norm"], c.layer_norm_eps)


def bert_apply(params: Params, input_ids, attention_mask, *, config: BertConfig, dtype=jnp.float32,
               deterministic: bool = True, rng: Optional[jax.Array] = None, token_type_ids=None,
               pool_positions=None):
    """Last hidden state ``(batch, seq, hidden)`` float32 for ``input_ids`` ``(batch, seq)`` int.

    ``pool_positions`` ``(batch,)`` int: return only the last hidden state at that position of
    each row, ``(batch, hidden)`` (CLS or mask-token pooling). The last layer then computes its
    queries, feed-forward and norms at those positions only, which gives the same values as
    indexing the full output and skips most of that layer's work.

    ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for padding (None: all tokens).
    ``token_type_ids`` default to zeros. ``dtype`` is the matmul dtype (float32 or bfloat16);
    softmax and layer norms run in float32. Dropout (hidden and attention, rates from the config)
    applies when ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > c.max_length:
        raise ValueError(f"input of {input_ids.shape[1]} tokens is longer than the {c.max_length} positions "
                         f"of this {c.model_type} model; truncate to max_length={c.max_length}")
    if not deterministic and rng is None and (c.dropout > 0 or c.attention_dropout > 0):
        raise ValueError("bert_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    emb = params["embeddings"]
    x = (emb["word"][input_ids] + emb["position"][position_ids(input_ids, c)]
         + emb["token_type"][token_type_ids])
    x = layer_norm(x, emb["norm"], c.layer_norm_eps)
    rngs = (jax.random.split(rng, c.num_layers + 1) if (rng is not None and not deterministic)
            else [None] * (c.num_layers + 1))
    x = _dropout(x, c.dropout, rngs[0], deterministic)
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    step = _layer
    if c.remat:
        step = jax.checkpoint(_layer, static_argnums=(3, 4, 6))
    last = len(params["layers"]) - 1
    for n, layer in enumerate(params["layers"]):
        at = pool_positions if n == last else None
        x = step(layer, x, bias, c, dtype, rngs[n + 1], deterministic, at)
    if pool_positions is None:
        return x
    if last < 0:  # no layers: the embeddings are the output
        return jnp.take_along_axis(x, pool_positions[:, None, None], axis=1)[:, 0]
    return x[:, 0]


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
    import hashlib

    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.shape}:{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for text in extra:
        digest.update(b"\x00" + text.encode())
    return digest.hexdigest()
