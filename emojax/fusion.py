"""Fusion layers: a mapping modality -> ``(batch, dim)`` features in, ``(batch, out)`` out.

Every fusion module is called as ``module(features, deterministic=...)`` and returns
``(fused, aux_loss)``; ``aux_loss`` is a float32 scalar (zero for layers without one).
Look a layer up by name with :func:`build_fusion`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from emojax.layers import Projector


class ConcatFusion(nn.Module):
    """Concatenate the modalities (in ``modalities`` order) and project: ``(batch, out)``."""

    modalities: tuple[str, ...]
    output_dim: int
    depth: int = 1
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True):
        x = jnp.concatenate([features[m] for m in self.modalities], axis=-1)
        fused = Projector(self.output_dim, self.depth, self.dropout, name="projector")(x, deterministic=deterministic)
        return fused, jnp.zeros((), jnp.float32)


class MeanFusion(nn.Module):
    """Project every modality to ``output_dim`` and average: ``(batch, out)``."""

    modalities: tuple[str, ...]
    output_dim: int
    depth: int = 1
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True):
        projected = [Projector(self.output_dim, self.depth, self.dropout, name=f"projector_{m}")(
            features[m], deterministic=deterministic) for m in self.modalities]
        return jnp.mean(jnp.stack(projected), axis=0), jnp.zeros((), jnp.float32)


class TensorFusion(nn.Module):
    """TFN: project each modality to ``hidden``, flatten the outer product of ``[z_m; 1]`` over the
    modalities, then project: ``(batch, prod_m (hidden + 1)) -> (batch, out)``."""

    modalities: tuple[str, ...]
    output_dim: int
    hidden: int = 16
    depth: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True):
        batch = features[self.modalities[0]].shape[0]
        product = jnp.ones((batch, 1), jnp.float32)
        for m in self.modalities:
            z = nn.Dense(self.hidden, name=f"reduce_{m}")(features[m]).astype(jnp.float32)
            z = jnp.concatenate([z, jnp.ones((batch, 1), z.dtype)], axis=-1)
            product = (product[:, :, None] * z[:, None, :]).reshape(batch, -1)
        fused = Projector(self.output_dim, self.depth, self.dropout, name="projector")(
            product, deterministic=deterministic)
        return fused, jnp.zeros((), jnp.float32)


class LowRankFusion(nn.Module):
    """LMF: per modality ``rank`` factors ``W_m: (rank, d_m + 1, out)``; the factor outputs
    ``[x_m; 1] W_m`` are multiplied over modalities, then combined linearly over the rank."""

    modalities: tuple[str, ...]
    output_dim: int
    rank: int = 4

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True):
        product = None
        for m in self.modalities:
            x = jnp.asarray(features[m], jnp.float32)
            x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=-1)
            factor = self.param(f"factor_{m}", nn.initializers.xavier_normal(),
                                (self.rank, x.shape[-1], self.output_dim))
            out = jnp.einsum("bd,rdo->bro", x, factor)
            product = out if product is None else product * out
        weights = self.param("rank_weights", nn.initializers.xavier_normal(), (1, self.rank))
        bias = self.param("bias", nn.initializers.zeros, (self.output_dim,))
        fused = jnp.einsum("r,bro->bo", weights[0], product) + bias
        return fused, jnp.zeros((), jnp.float32)


FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "concat": ConcatFusion,
    "mean": MeanFusion,
    "tensor": TensorFusion,
    "low-rank": LowRankFusion,
}


def build_fusion(name: str, *, modalities: tuple[str, ...], input_dims: Mapping[str, int], output_dim: int,
                 **options) -> nn.Module:
    """The fusion layer ``name`` over ``modalities`` with output size ``output_dim``."""
    if name not in FUSIONS:
        raise ValueError(f"fusion.name: unknown fusion {name!r}; choose one of {', '.join(sorted(FUSIONS))}")
    del input_dims  # the layers infer input sizes from the features
    try:
        return FUSIONS[name](modalities=tuple(modalities), output_dim=int(output_dim), **options)
    except TypeError as err:
        raise ValueError(f"fusion: bad option for {name!r} ({err})") from None
