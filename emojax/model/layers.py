"""Bricks shared by the fusion layers and heads: projector, attention, routers.

Shapes: ``B`` batch, ``D`` features. Parameters stay float32; matrix products run in the dtype of
the inputs; softmax and LayerNorm run in float32.

Attention over ``(batch, features)`` inputs comes in two modes (``batch_as_sequence``):

* ``True`` -- the PyTorch suite's behaviour. Its ``nn.MultiheadAttention`` receives
  ``(batch, features)`` tensors, which PyTorch reads as *one unbatched sequence of length
  batch*: every sample attends to every other sample of its batch. This is what produced the
  suite's published numbers and its golden outputs, so it is the default of every attention
  layer here. Consequence: a sample's output depends on its batch mates, so evaluation scores
  depend on batch size and order, and padding rows must be kept out of the keys
  (pass ``batch_mask``). A batch of one gives the same result in both modes.
* ``False`` -- per-sample attention: each sample is a sequence of one token, so the softmax is
  over a single key and the layer reduces to ``out_proj(v_proj(value))``. Outputs depend only
  on the sample itself. The query/key projections are still created (and unused) so that both
  modes share one parameter layout.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class Projector(nn.Module):
    """``Linear(in -> out)``, then ``(depth - 1) x [Dropout, GELU, Linear(out -> out)]``.

    ``(B, in) -> (B, out)``. Dense layers are named ``linear_0 .. linear_{depth-1}``; GELU is the
    exact (erf) form, as PyTorch's default.
    """

    out_dim: int
    depth: int = 1
    dropout: float = 0.0
    dtype: Optional[jnp.dtype] = None  # None: the dtype of the inputs and parameters

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if self.depth < 1:
            raise ValueError(f"Projector: depth must be at least 1, got {self.depth}")
        x = nn.Dense(self.out_dim, dtype=self.dtype, name="linear_0")(x)
        for i in range(1, self.depth):
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
            x = nn.gelu(x, approximate=False)
            x = nn.Dense(self.out_dim, dtype=self.dtype, name=f"linear_{i}")(x)
        return x


def attention_weights(q, k, num_heads: int, batch_mask: Optional[jax.Array] = None):
    """Scaled dot-product weights of the batch-as-sequence mode: ``(..., heads, B_q, B_k)`` float32
    for ``q (..., B_q, D)``, ``k (..., B_k, D)`` (leading axes: independent groups, each its own
    sequence).

    ``batch_mask`` ``(B_k,)`` bool: keys whose entry is False get zero weight.
    """
    size = q.shape[-1] // num_heads
    qh = q.reshape(*q.shape[:-1], num_heads, size)
    kh = k.reshape(*k.shape[:-1], num_heads, size)
    scores = jnp.einsum("...qhd,...khd->...hqk", qh, kh, preferred_element_type=jnp.float32) / math.sqrt(size)
    if batch_mask is not None:
        scores = jnp.where(batch_mask[None, None, :], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


class MultiheadAttention(nn.Module):
    """Multi-head attention over ``(B, D)`` rows, parameters in PyTorch's ``nn.MultiheadAttention``
    layout (``in_proj_weight (3D, D)`` or ``q/k/v_proj_weight`` when the key size differs,
    ``in_proj_bias (3D,)``, ``out_proj_weight (D, D)``, ``out_proj_bias (D,)``).

    ``query (..., B, D)``, ``key``/``value`` ``(..., B, key_dim)`` -> ``(..., B, D)``; leading axes
    are independent groups (each attends within itself). See the module docstring for
    ``batch_as_sequence``. ``dropout`` applies to the attention weights (the suite: 0).
    """

    embed_dim: int
    num_heads: int
    key_dim: Optional[int] = None
    batch_as_sequence: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, query, key, value, *, deterministic: bool = True, batch_mask=None):
        d, kd = self.embed_dim, self.key_dim or self.embed_dim
        if d % self.num_heads:
            raise ValueError(f"attention: {self.num_heads} heads do not divide the feature size {d} "
                             f"(layer {'/'.join(self.scope.path) if self.scope else ''}); pick sizes divisible "
                             "by the head count, e.g. with the fusion option project_inputs")
        init = nn.initializers.xavier_uniform()
        if kd == d:
            w = self.param("in_proj_weight", init, (3 * d, d))
        else:
            w = None
            wq = self.param("q_proj_weight", init, (d, d))
            wk = self.param("k_proj_weight", init, (d, kd))
            wv = self.param("v_proj_weight", init, (d, kd))
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        wo = self.param("out_proj_weight", init, (d, d))
        bo = self.param("out_proj_bias", nn.initializers.zeros, (d,))
        if not self.batch_as_sequence:
            # One key per sample: the softmax weight is exactly 1.
            v = value @ (wv if w is None else w[2 * d:]).T.astype(value.dtype) + b[2 * d:].astype(value.dtype)
            return v @ wo.T.astype(v.dtype) + bo.astype(v.dtype)
        if w is not None and query is key and key is value:
            # Self-attention: one product with the whole in_proj_weight gives q, k and v (no sliced
            # copies of the weight, and its gradient comes out whole, not as three padded parts).
            q, k, v = jnp.split(query @ w.T.astype(query.dtype) + b.astype(query.dtype), 3, axis=-1)
        else:
            if w is not None:
                wq, wk, wv = w[:d], w[d:2 * d], w[2 * d:]
            q = query @ wq.T.astype(query.dtype) + b[:d].astype(query.dtype)
            k = key @ wk.T.astype(key.dtype) + b[d:2 * d].astype(key.dtype)
            v = value @ wv.T.astype(value.dtype) + b[2 * d:].astype(value.dtype)
        probs = attention_weights(q, k, self.num_heads, batch_mask)
        probs = nn.Dropout(self.dropout)(probs, deterministic=deterministic)
        vh = v.reshape(*v.shape[:-1], self.num_heads, d // self.num_heads)
        out = jnp.einsum("...hqk,...khd->...qhd", probs.astype(vh.dtype), vh).reshape(*q.shape[:-1], d)
        return out @ wo.T.astype(out.dtype) + bo.astype(out.dtype)


class SelfAttentionProjector(nn.Module):
    """``Projector(Dropout(LayerNorm(attention(x, x, x) + x)))``: ``(..., B, in) -> (..., B, out)``
    (leading axes: independent groups, as in :class:`MultiheadAttention`).

    Submodules ``multihead_attn``, ``norm``, ``proj`` (the suite's names).
    """

    out_dim: int
    num_heads: int
    depth: int = 1
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True, batch_mask=None):
        attended = MultiheadAttention(x.shape[-1], self.num_heads, batch_as_sequence=self.batch_as_sequence,
                                      name="multihead_attn")(x, x, x, deterministic=deterministic,
                                                             batch_mask=batch_mask)
        h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm")((attended + x).astype(jnp.float32))
        h = nn.Dropout(self.dropout)(h.astype(x.dtype), deterministic=deterministic)
        return Projector(self.out_dim, self.depth, self.dropout, name="proj")(h, deterministic=deterministic)


class CrossAttention(nn.Module):
    """``Dropout(LayerNorm(attention(query, key, key) + query))``: queries ``(B, Dq)`` from one
    feature, keys/values ``(B, Dk)`` from another -> ``(B, Dq)``."""

    num_heads: int = 8
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, query, key, *, deterministic: bool = True, batch_mask=None):
        attended = MultiheadAttention(query.shape[-1], self.num_heads, key_dim=key.shape[-1],
                                      batch_as_sequence=self.batch_as_sequence, name="multihead_attn")(
            query, key, key, deterministic=deterministic, batch_mask=batch_mask)
        h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm")((attended + query).astype(jnp.float32))
        return nn.Dropout(self.dropout)(h.astype(query.dtype), deterministic=deterministic)


class NoisyRouter(nn.Module):
    """Routing weights ``softmax(W x)``: ``(B, D) -> (B, experts)`` float32, rows sum to one.

    With ``noisy`` (the suite's ``NoiseRouter``) a second bias-free layer gives the noise scale:
    in training (``deterministic=False``) the logits get ``N(0, 1) * softplus(W_noise x)`` added,
    drawn from the RNG stream ``router``; in evaluation there is no noise. ``noisy=False`` is the
    plain ``Router``. Submodules ``router`` and ``noise``.
    """

    num_experts: int
    noisy: bool = True
    use_bias: bool = False

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True, return_logits: bool = False):
        """Weights ``(B, experts)``; with ``return_logits`` the (noisy) logits instead."""
        logits = nn.Dense(self.num_experts, use_bias=self.use_bias, name="router")(x).astype(jnp.float32)
        if self.noisy:
            scale = jax.nn.softplus(nn.Dense(self.num_experts, use_bias=False, name="noise")(x).astype(jnp.float32))
            if not deterministic:
                logits = logits + jax.random.normal(self.make_rng("router"), logits.shape) * scale
        return logits if return_logits else jax.nn.softmax(logits, axis=-1)
