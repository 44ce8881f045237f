"""Building blocks of the encoder families, and the one loader they all go through.

* :data:`ACTIVATIONS`, :func:`layer_norm`, :func:`dense`, :func:`dropout`: the layer pieces, in
  float32 where it matters (norms, softmax) whatever the matmul dtype;
* :func:`attention`: multi-head attention. Without dropout it is ``jax.nn.dot_product_attention``
  (padding as a key :class:`Mask` or an additive bias, a sliding window as its
  ``local_window_size``, causal as ``is_causal``); with attention dropout in training it is the
  explicit softmax and dropout, which that function cannot do;
* :func:`transformer_block`: the layer of Whisper, wav2vec2 / data2vec-audio, VideoMAE and CLIP
  (pre-LN, or post-LN by :attr:`Block.pre_norm`), with one set of parameter names
  (:data:`BLOCK_NAMES`);
* :func:`layer_range`: the checked ``layers=`` slice of ``bert_apply`` / ``modernbert_apply`` (a
  range of layers, run from the embeddings or from ``hidden_states``);
* :class:`Family` and :func:`load`: ``resolve (folder or hub id) -> config.json -> checks ->
  StateReader -> params``, filled in by each family with its config class, tensor mapping and
  checks.

    layer = {"attn_norm": ..., "query": ..., "key": ..., "value": ..., "attn_out": ...,
             "mlp_norm": ..., "fc1": ..., "fc2": ...}
    x = transformer_block(layer, x, Block(num_heads=12, eps=1e-5, activation="gelu"), jnp.float32,
                          no_rngs(), True)        # (batch, seq, hidden) float32 -> same
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from emojax.encoders import hub

Params = dict[str, Any]

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# The parameters of one transformer_block layer: norms {"scale", "bias"}, projections {"w" (in, out), "b"}.
BLOCK_NAMES = ("attn_norm", "query", "key", "value", "attn_out", "mlp_norm", "fc1", "fc2")


# -- layer pieces ------------------------------------------------------------------------------

def layer_norm(x, p: Optional[Params], eps: float):
    """LayerNorm over the last axis, in float32 whatever the compute dtype. ``p``: ``{"scale"}``
    with an optional ``"bias"``; None: no scale or bias (data2vec-audio's positional norms)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    if p is None:
        return y
    y = y * p["scale"]
    return y + p["bias"] if "bias" in p else y


def dense(x, p: Params, dtype):
    """``x @ w (+ b)`` in ``dtype``; ``p``: ``{"w": (in, out)}`` with an optional ``"b"``. LoRA
    adapters need no hook here: they are folded into ``w`` (:mod:`emojax.encoders.lora`)."""
    y = jnp.dot(x.astype(dtype), p["w"].astype(dtype))
    return y + p["b"].astype(dtype) if "b" in p else y


def dropout(x, rate: float, rng, deterministic: bool):
    """Inverted dropout; the identity when ``deterministic``, at rate 0, or without ``rng``."""
    if deterministic or rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def no_rngs() -> tuple:
    """The dropout keys of a :func:`transformer_block` that draws none."""
    return (None,) * 4


def split_rngs(rng) -> tuple:
    """Four dropout keys for a :func:`transformer_block` (see there), or :func:`no_rngs`."""
    return no_rngs() if rng is None else tuple(jax.random.split(rng, 4))


# -- attention ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mask:
    """Which keys each query may attend to.

    ``keys`` ``(batch | 1, keys)`` bool: True on the keys that may be seen (None: all);
    ``window``: only keys within ``window`` positions on either side of the query; ``causal``:
    only keys at or before the query. ``window`` and ``causal`` are static under jit (a pytree's
    metadata) and assume queries and keys at the same positions (self-attention).
    """

    keys: Any = None
    window: Optional[int] = None
    causal: bool = False

    def allowed(self, queries: int, keys: int):
        """The ``(batch | 1, 1, queries, keys)`` bool mask it stands for (None: everything)."""
        out = None if self.keys is None else jnp.asarray(self.keys, bool)[:, None, None, :]
        q, k = jnp.arange(queries)[:, None], jnp.arange(keys)[None, :]
        for band in ((jnp.abs(q - k) <= self.window) if self.window is not None else None,
                     (k <= q) if self.causal else None):
            if band is not None:
                out = band[None, None] if out is None else out & band[None, None]
        return out


jax.tree_util.register_dataclass(Mask, data_fields=["keys"], meta_fields=["window", "causal"])


def attention(q, k, v, *, mask: Optional[Mask] = None, bias=None, scale: Optional[float] = None,
              dropout_rate: float = 0.0, rng=None, deterministic: bool = True):
    """Multi-head attention: ``q`` ``(batch, queries, heads, head_dim)``, ``k`` and ``v``
    ``(batch, keys, heads, head_dim)``, all in the compute dtype -> ``(batch, queries, heads *
    head_dim)`` in that dtype. Scores and softmax are float32.

    ``mask``: a :class:`Mask`; ``bias``: an additive float32 bias broadcastable to ``(batch,
    heads, queries, keys)`` (BERT's ``finfo.min`` on padding). ``scale`` multiplies the scores
    (default ``head_dim ** -0.5``; 1.0 when the queries carry it). Masked scores are replaced by
    a large negative number, so a query that may see no key attends uniformly to all of them, as
    an additive ``finfo.min`` bias makes it. Without dropout (``deterministic``, rate 0 or no
    ``rng``) this is ``jax.nn.dot_product_attention``; with it, the explicit softmax and dropout
    on the probabilities. The implementation is left to jax (in jax 0.10 that is XLA's: its cuDNN
    kernel must be asked for, and takes neither float32 nor a window open on both sides).
    """
    batch, queries = q.shape[:2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if deterministic or dropout_rate == 0.0 or rng is None:
        keys = None if mask is None or mask.keys is None else jnp.asarray(mask.keys, bool)[:, None, None, :]
        window = None if mask is None else mask.window
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=keys, scale=scale,
                                           is_causal=mask is not None and mask.causal, local_window_size=window)
        return out.reshape(batch, queries, -1)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias
    allowed = None if mask is None else mask.allowed(queries, k.shape[1])
    if allowed is not None:
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, rng, deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(batch, queries, -1)


# -- the transformer block ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Block:
    """Settings of :func:`transformer_block` (hashable: a static argument under jit).

    ``pre_norm``: ``x + attn(LN(x))``, ``x + mlp(LN(x))`` (Whisper, VideoMAE, CLIP, wav2vec2
    large); else post-LN ``LN(x + attn(x))``, ``LN(x + mlp(x))`` (wav2vec2-base, data2vec-audio).
    ``dropout`` follows the attention output and the MLP output, ``activation_dropout`` the
    activation, ``attention_dropout`` the attention probabilities.
    """

    num_heads: int
    eps: float
    activation: str
    pre_norm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0


def transformer_block(layer: Params, x, spec: Block, dtype, rngs: Sequence, deterministic: bool,
                      mask: Optional[Mask] = None):
    """One encoder layer: ``x`` ``(batch, seq, hidden)`` float32 -> the same; the residual stream
    stays float32, projections run in ``dtype``. ``layer`` holds :data:`BLOCK_NAMES`.

    ``rngs``: four dropout keys (or Nones), for the attention probabilities, the attention
    output, the activation and the MLP output, in that order. ``mask``: the keys attended to.
    """
    batch, seq, hidden = x.shape
    heads = spec.num_heads
    size = hidden // heads

    def attend(h):
        def project(name):
            return dense(h, layer[name], dtype).reshape(batch, seq, heads, size)

        context = attention(project("query"), project("key"), project("value"), mask=mask, scale=size ** -0.5,
                            dropout_rate=spec.attention_dropout, rng=rngs[0], deterministic=deterministic)
        out = dropout(dense(context, layer["attn_out"], dtype), spec.dropout, rngs[1], deterministic)
        return out.astype(jnp.float32)

    def feed_forward(h):
        inner = ACTIVATIONS[spec.activation](dense(h, layer["fc1"], dtype))
        inner = dropout(inner, spec.activation_dropout, rngs[2], deterministic)
        return dropout(dense(inner, layer["fc2"], dtype), spec.dropout, rngs[3], deterministic).astype(jnp.float32)

    if spec.pre_norm:
        x = x + attend(layer_norm(x, layer["attn_norm"], spec.eps))
        return x + feed_forward(layer_norm(x, layer["mlp_norm"], spec.eps))
    x = layer_norm(x + attend(x), layer["attn_norm"], spec.eps)
    return layer_norm(x + feed_forward(x), layer["mlp_norm"], spec.eps)


def block_step(remat: bool) -> Callable:
    """:func:`transformer_block`, recomputed in the backward pass when ``remat`` (saves memory)."""
    return jax.checkpoint(transformer_block, static_argnums=(2, 3, 5)) if remat else transformer_block


def block_params(state: hub.StateReader, prefix: str, stems: Mapping[str, str], hidden: int, inner: int,
                 no_bias: Sequence[str] = ()) -> Params:
    """One :func:`transformer_block` layer from checkpoint tensors, read in :data:`BLOCK_NAMES`
    order: ``stems`` maps each of them to its tensor name stem under ``prefix`` (``{prefix}{stem}.weight``
    and ``.bias``); the projections in ``no_bias`` have no bias. Dense weights are stored ``(in, out)``."""
    shapes = {"query": (hidden, hidden), "key": (hidden, hidden), "value": (hidden, hidden),
              "attn_out": (hidden, hidden), "fc1": (hidden, inner), "fc2": (inner, hidden)}
    return {n: state.norm(prefix + stems[n], hidden) if n not in shapes else
            state.dense(prefix + stems[n], *shapes[n], bias=n not in no_bias) for n in BLOCK_NAMES}


def layer_range(layers: Optional[slice], num_layers: int, hidden_states, input_ids, *, caller: str
                ) -> tuple[int, int]:
    """``(start, stop)`` of the ``layers`` slice (``None``: all ``num_layers``) that an encoder's
    ``caller`` (e.g. ``"bert_apply"``) runs, checked: consecutive layers; a range that starts
    after the embeddings needs ``hidden_states`` (the output of layer ``start - 1``); without
    them ``input_ids`` must be ``(batch, seq)``. Raises ``ValueError`` naming the argument."""
    start, stop, stride = (layers if layers is not None else slice(None)).indices(num_layers)
    if stride != 1 or stop < start:
        raise ValueError(f"layers={layers!r}: give a slice of consecutive layers, e.g. slice(2, None)")
    if hidden_states is None:
        if start > 0:
            raise ValueError(f"{caller}(layers={layers!r}) starts after the embeddings: give hidden_states=, "
                             f"the output of layer {start - 1}")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    return start, stop


# -- loading -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Family:
    """What :func:`load` needs to know about an encoder family.

    ``model_types``: the ``config.json`` ``model_type`` values it reads (``default_type`` when the
    key is absent; None: required). ``config_class.from_hf(raw)`` builds its config.
    ``activations``: ``(config field, config.json key)`` pairs naming activations.
    ``head_keys``: the ``config.json`` names of ``hidden_size`` / ``num_heads`` for the check
    that one divides the other (None: no check). ``check(raw, config, where)``: further checks,
    raising :class:`~emojax.encoders.hub.WeightError`. ``prefixes``: where the encoder's tensors
    may sit in a checkpoint, in the order tried.
    """

    config_class: type
    model_types: tuple[str, ...]
    default_type: Optional[str]
    params_from_state: Callable[[hub.StateReader, Any], Params]
    prefixes: tuple[str, ...]
    activations: tuple[tuple[str, str], ...] = ()
    head_keys: Optional[tuple[str, str]] = ("hidden_size", "num_attention_heads")
    check: Optional[Callable[[dict, Any, pathlib.Path], None]] = None


_FAMILIES: dict[type, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` known to :func:`family_of` (export); returns it."""
    _FAMILIES[family.config_class] = family
    return family


def family_of(config) -> Optional[Family]:
    """The registered family of a config object, or None."""
    return _FAMILIES.get(type(config))


def known_families() -> list[str]:
    return [cls.__name__ for cls in _FAMILIES]


def open_checkpoint(family: Family, name_or_path: str, **overrides) -> tuple[pathlib.Path, dict, Any]:
    """``(folder, config.json dict, config)`` of a checkpoint of ``family`` (folder or hub id),
    checked: model type, activations, heads, the family's own checks. ``overrides`` replace
    config fields (e.g. ``remat=True``)."""
    folder = hub.resolve_model(name_or_path)
    raw = hub.load_config(folder)
    where = folder / "config.json"
    if raw.get("model_type", family.default_type) not in family.model_types:
        expected = repr(family.model_types[0]) if len(family.model_types) == 1 else f"one of {family.model_types}"
        raise hub.WeightError(f"{where}: model_type {raw.get('model_type')!r} is not {expected}; "
                              "load it with its own family's loader")
    config = dataclasses.replace(family.config_class.from_hf(raw), **overrides)
    for field, key in family.activations:
        if getattr(config, field) not in ACTIVATIONS:
            raise hub.WeightError(f"{where}: {key} {getattr(config, field)!r} is not supported "
                                  f"(known: {sorted(ACTIVATIONS)})")
    if family.head_keys is not None and config.hidden_size % config.num_heads:
        hidden_key, heads_key = family.head_keys
        raise hub.WeightError(f"{where}: {hidden_key} {config.hidden_size} is not a multiple of "
                              f"{heads_key} {config.num_heads}")
    if family.check is not None:
        family.check(raw, config, where)
    return folder, raw, config


def load(family: Family, name_or_path: str, **overrides) -> tuple[Params, Any]:
    """Parameters (float32 pytree) and config of a checkpoint of ``family`` (folder or hub id):
    :func:`open_checkpoint`, then the family's ``params_from_state`` over its tensors. Missing or
    mis-shaped tensors raise :class:`~emojax.encoders.hub.WeightError` naming them; unused ones
    are logged once."""
    folder, _, config = open_checkpoint(family, name_or_path, **overrides)
    state = hub.StateReader(hub.load_state_dict(folder), str(folder), prefixes=family.prefixes)
    return family.params_from_state(state, config), config
