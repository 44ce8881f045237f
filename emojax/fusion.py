"""Fusion layers: a mapping modality -> ``(batch, dim)`` features in, ``(batch, out)`` out.

Every fusion module is called as ``module(features, deterministic=...)`` and returns
``(fused, aux_loss)``; ``aux_loss`` is a float32 scalar (zero for layers without one).
Look a layer up by name with :func:`build_fusion`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from emojax.layers import CrossAttention, NoisyRouter, Projector, SelfAttentionProjector


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


def _smooth_l1(a, b):
    """PyTorch's ``smooth_l1_loss`` (beta 1, mean)."""
    return optax.huber_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), delta=1.0).mean()


class CrossAttentionFusion(nn.Module):
    """Each part queries the concatenation of the others (``CrossAttention``); the outputs, optionally
    plus their inputs, are concatenated in ``modalities`` order: ``(batch, sum of dims)``."""

    modalities: tuple[str, ...]
    residual: bool = False
    num_heads: int = 8
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True):
        outputs = []
        for m in self.modalities:
            others = jnp.concatenate([features[n] for n in self.modalities if n != m], axis=-1)
            out = CrossAttention(self.num_heads, self.dropout, self.batch_as_sequence, name=f"attn_{m}")(
                features[m], others, deterministic=deterministic)
            outputs.append(out + features[m] if self.residual else out)
        return jnp.concatenate(outputs, axis=-1), jnp.zeros((), jnp.float32)


class DisentanglementFusion(nn.Module):
    """The suite's disentanglement fusion ("MDN"): private + shared features, fused.

    Private: per modality a self-attention projector (dim -> ``private_dim``, 4 heads, depth 2),
    mixed by a noisy router over the stop-gradient concatenation of the inputs. Shared: one
    self-attention projector (dim -> ``shared_dim * (M - 1)``, 4M heads, depth 2M) applied to every
    modality, mixed by its own router. In training, per modality ``m`` a cross projector
    (dim -> ``shared_dim``, 4(M-1) heads, depth 2^(M-1)) maps every other modality, giving
    ``cross_m``; ``aux = alpha * (sum_m SmoothL1(shared_m, sg(cross_m))
    + sum_m SmoothL1(predictor_m(cross_m), sg(x_m))) / 2``. Output: cross-attention fusion of
    {shared, private} (``use_cross_attn``) or a depth-4 concat projector; size
    ``shared_dim * (M - 1) + private_dim``. Modalities are taken in sorted order (A, T, V) where
    the suite sorts them.
    """

    modalities: tuple[str, ...]
    input_dims: tuple[tuple[str, int], ...]
    private_dim: int = 256
    shared_dim: int = 128
    alpha: float = 1.0
    use_cross_attn: bool = True
    dropout: float = 0.1
    batch_as_sequence: bool = True
    parts: str = "both"  # "private" / "shared": the suite's PrivateFeatureFusion / SharedFeatureFusion alone

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, compute_aux: bool | None = None):
        """``compute_aux`` (default: in training) also computes the auxiliary loss in eval mode."""
        names = sorted(self.modalities)
        dims = dict(self.input_dims)
        count = len(names)
        shared_out = self.shared_dim * (count - 1)
        stopped = jax.lax.stop_gradient(jnp.concatenate([features[m] for m in names], axis=-1))
        attention = dict(dropout=self.dropout, batch_as_sequence=self.batch_as_sequence)

        private = {} if self.parts == "shared" else {m: SelfAttentionProjector(self.private_dim, 4, 2, name=f"private_projector_{m}", **attention)(
            features[m], deterministic=deterministic) for m in names}
        private_mix = None
        if private:
            weights = NoisyRouter(count, name="private_router")(stopped, deterministic=deterministic)
            private_mix = jnp.einsum("bn,bnk->bk", weights, jnp.stack([private[m] for m in names], 1))
        if self.parts == "private":
            return private_mix, jnp.zeros((), jnp.float32)

        shared_projector = SelfAttentionProjector(shared_out, 4 * count, 2 * count, name="shared_projector",
                                                  **attention)
        shared = {m: shared_projector(features[m], deterministic=deterministic) for m in names}
        weights = NoisyRouter(count, name="shared_router")(stopped, deterministic=deterministic)
        shared_mix = jnp.einsum("bn,bnk->bk", weights, jnp.stack([shared[m] for m in names], 1))

        cross_projectors = {m: SelfAttentionProjector(self.shared_dim, 4 * (count - 1), 2 ** (count - 1),
                                                      name=f"cross_projector_{m}", **attention) for m in names}
        predictors = {m: Projector(dims[m], 4, self.dropout, name=f"predictor_{m}") for m in names}
        aux = jnp.zeros((), jnp.float32)
        if compute_aux or (compute_aux is None and not deterministic) or self.is_initializing():
            cross = {m: jnp.concatenate([cross_projectors[m](features[n], deterministic=deterministic)
                                         for n in names if n != m], axis=-1) for m in names}
            feature_loss = sum(_smooth_l1(shared[m], jax.lax.stop_gradient(cross[m])) for m in names)
            reconstruction = sum(_smooth_l1(predictors[m](cross[m], deterministic=deterministic),
                                            jax.lax.stop_gradient(features[m])) for m in names)
            aux = self.alpha * (feature_loss + reconstruction) / 2
        if self.parts == "shared":
            return shared_mix, jnp.asarray(aux, jnp.float32)
        parts = {"shared": shared_mix, "private": private_mix}
        if self.use_cross_attn:
            fused, _ = CrossAttentionFusion(("shared", "private"), dropout=self.dropout,
                                            batch_as_sequence=self.batch_as_sequence, name="fusion_layer")(
                parts, deterministic=deterministic)
        else:
            concat = jnp.concatenate([shared_mix, private_mix], axis=-1)
            fused = Projector(concat.shape[-1], 4, self.dropout, name="fusion_layer")(concat, deterministic=deterministic)
        return fused, jnp.asarray(aux, jnp.float32)


FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "concat": ConcatFusion,
    "mean": MeanFusion,
    "tensor": TensorFusion,
    "low-rank": LowRankFusion,
    "cross-attention": CrossAttentionFusion,
    "disentanglement": DisentanglementFusion,
}

# Fusions whose constructor takes the per-modality input sizes.
_NEEDS_DIMS = ("disentanglement",)


def fusion_output_dim(name: str, *, modalities, input_dims: Mapping[str, int], output_dim: int, **options) -> int:
    """The size ``F`` of the fused features ``build_fusion`` would return."""
    if name == "disentanglement":
        shared = options.get("shared_dim", 128) * (len(modalities) - 1)
        private = options.get("private_dim", 256)
        return {"private": private, "shared": shared}.get(options.get("parts", "both"), shared + private)
    if name == "cross-attention":
        return sum(input_dims[m] for m in modalities)
    return output_dim


def build_fusion(name: str, *, modalities: tuple[str, ...], input_dims: Mapping[str, int], output_dim: int,
                 **options) -> nn.Module:
    """The fusion layer ``name`` over ``modalities`` with output size ``output_dim``."""
    if name not in FUSIONS:
        raise ValueError(f"fusion.name: unknown fusion {name!r}; choose one of {', '.join(sorted(FUSIONS))}")
    try:
        if name in _NEEDS_DIMS:
            return FUSIONS[name](modalities=tuple(modalities),
                                 input_dims=tuple((m, int(input_dims[m])) for m in modalities), **options)
        if name == "cross-attention":
            return FUSIONS[name](modalities=tuple(modalities), **options)
        return FUSIONS[name](modalities=tuple(modalities), output_dim=int(output_dim), **options)
    except TypeError as err:
        raise ValueError(f"fusion: bad option for {name!r} ({err})") from None
