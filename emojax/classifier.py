"""Classifiers over fused features: ``(batch, F) -> (logits (batch, classes), aux_loss)``.

``linear`` is one linear layer. ``moe`` is a mixture of ``experts`` linear experts weighted by a
noisy router (RNG stream ``router`` in training); with ``top_k > 0`` only the ``top_k`` largest
routing weights per sample are kept and renormalised (sparse mixture).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from emojax.layers import NoisyRouter


class LinearClassifier(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        return nn.Dense(self.num_classes, name="linear")(x), jnp.zeros((), jnp.float32)


def top_k_weights(weights, k: int):
    """Keep the ``k`` largest weights per row, renormalised to sum to one: ``(batch, experts)``."""
    threshold = jax.lax.top_k(weights, k)[0][:, -1:]
    kept = jnp.where(weights >= threshold, weights, 0.0)
    return kept / kept.sum(-1, keepdims=True)


class MixtureClassifier(nn.Module):
    num_classes: int
    experts: int = 4
    top_k: int = 0

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        weights = NoisyRouter(self.experts, name="router")(x, deterministic=deterministic)
        if self.top_k:
            weights = top_k_weights(weights, self.top_k)
        kernels = self.param("expert_kernels", nn.initializers.lecun_normal(batch_axis=(0,)),
                             (self.experts, x.shape[-1], self.num_classes))
        biases = self.param("expert_biases", nn.initializers.zeros, (self.experts, self.num_classes))
        per_expert = jnp.einsum("bf,efc->bec", x, kernels.astype(x.dtype)) + biases
        return jnp.einsum("be,bec->bc", weights.astype(per_expert.dtype), per_expert), jnp.zeros((), jnp.float32)


CLASSIFIERS = {"linear": LinearClassifier, "moe": MixtureClassifier}


def build_classifier(name: str, *, num_classes: int, **options) -> nn.Module:
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier.name: unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    if name == "linear":
        options.pop("experts", None)
    return CLASSIFIERS[name](num_classes=int(num_classes), **options)
