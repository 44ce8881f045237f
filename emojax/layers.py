"""Bricks shared by fusion layers and heads."""
from __future__ import annotations

import flax.linen as nn
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
