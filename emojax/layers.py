"""Bricks shared by fusion layers and heads."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class Projector(nn.Module):
    """``Linear(in -> out)``, then ``(depth - 1) x [Dropout, GELU, Linear(out -> out)]``.

    ``(batch, in) -> (batch, out)``.
    """

    out_dim: int
    depth: int = 1
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        x = nn.Dense(self.out_dim, dtype=self.dtype, name="linear_0")(x)
        for i in range(1, self.depth):
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
            x = nn.gelu(x, approximate=False)
            x = nn.Dense(self.out_dim, dtype=self.dtype, name=f"linear_{i}")(x)
        return x


class MultiheadAttention(nn.Module):
    """Multi-head attention over ``(batch, features)`` inputs, parameters in PyTorch's layout.

    ``batch_as_sequence=True`` reproduces the PyTorch suite: its ``nn.MultiheadAttention`` gets
    ``(batch, features)`` tensors, reads them as one unbatched sequence of length ``batch``, so
    every sample attends to every other sample of its batch (predictions then depend on batch
    mates). ``False`` is per-sample attention: each sample is a sequence of one token, so it attends
    only to itself and the layer reduces to ``out_proj(v_proj(value))``.
    """

    embed_dim: int
    num_heads: int
    key_dim: int | None = None
    batch_as_sequence: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, query, key, value, *, deterministic: bool = True):
        d, kd = self.embed_dim, self.key_dim or self.embed_dim
        init = nn.initializers.xavier_uniform()
        if kd == d:
            w = self.param("in_proj_weight", init, (3 * d, d))
            wq, wk, wv = w[:d], w[d:2 * d], w[2 * d:]
        else:
            wq = self.param("q_proj_weight", init, (d, d))
            wk = self.param("k_proj_weight", init, (d, kd))
            wv = self.param("v_proj_weight", init, (d, kd))
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        wo = self.param("out_proj_weight", init, (d, d))
        bo = self.param("out_proj_bias", nn.initializers.zeros, (d,))
        q = query @ wq.T.astype(query.dtype) + b[:d]
        v = value @ wv.T.astype(value.dtype) + b[2 * d:]
        if not self.batch_as_sequence:
            return v @ wo.T.astype(v.dtype) + bo
        k = key @ wk.T.astype(key.dtype) + b[d:2 * d]
        heads, size = self.num_heads, d // self.num_heads
        qh = q.reshape(-1, heads, size).transpose(1, 0, 2)
        kh = k.reshape(-1, heads, size).transpose(1, 0, 2)
        vh = v.reshape(-1, heads, size).transpose(1, 0, 2)
        scores = jnp.einsum("hqd,hkd->hqk", qh, kh, preferred_element_type=jnp.float32) / math.sqrt(size)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(self.dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("hqk,hkd->hqd", probs.astype(vh.dtype), vh).transpose(1, 0, 2).reshape(-1, d)
        return out @ wo.T.astype(out.dtype) + bo


class SelfAttentionProjector(nn.Module):
    """``Projector(Dropout(LayerNorm(attention(x, x, x) + x)))``: ``(batch, in) -> (batch, out)``."""

    out_dim: int
    num_heads: int
    depth: int = 1
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        attended = MultiheadAttention(x.shape[-1], self.num_heads, batch_as_sequence=self.batch_as_sequence,
                                      name="multihead_attn")(x, x, x, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")((attended + x).astype(jnp.float32))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return Projector(self.out_dim, self.depth, self.dropout, name="proj")(h, deterministic=deterministic)


class CrossAttention(nn.Module):
    """``Dropout(LayerNorm(attention(query, key, key) + query))``: ``(batch, query_dim)``."""

    num_heads: int = 8
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, query, key, *, deterministic: bool = True):
        attended = MultiheadAttention(query.shape[-1], self.num_heads, key_dim=key.shape[-1],
                                      batch_as_sequence=self.batch_as_sequence, name="multihead_attn")(
            query, key, key, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")((attended + query).astype(jnp.float32))
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


class NoisyRouter(nn.Module):
    """``softmax(W x)``; in training the logits get ``N(0, 1) * softplus(W_noise x)`` added
    (RNG stream ``router``). ``(batch, dim) -> (batch, experts)``."""

    num_experts: int
    noisy: bool = True

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        logits = nn.Dense(self.num_experts, use_bias=False, name="router")(x)
        if self.noisy:
            noise_scale = jax.nn.softplus(nn.Dense(self.num_experts, use_bias=False, name="noise")(x))
            if not deterministic:
                logits = logits + jax.random.normal(self.make_rng("router"), logits.shape) * noise_scale
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
