"""Dialogue context over fused utterance vectors: ``(dialogues, turns, F) -> (dialogues, turns, dim)``.

A frozen text encoder sees one utterance; prepending earlier turns to its input dilutes its
features. The context head instead runs a small sequence model over the *fused* vectors of a
dialogue's utterances (after the per-utterance fusion, before the classifier), so each utterance
is classified with the others in view:

* ``kind="transformer"`` -- ``layers`` pre-LN blocks (self-attention, then a GELU MLP of
  ``4 * dim``), sinusoidal positions;
* ``kind="gru"`` -- ``layers`` pre-LN residual GRU blocks (a forward GRU, plus a backward one
  unless causal, projected back to ``dim``).

``causal=True`` lets an utterance see only itself and the ones before it ("the dialogue so far":
what a live system has); ``False`` lets it see the whole dialogue. ``speakers > 0`` adds a
learned embedding of the speaker, numbered per dialogue by first appearance (0 = whoever spoke
first), so speakers never seen in training are fine; numbers from ``speakers - 1`` on share the
last embedding.

Inputs are padded dialogues: ``mask (dialogues, turns) bool`` marks real utterances, which fill
each dialogue from position 0 (padding only at the end). Padding never reaches a real utterance:
attention keys are masked, and the GRUs stop at each dialogue's length.

A run turns the head on with ``cfg.model.context`` (``configs/context.py``); no key, no head, so
earlier runs keep their configs and hashes. :func:`context_spec` reads and checks it.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emojax.config import ConfigError

KINDS = ("transformer", "gru")
# Values a context config may leave out (the presets in configs/context.py give every key).
DEFAULTS = {"kind": "transformer", "causal": False, "layers": 2, "heads": 4, "dim": 256, "dropout": 0.1,
            "speakers": 16}


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def context_spec(cfg) -> Optional[dict]:
    """The checked context settings of ``cfg`` (``cfg.model.context`` with :data:`DEFAULTS` for
    keys left out), or ``None`` when the run has no context head (no key, an empty one, or
    ``kind="none"``). An impossible setting raises :class:`~emojax.config.ConfigError` naming it."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    raw = model.get("context") if model is not None else None
    if raw is None:
        return None
    raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    if not raw or raw.get("kind") == "none":
        return None
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"model.context.{unknown[0]}: unknown setting; the context head takes "
                          f"{', '.join(DEFAULTS)} (see configs/context.py)")
    spec = {**DEFAULTS, **raw}
    if spec["kind"] not in KINDS:
        raise ConfigError(f"model.context.kind: {spec['kind']!r} is not one of {', '.join(KINDS)} "
                          "(or none for no context head)")
    if not isinstance(spec["causal"], bool):
        raise ConfigError(f"model.context.causal: {spec['causal']!r} must be True (each utterance sees the "
                          "dialogue so far) or False (the whole dialogue)")
    for key, least in (("layers", 1), ("heads", 1), ("dim", 1), ("speakers", 0)):
        if not _whole(spec[key]) or spec[key] < least:
            raise ConfigError(f"model.context.{key}: must be a whole number of at least {least}, got {spec[key]!r}")
    if spec["kind"] == "transformer" and spec["dim"] % spec["heads"]:
        raise ConfigError(f"model.context.heads: {spec['heads']} heads do not divide model.context.dim="
                          f"{spec['dim']}; pick a dim divisible by the head count")
    dropout = spec["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.context.dropout: {dropout!r} must lie in [0, 1)")
    spec["dropout"] = float(dropout)
    return spec


def check_context_run(cfg) -> Optional[dict]:
    """:func:`context_spec`, and the parts of the run that cannot train on dialogue batches: the
    extra losses work on the batch as a whole (prototype pools, batch-wide contrasts, the
    teacher's batch statistics), and dialogue batches hold padding rows they would count."""
    spec = context_spec(cfg)
    if spec is None:
        return None
    extras = cfg.loss.get("extras") or {}
    for name in extras:
        raise ConfigError(f"loss.extras.{name}: this extra loss needs the whole batch, and a run with a dialogue "
                          f"context head (model.context, kind {spec['kind']}) trains on padded dialogue batches; "
                          "use a per-utterance loss (ce, weighted, focal) or no context head (context=none)")
    return spec


