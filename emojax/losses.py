"""Losses as pure functions of logits / embeddings, labels and explicit state."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, class_weights: Optional[jax.Array] = None):
    """Mean cross entropy; with ``class_weights`` the weighted mean (PyTorch's ``weight=``)."""
    logits = jnp.asarray(logits, jnp.float32)
    per_sample = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if class_weights is None:
        return per_sample.mean()
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    return (per_sample * w).sum() / w.sum()


def focal_loss(logits, labels, gamma: float = 2.0, class_weights: Optional[jax.Array] = None):
    """``-(1 - p_t)^gamma log p_t``, averaged (weighted by ``class_weights`` when given)."""
    logits = jnp.asarray(logits, jnp.float32)
    log_p = jax.nn.log_softmax(logits)
    log_pt = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    per_sample = -((1.0 - jnp.exp(log_pt)) ** gamma) * log_pt
    if class_weights is None:
        return per_sample.mean()
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    return (per_sample * w).sum() / w.sum()


def classification_loss(kind: str, logits, labels, class_weights=None):
    """``kind``: ``ce`` (plain), ``weighted`` (class-weighted CE), ``focal`` (gamma 2)."""
    if kind == "ce":
        return cross_entropy(logits, labels)
    if kind == "weighted":
        return cross_entropy(logits, labels, class_weights)
    if kind == "focal":
        return focal_loss(logits, labels, 2.0)
    raise ValueError(f"loss.classification: unknown kind {kind!r}; choose ce, weighted or focal")
