"""Classifiers over fused features: ``(batch, F) -> (logits (batch, classes), aux_loss)``."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LinearClassifier(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        return nn.Dense(self.num_classes, name="linear")(x), jnp.zeros((), jnp.float32)


CLASSIFIERS = {"linear": LinearClassifier}


def build_classifier(name: str, *, num_classes: int, **options) -> nn.Module:
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier.name: unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    options.pop("experts", None) if name == "linear" else None
    return CLASSIFIERS[name](num_classes=int(num_classes), **options)
