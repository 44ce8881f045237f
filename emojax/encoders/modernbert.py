"""ModernBERT encoder as a pure function over a parameter pytree.

    params, config = load_modernbert("answerdotai/ModernBERT-base")   # or a local folder
    hidden = modernbert_apply(params, input_ids, attention_mask, config=config)   # (batch, seq, hidden)
    low = modernbert_apply(params, input_ids, attention_mask, config=config, layers=slice(0, 10))
    hidden = modernbert_apply(params, None, attention_mask, config=config, layers=slice(10, None),
                              hidden_states=low)                                  # the same, in two ranges

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

Padding keys and keys outside the local window are masked out (a key mask and
``jax.nn.dot_product_attention``'s ``local_window_size``); a query that sees no key then attends
uniformly to all of them, as under transformers' additive ``finfo(float32).min``, so padded query
rows carry the same (meaningless but defined) values as the reference. ``config`` is a frozen
dataclass: a static argument under jit.
Parameters stay float32; ``dtype=jnp.bfloat16`` runs the matrix products in bfloat16 while rotary
embeddings, softmax, layer norms and the residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from emojax.encoders import core, hub
from emojax.encoders.core import dense as _dense, dropout as _dropout, layer_norm as _layer_norm

Params = dict[str, Any]


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
    return core.load(FAMILY, name_or_path, **overrides)


def _check_rope(raw: dict, config: ModernBertConfig, where) -> None:
    scaling = raw.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise hub.WeightError(f"{where}: rope_scaling {scaling!r} is not supported (only the default rotary "
                              "embedding); remove it or use a checkpoint without it")


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


FAMILY = core.register(core.Family(
    ModernBertConfig, model_types=("modernbert",), default_type="modernbert", params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("hidden_act", "hidden_activation"),), check=_check_rope))


# -- computation -------------------------------------------------------------------------------

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
    """What the global and the local layers attend to: ``(global, local)`` :class:`core.Mask`.

    Global: the tokens (``attention_mask`` ``(batch, seq)`` > 0). Local: the tokens within
    ``local_attention // 2`` of the query (``jax.nn.dot_product_attention``'s
    ``local_window_size``). A query that sees no token (padding whose window holds only padding)
    attends uniformly to every key, as transformers' additive ``finfo.min`` bias makes it.
    """
    tokens = attention_mask > 0
    return core.Mask(keys=tokens), core.Mask(keys=tokens, window=local_attention // 2)


def _layer(layer, x, mask, cos, sin, c: ModernBertConfig, dtype, rng, deterministic):
    batch, seq, hidden = x.shape
    heads, size = c.num_heads, c.head_dim
    rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
    normed = _layer_norm(x, layer["attn_norm"], c.norm_eps) if "attn_norm" in layer else x
    qkv = _dense(normed, layer["qkv"], dtype).astype(jnp.float32).reshape(batch, seq, 3, heads, size)
    q = _rotate(qkv[:, :, 0], cos, sin).astype(dtype)
    k = _rotate(qkv[:, :, 1], cos, sin).astype(dtype)
    v = qkv[:, :, 2].astype(dtype)
    context = core.attention(q, k, v, mask=mask, scale=size ** -0.5, dropout_rate=c.attention_dropout, rng=rngs[0],
                             deterministic=deterministic)
    attended = _dropout(_dense(context, layer["attn_out"], dtype), c.attention_dropout, rngs[1], deterministic)
    x = x + attended.astype(jnp.float32)
    inner, gate = jnp.split(_dense(_layer_norm(x, layer["mlp_norm"], c.norm_eps), layer["mlp_in"], dtype), 2, axis=-1)
    inner = _dropout(core.ACTIVATIONS[c.hidden_act](inner) * gate, c.mlp_dropout, rngs[2], deterministic)
    return x + _dense(inner, layer["mlp_out"], dtype).astype(jnp.float32)


def _dropout_keys(rng, c: ModernBertConfig, deterministic: bool) -> list:
    """Dropout keys by place: 0 for the embeddings, ``n + 1`` for layer ``n``; the same keys
    whether the encoder runs whole or in layer ranges (:func:`modernbert_layers`)."""
    if rng is None or deterministic:
        return [None] * (c.num_layers + 1)
    return list(jax.random.split(rng, c.num_layers + 1))


def _check_dropout_rng(c: ModernBertConfig, deterministic: bool, rng) -> None:
    if not deterministic and rng is None and max(c.embedding_dropout, c.attention_dropout, c.mlp_dropout) > 0:
        raise ValueError("modernbert_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")


def modernbert_embed(params: Params, input_ids, *, config: ModernBertConfig, deterministic: bool = True,
                     rng: Optional[jax.Array] = None):
    """The input of layer 0, ``(batch, seq, hidden)`` float32: token embeddings, LayerNorm,
    dropout. ``rng``: the key the whole encoder is given."""
    c = config
    x = _layer_norm(params["embeddings"]["word"][input_ids], params["embeddings"]["norm"], c.norm_eps)
    return _dropout(x, c.embedding_dropout, _dropout_keys(rng, c, deterministic)[0], deterministic)


def modernbert_layers(layers, hidden, attention_mask, *, config: ModernBertConfig, start: int = 0,
                      dtype=jnp.float32, deterministic: bool = True, rng: Optional[jax.Array] = None,
                      final_norm: Optional[Params] = None):
    """Layers ``start, start + 1, ...`` (``layers``: their parameters, in order) applied to
    ``hidden`` ``(batch, seq, hidden)``, the output of layer ``start - 1`` (of the embeddings for
    ``start`` 0); returns the output of the last of them ``(batch, seq, hidden)`` float32, after
    ``final_norm`` when given (the range then ends at the encoder's last layer).

    Each layer attends globally or locally by its own number, so any split into ranges computes
    what one pass computes; ``rng`` is the key the whole encoder is given (layer ``n`` draws from
    its own sub-key). ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for padding, on the right.
    """
    c = config
    layers = list(layers)
    stop = start + len(layers)
    if not 0 <= start <= stop <= c.num_layers:
        raise ValueError(f"layers {start}..{stop - 1}: this ModernBERT model has layers 0..{c.num_layers - 1}")
    if final_norm is not None and stop != c.num_layers:
        raise ValueError(f"final_norm follows the last layer ({c.num_layers - 1}); these layers stop at {stop - 1}")
    _check_dropout_rng(c, deterministic, rng)
    if attention_mask is None:
        attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
    seq = hidden.shape[1]
    keys = _dropout_keys(rng, c, deterministic)
    global_mask, local_mask = attention_biases(attention_mask, c.local_attention)
    global_rope = rotary_tables(seq, c.head_dim, c.global_rope_theta)
    local_rope = rotary_tables(seq, c.head_dim, c.local_rope_theta)

    step = jax.checkpoint(_layer, static_argnums=(5, 6, 8)) if c.remat else _layer
    x = hidden
    for n, layer in enumerate(layers, start):
        mask, (cos, sin) = (global_mask, global_rope) if c.is_global(n) else (local_mask, local_rope)
        x = step(layer, x, mask, cos, sin, c, dtype, keys[n + 1], deterministic)
    return x if final_norm is None else _layer_norm(x, final_norm, c.norm_eps)


def modernbert_apply(params: Params, input_ids, attention_mask, *, config: ModernBertConfig, dtype=jnp.float32,
                     deterministic: bool = True, rng: Optional[jax.Array] = None, layers: Optional[slice] = None,
                     hidden_states=None):
    """Last hidden state ``(batch, seq, hidden)`` float32 (after the final norm).

    ``input_ids`` ``(batch, seq)`` int; ``attention_mask`` ``(batch, seq)``: 1 for tokens, 0 for
    padding (None: all tokens). Positions count from 0 at the first column, padding included,
    so pad on the right. ``dtype`` is the matmul dtype (float32 or bfloat16). Dropout (rates from
    the config) applies when ``deterministic`` is False and then needs ``rng``.

    ``layers`` (a ``slice`` of layer numbers; default all) runs those layers only: from the
    embeddings when it starts at 0, else from ``hidden_states`` ``(batch, seq, hidden)``, the
    output of the layer before (``input_ids`` is then unused); the final norm applies when the
    slice reaches the last layer. ``slice(0, k)`` then ``slice(k, None)`` computes one pass.
    """
    c = config
    start, stop = core.layer_range(layers, c.num_layers, hidden_states, input_ids, caller="modernbert_apply")
    _check_dropout_rng(c, deterministic, rng)
    if hidden_states is None:
        hidden_states = modernbert_embed(params, input_ids, config=c, deterministic=deterministic, rng=rng)
    return modernbert_layers(params["layers"][start:stop], hidden_states, attention_mask, config=c, start=start,
                             dtype=dtype, deterministic=deterministic, rng=rng,
                             final_norm=params["final_norm"] if stop == c.num_layers else None)
