"""Classifiers over fused features: ``module(x (B, F), *, deterministic) -> (logits (B, C), aux)``.

Registry (``build_classifier(name, num_classes=C, **options)``):

* ``linear`` -- one linear layer (the suite's ``1xE``).
* ``moe`` -- a dense mixture of ``experts`` linear experts weighted by a noisy router (the
  suite's ``MoE``, ``4xE`` / ``8xE`` / ``64xE``). ``top_k > 0`` makes it sparse, as below.
* ``sparse-moe`` -- the suite's ``SparseMoE``: only the ``top_k`` largest routing weights per
  sample are kept and renormalised to sum to one (default ``top_k=1``).

Router noise in training comes from the RNG stream ``router``. ``balance_weight > 0`` returns, as
the auxiliary loss, that weight times the squared coefficient of variation of the experts'
summed routing weights over the batch (a load-balancing term; the suite defines it but leaves it
unused, so the default is 0 and the auxiliary loss is zero).

Parameters (PyTorch names in brackets, see :mod:`emojax.model.suite_import`): ``linear``
[``weight``, ``bias``]; mixtures: ``router/router``, ``router/noise`` [``router.router``,
``router.noise.0``], ``expert_kernels (E, F, C)``, ``expert_biases (E, C)`` [``experts.{i}``].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from emojax.model.layers import NoisyRouter


class LinearClassifier(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        return nn.Dense(self.num_classes, name="linear")(x).astype(jnp.float32), jnp.zeros((), jnp.float32)


def top_k_weights(weights, k: int):
    """Keep the ``k`` largest weights of each row (ties: lowest index first), renormalised to sum
    to one; the others are zero: ``(B, E) -> (B, E)``."""
    values, index = jax.lax.top_k(weights, k)
    values = values / values.sum(-1, keepdims=True)
    return jnp.einsum("bk,bke->be", values, jax.nn.one_hot(index, weights.shape[-1], dtype=values.dtype))


def cv_squared(x, eps: float = 1e-10):
    """Squared coefficient of variation ``var(x) / (mean(x)^2 + eps)`` (unbiased variance, as
    PyTorch's ``var``); 0 for a single value."""
    x = jnp.asarray(x, jnp.float32)
    if x.shape[0] == 1:
        return jnp.zeros((), jnp.float32)
    return jnp.var(x, ddof=1) / (jnp.mean(x) ** 2 + eps)


class MixtureClassifier(nn.Module):
    """``sum_e w_e(x) (x W_e + b_e)`` with ``w = NoisyRouter(x)`` (top-k renormalised when
    ``top_k > 0``): ``(B, F) -> (B, C)``."""

    num_classes: int
    experts: int = 4
    top_k: int = 0
    balance_weight: float = 0.0

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if self.experts < 1 or not 0 <= self.top_k <= self.experts:
            raise ValueError(f"classifier: experts={self.experts}, top_k={self.top_k}; need experts >= 1 and "
                             "0 <= top_k <= experts")
        weights = NoisyRouter(self.experts, name="router")(x, deterministic=deterministic)
        if self.top_k and self.top_k < self.experts:
            weights = top_k_weights(weights, self.top_k)
        kernels = self.param("expert_kernels", nn.initializers.lecun_normal(batch_axis=(0,)),
                             (self.experts, x.shape[-1], self.num_classes))
        biases = self.param("expert_biases", nn.initializers.zeros, (self.experts, self.num_classes))
        per_expert = jnp.einsum("bf,efc->bec", x, kernels.astype(x.dtype)) + biases.astype(x.dtype)
        logits = jnp.einsum("be,bec->bc", weights.astype(per_expert.dtype), per_expert).astype(jnp.float32)
        aux = self.balance_weight * cv_squared(weights.sum(0)) if self.balance_weight else jnp.zeros((), jnp.float32)
        return logits, aux


CLASSIFIERS = {"linear": LinearClassifier, "moe": MixtureClassifier, "sparse-moe": MixtureClassifier}


def build_classifier(name: str, *, num_classes: int, **options) -> nn.Module:
    """The classifier ``name`` (``linear``, ``moe``, ``sparse-moe``) with ``num_classes`` outputs."""
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier.name: unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    options = dict(options)
    if name == "linear":
        experts = int(options.pop("experts", 1))
        if experts != 1:
            raise ValueError(f"classifier.linear: experts={experts}; use name 'moe' for a mixture")
        options.pop("top_k", None)
    elif name == "sparse-moe":
        options.setdefault("top_k", 1)
        if not options["top_k"]:
            raise ValueError("classifier.sparse-moe: top_k must be at least 1")
    try:
        return CLASSIFIERS[name](num_classes=int(num_classes), **options)
    except TypeError as err:
        raise ValueError(f"classifier.{name}: bad option ({err}); options given: {', '.join(options) or 'none'}") \
            from None
