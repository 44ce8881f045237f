"""ModernBERT encoder as a pure function over a parameter pytree.

    params, config = load_modernbert("answerdotai/ModernBERT-base")   # or a local folder
    hidden = modernbert_apply(params, input_ids, attention_mask, config=config)   # (batch, seq, hidden)

The computation follows transformers' ``ModernBertModel`` on its padded (eager / sdpa) path:

* token embeddings -> LayerNorm (no bias unless ``norm_bias``) -> dropout;
* pre-norm layers: ``x + Wo(attention(attn_norm(x)))`` then ``x + mlp(mlp_norm(x))``, where the
  first layer has no attention norm (identity);
* fused ``Wqkv`` projection, rotary position embeddings on queries and keys (positions
  ``0 .. seq-1`` whatever the padding);
* every ``global_attn_every_n_layers``-th layer (layer 0, n, 2n, ...) attends globally with rotary
  base ``global_rope_theta``; the others attend within ``local_attention // 2`` tokens on each side
  with base ``local_rope_theta``;
* GeGLU feed-forward: ``Wi`` gives ``(input, gate)``, ``Wo(act(input) * gate)``;
* final LayerNorm.

Padding keys get an additive ``finfo(float32).min`` and keys outside the local window are set to
that same value, as transformers does, so padded query rows carry the same (meaningless but
defined) values as the reference. ``config`` is a frozen dataclass: a static argument under jit.
Parameters stay float32; ``dtype=jnp.bfloat16`` runs the matrix products in bfloat16 while rotary
embeddings, softmax, layer norms and the residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from emojax.encoders import hub

Params = dict[str, Any]

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Architecture of a ModernBERT encoder (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` by :meth:`from_hf` (missing keys take transformers'
    defaults). ``local_attention`` is the full window width; a local layer sees
    ``local_attention // 2`` tokens on each side.
    """

    vocab_size: int = 50368
    hidden_size: int = 768
    num_layers: int = 22
    num_heads: int = 12
    intermediate_size: int = 1152
    max_positions: int = 8192
    hidden_act: str = "gelu"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    local_attention: int = 128
    global_every: int = 3
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    pad_token_id: int = 50283
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest input in tokens (as :attr:`emojax.encoders.bert.BertConfig.max_length`)."""
        return self.max_positions

    def is_global(self, layer: int) -> bool:
        """Whether layer ``layer`` attends globally (else within the local window)."""
        return layer % self.global_every == 0

    @classmethod
    def from_hf(cls, raw: dict) -> "ModernBertConfig":
        d = cls()
        local_theta = raw.get("local_rope_theta", d.local_rope_theta)
        global_theta = float(raw.get("global_rope_theta", d.global_rope_theta))
        return cls(
            vocab_size=int(raw.get("vocab_size", d.vocab_size)),
            hidden_size=int(raw.get("hidden_size", d.hidden_size)),
            num_layers=int(raw.get("num_hidden_layers", d.num_layers)),
            num_heads=int(raw.get("num_attention_heads", d.num_heads)),
            intermediate_size=int(raw.get("intermediate_size", d.intermediate_size)),
            max_positions=int(raw.get("max_position_embeddings", d.max_positions)),
            hidden_act=str(raw.get("hidden_activation", d.hidden_act)),
            norm_eps=float(raw.get("norm_eps", d.norm_eps)),
            norm_bias=bool(raw.get("norm_bias", d.norm_bias)),
            attention_bias=bool(raw.get("attention_bias", d.attention_bias)),
            mlp_bias=bool(raw.get("mlp_bias", d.mlp_bias)),
            global_rope_theta=global_theta,
            # transformers falls back to the global base when the local one is null
            local_rope_theta=float(local_theta) if local_theta is not None else global_theta,
            local_attention=int(raw.get("local_attention", d.local_attention)),
            global_every=int(raw.get("global_attn_every_n_layers", d.global_every)),
            embedding_dropout=float(raw.get("embedding_dropout", d.embedding_dropout)),
            attention_dropout=float(raw.get("attention_dropout", d.attention_dropout)),
            mlp_dropout=float(raw.get("mlp_dropout", d.mlp_dropout)),
            pad_token_id=int(raw.get("pad_token_id") if raw.get("pad_token_id") is not None else d.pad_token_id),
        )


# -- loading -----------------------------------------------------------------------------------

# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "model.")


def load_modernbert(name_or_path: str, **overrides) -> tuple[Params, ModernBertConfig]:
    """Parameters (float32 pytree) and config of a ModernBERT checkpoint (folder or hub id).

    Reads base-model checkpoints and task checkpoints (encoder under ``model.``); heads are
    ignored. ``overrides`` replace :class:`ModernBertConfig` fields (e.g. ``remat=True``).
    """
    folder = hub.resolve_model(name_or_path)
    raw = hub.load_config(folder)
    where = folder / "config.json"
    if raw.get("model_type", "modernbert") != "modernbert":
        raise hub.WeightError(f"{where}: model_type {raw.get('model_type')!r} is not 'modernbert'; "
                              "load it with its own family's loader")
    scaling = raw.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise hub.WeightError(f"{where}: rope_scaling {scaling!r} is not supported (only the default rotary "
                              "embedding); remove it or use a checkpoint without it")
    if raw.get("hidden_activation", "gelu") not in _ACTIVATIONS:
        raise hub.WeightError(f"{where}: hidden_activation {raw['hidden_activation']!r} is not supported "
                              f"(known: {sorted(_ACTIVATIONS)})")
    config = dataclasses.replace(ModernBertConfig.from_hf(raw), **overrides)
    if config.hidden_size % config.num_heads:
        raise hub.WeightError(f"{where}: hidden_size {config.hidden_size} is not a multiple of "
                              f"num_attention_heads {config.num_heads}")
    state = hub.StateReader(hub.load_state_dict(folder), str(folder), prefixes=STATE_PREFIXES)
    return params_from_state(state, config), config


def params_from_state(state: hub.StateReader, c: ModernBertConfig) -> Params:
    """The parameter pytree from PyTorch-named tensors; dense weights stored ``(in, out)``."""
    h, i = c.hidden_size, c.intermediate_size

    dense = state.dense

    norm = functools.partial(state.norm, size=h, bias=c.norm_bias)

    params = {
        "embeddings": {"word": jnp.asarray(state.take("embeddings.tok_embeddings.weight", (c.vocab_size, h))),
                       "norm": norm("embeddings.norm")},
        "layers": [],
        "final_norm": norm("final_norm"),
    }
    for n in range(c.num_layers):
        p = f"layers.{n}."
        layer = {
            "qkv": dense(p + "attn.Wqkv", h, 3 * h, c.attention_bias),
            "attn_out": dense(p + "attn.Wo", h, h, c.attention_bias),
            "mlp_norm": norm(p + "mlp_norm"),
            "mlp_in": dense(p + "mlp.Wi", h, 2 * i, c.mlp_bias),
            "mlp_out": dense(p + "mlp.Wo", i, h, c.mlp_bias),
        }
        if n > 0:  # the first layer's attention norm is the identity (the embedding norm precedes it)
            layer["attn_norm"] = norm(p + "attn_norm")
        params["layers"].append(layer)
    state.unused(ignore=("head.", "decoder.", "classifier.", "qa_outputs."))
    return params


# -- computation -------------------------------------------------------------------------------

def _layer_norm(x, p, eps):
    """LayerNorm in float32 (bias optional, as ModernBERT's ``norm_bias=False``)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"]
    return y + p["bias"] if "bias" in p else y


def _dense(x, p, dtype):
    y = jnp.dot(x.astype(dtype), p["w"].astype(dtype))
    return y + p["b"].astype(dtype) if "b" in p else y


def _dropout(x, rate, rng, deterministic):
    if deterministic or rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def rotary_tables(seq: int, head_dim: int, theta: float):
    """``(cos, sin)``, each ``(seq, head_dim)`` float32, for positions ``0 .. seq-1``.

    Frequencies ``theta ** (-2j / head_dim)``; both halves of the head share them (the
    rotate-half convention of transformers).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _rotate(x, cos, sin):
    """Rotary embedding of ``x`` ``(batch, seq, heads, head_dim)`` float32."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def attention_biases(attention_mask, local_attention: int):
    """Additive attention biases ``(global, local)``, each ``(batch, 1, seq, seq)`` float32.

    Global: ``finfo.min`` on padding keys. Local: additionally ``finfo.min`` (replacing, not
    adding) on keys farther than ``local_attention // 2`` from the query.
    """
    low = jnp.finfo(jnp.float32).min
    seq = attention_mask.shape[1]
    global_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, low).astype(jnp.float32)
    global_bias = jnp.broadcast_to(global_bias, (attention_mask.shape[0], 1, seq, seq))
    rows = jnp.arange(seq)
    inside = jnp.abs(rows[:, None] - rows[None, :]) <= local_attention // 2
    local_bias = jnp.where(inside[None, None], global_bias, low)
    return global_bias, local_bias