def sinusoid_positions(turns: int, dim: int) -> np.ndarray:
    """``(turns, dim)`` float32: ``sin(t / 10000^(2i/dim))`` in column ``2i``, ``cos`` in ``2i + 1``
    (NumPy: a constant of the compiled step, not ops in it)."""
    angles = np.arange(turns)[:, None] / 10000.0 ** (np.arange(0, dim, 2) / dim)[None, :]
    table = np.zeros((turns, dim), np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)[:, :dim // 2]
    return table.astype(np.float32)


def allowed_keys(mask: jax.Array, causal: bool) -> jax.Array:
    """Which key each query may attend to: ``(dialogues, turns, turns)`` bool, real keys only and,
    when ``causal``, none after the query."""
    allowed = jnp.broadcast_to(mask[:, None, :], mask.shape + mask.shape[-1:])
    if causal:
        allowed = allowed & jnp.tril(jnp.ones(allowed.shape[-2:], bool))[None]
    return allowed


# The head computes on rows ``(D * T, dim)``, the dialogues' shape taken up only where utterances
# meet (attention, the GRUs): XLA compiles the 2-D programs, their random bits above all, several
# times faster than the same on ``(D, T, dim)``, and one batch shape is compiled per length bucket.
def _norm(x, name: str):
    # LayerNorm in float32 whatever the compute dtype (bfloat16 statistics are too coarse).
    return nn.LayerNorm(dtype=jnp.float32, name=name)(x.astype(jnp.float32))


class ContextAttention(nn.Module):
    """Multi-head self-attention within each dialogue: rows ``(D * T, dim)`` -> ``(D * T, dim)``,
    ``allowed (D, T, T)`` saying which turns each turn may attend to."""

    dim: int
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, allowed):
        d, t, _ = allowed.shape
        size = self.dim // self.heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, name="qkv")(x).reshape(d, t, 3, self.heads, size)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("dqhc,dkhc->dhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(size)
        scores = jnp.where(allowed[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("dhqk,dkhc->dqhc", probs.astype(v.dtype), v).reshape(d * t, self.dim)
        return nn.Dense(self.dim, dtype=self.dtype, name="out")(out)


class ContextBlock(nn.Module):
    """Pre-LN transformer block on rows: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    dim: int
    heads: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, allowed, *, deterministic: bool):
        h = _norm(x, "attention_norm").astype(self.dtype)
        h = ContextAttention(self.dim, self.heads, self.dtype, name="attention")(h, allowed)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = _norm(x, "mlp_norm").astype(self.dtype)
        h = nn.Dense(4 * self.dim, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dense(self.dim, dtype=self.dtype, name="mlp_out")(nn.gelu(h, approximate=False))
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class GRUBlock(nn.Module):
    """Pre-LN residual GRU block on rows: ``x + Dense([fwd, bwd](LN(x)))``; causal: the forward
    GRU only. ``lengths (D,)``: each dialogue's real turns, its GRUs stop there."""

    dim: int
    causal: bool
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, lengths, *, deterministic: bool):
        h = _norm(x, "norm").astype(self.dtype).reshape(lengths.shape[0], -1, x.shape[-1])
        outputs = [nn.RNN(nn.GRUCell(self.dim, dtype=self.dtype, name="forward"))(h, seq_lengths=lengths)]
        if not self.causal:
            # reverse + keep_order: each dialogue read from its own last utterance, not the padding.
            outputs.append(nn.RNN(nn.GRUCell(self.dim, dtype=self.dtype, name="backward"))(
                h, seq_lengths=lengths, reverse=True, keep_order=True))
        h = jnp.concatenate(outputs, axis=-1).reshape(x.shape[0], -1)
        h = nn.Dense(self.dim, dtype=self.dtype, name="out")(h)
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class DialogueContext(nn.Module):
    """The context head (see the module docstring): ``x (D, T, F)``, ``speakers (D, T) int``,
    ``mask (D, T) bool`` -> ``(D, T, dim)`` in ``dtype``; rows of padding are left unspecified."""

    kind: str = "transformer"
    causal: bool = False
    layers: int = 2
    heads: int = 4
    dim: int = 256
    dropout: float = 0.1
    speakers: int = 16
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, speakers, mask, *, deterministic: bool = True):
        if self.kind not in KINDS:
            raise ValueError(f"model.context.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        dialogues, turns, _ = x.shape
        mask = jnp.asarray(mask, bool)
        h = nn.Dense(self.dim, dtype=self.dtype, name="input")(x.reshape(dialogues * turns, -1).astype(self.dtype))
        if self.kind == "transformer":
            h = h + jnp.asarray(np.tile(sinusoid_positions(turns, self.dim), (dialogues, 1)), h.dtype)
        if self.speakers:
            ids = jnp.clip(jnp.asarray(speakers, jnp.int32).reshape(-1), 0, self.speakers - 1)
            h = h + nn.Embed(self.speakers, self.dim, name="speaker")(ids).astype(h.dtype)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        if self.kind == "transformer":
            allowed = allowed_keys(mask, self.causal)
            for i in range(self.layers):
                h = ContextBlock(self.dim, self.heads, self.dropout, self.dtype, name=f"block_{i}")(
                    h, allowed, deterministic=deterministic)
        else:
            lengths = mask.sum(-1).astype(jnp.int32)
            for i in range(self.layers):
                h = GRUBlock(self.dim, self.causal, self.dropout, self.dtype, name=f"block_{i}")(
                    h, lengths, deterministic=deterministic)
        return _norm(h, "final_norm").astype(self.dtype).reshape(dialogues, turns, self.dim)