def _layer(layer, x, bias, cos, sin, c: ModernBertConfig, dtype, rng, deterministic):
    batch, seq, hidden = x.shape
    heads, size = c.num_heads, c.head_dim
    rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
    normed = _layer_norm(x, layer["attn_norm"], c.norm_eps) if "attn_norm" in layer else x
    qkv = _dense(normed, layer["qkv"], dtype).astype(jnp.float32).reshape(batch, seq, 3, heads, size)
    q = _rotate(qkv[:, :, 0], cos, sin).astype(dtype)
    k = _rotate(qkv[:, :, 1], cos, sin).astype(dtype)
    v = qkv[:, :, 2].astype(dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * size ** -0.5
    probs = jax.nn.softmax(scores + bias, axis=-1)
    probs = _dropout(probs, c.attention_dropout, rngs[0], deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v).reshape(batch, seq, hidden)
    attended = _dropout(_dense(context, layer["attn_out"], dtype), c.attention_dropout, rngs[1], deterministic)
    x = x + attended.astype(jnp.float32)
    inner, gate = jnp.split(_dense(_layer_norm(x, layer["mlp_norm"], c.norm_eps), layer["mlp_in"], dtype), 2, axis=-1)
    inner = _dropout(_ACTIVATIONS[c.hidden_act](inner) * gate, c.mlp_dropout, rngs[2], deterministic)
    return x + _dense(inner, layer["mlp_out"], dtype).astype(jnp.float32)


def modernbert_apply(params: Params, input_ids, attention_mask, *, config: ModernBertConfig, dtype=jnp.float32,
                     deterministic: bool = True, rng: Optional[jax.Array] = None):
    """Last hidden state ``(batch, seq, hidden)`` float32 (after the final norm).

    ``input_ids`` ``(batch, seq)`` int; ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for
    padding (None: all tokens). Positions count from 0 at the first column, padding included,
    so pad on the right. ``dtype`` is the matmul dtype (float32 or bfloat16). Dropout (rates from
    the config) applies when ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if not deterministic and rng is None and max(c.embedding_dropout, c.attention_dropout, c.mlp_dropout) > 0:
        raise ValueError("modernbert_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    seq = input_ids.shape[1]
    use_rng = rng is not None and not deterministic
    rngs = jax.random.split(rng, c.num_layers + 1) if use_rng else [None] * (c.num_layers + 1)

    x = _layer_norm(params["embeddings"]["word"][input_ids], params["embeddings"]["norm"], c.norm_eps)
    x = _dropout(x, c.embedding_dropout, rngs[0], deterministic)
    global_bias, local_bias = attention_biases(attention_mask, c.local_attention)
    global_rope = rotary_tables(seq, c.head_dim, c.global_rope_theta)
    local_rope = rotary_tables(seq, c.head_dim, c.local_rope_theta)

    step = jax.checkpoint(_layer, static_argnums=(5, 6, 8)) if c.remat else _layer
    for n, layer in enumerate(params["layers"]):
        bias, (cos, sin) = (global_bias, global_rope) if c.is_global(n) else (local_bias, local_rope)
        x = step(layer, x, bias, cos, sin, c, dtype, rngs[n + 1], deterministic)
    return _layer_norm(x, params["final_norm"], c.norm_eps)
