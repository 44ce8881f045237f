"""Losses as pure functions of logits / embeddings, labels and explicit state."""
from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
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


# ---------------------------------------------------------------------------------------------
# Distillation (DIST) and cross-modal feature contrast (CMCL)
# ---------------------------------------------------------------------------------------------
def _cosine(a, b, axis=-1, eps=1e-8):
    """PyTorch's ``cosine_similarity``: each norm clamped at ``eps``."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=axis), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=axis), eps)
    return (a * b).sum(axis) / (na * nb)


def _pearson_rows(a, b, eps=1e-8):
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(n,)``."""
    return _cosine(a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True), eps=eps)


def dist_loss(student_logits, teacher_logits, *, temperature: float = 4.0, beta: float = 1.0, gamma: float = 1.0):
    """DIST: ``T^2 (beta (1 - mean inter-class Pearson) + gamma (1 - mean intra-class Pearson))``
    on ``softmax(z / T)``; the teacher is held fixed (stop-gradient)."""
    y_s = jax.nn.softmax(jnp.asarray(student_logits, jnp.float32) / temperature, axis=1)
    y_t = jax.lax.stop_gradient(jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32) / temperature, axis=1))
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.T, y_t.T).mean()
    return temperature ** 2 * (beta * inter + gamma * intra)


def _normalize(x, eps=1e-12):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), eps)


def feature_kl_loss(features, target_features, *, temperature: float = 1.0):
    """KL(softmax(t t^T / tau) || softmax(t f^T / tau)), batch mean, on L2-normalised rows.

    ``target_features`` (the main modality) give both the anchors and the target distribution.
    """
    t, f = _normalize(target_features), _normalize(features)
    log_q = jax.nn.log_softmax(t @ f.T / temperature, axis=1)
    p = jax.nn.softmax(t @ t.T / temperature, axis=1)
    kl = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - log_q), 0.0)
    return kl.sum() / t.shape[0]


def cmcl_loss(features: Mapping, *, main: str = "T", temperature: float = 1.0):
    """Cross-modal contrast: ``feature_kl_loss`` of every other modality against the main one
    (main modality stop-gradient), summed."""
    target = jax.lax.stop_gradient(features[main])
    return sum(feature_kl_loss(features[m], target, temperature=temperature) for m in features if m != main)


# ---------------------------------------------------------------------------------------------
# Prototype contrastive losses (SPCL, APCL), state carried explicitly
# ---------------------------------------------------------------------------------------------
def prototype_scores(embeddings, labels, *, temperature: float, eps: float = 1e-8):
    """Pairwise ``((1 + cos) / 2 + eps) / temperature`` with the diagonal zeroed and the maximum
    subtracted, and the positive (same label, not itself) and negative masks: ``(n, n)`` each."""
    x = jnp.asarray(embeddings, jnp.float32)
    n = x.shape[0]
    scores = (1.0 + _cosine(x[None, :, :], x[:, None, :])) / 2.0 + eps
    off_diagonal = 1.0 - jnp.eye(n)
    scores = scores * off_diagonal / temperature
    scores = scores - jax.lax.stop_gradient(scores.max())
    same = (labels[None, :] == labels[:, None]).astype(jnp.float32)
    return scores, same * off_diagonal, 1.0 - same


def _masked_mean(loss, keep):
    count = keep.sum()
    return jnp.where(count > 0, jnp.where(keep, loss, 0.0).sum() / jnp.maximum(count, 1), 0.0)


def prototype_contrastive_loss(scores, positive, negative, *, decoupled: bool, eps: float = 1e-8):
    """Per-anchor loss averaged over anchors above a threshold (0.3, or 0 when ``decoupled``)."""
    if decoupled:
        pos = (scores * positive).sum(-1) / (positive.sum(-1) + eps)
        loss = -pos + jnp.log((jnp.exp(scores) * negative).sum(-1) + eps)
        return _masked_mean(loss, loss > 0)
    exp = jnp.exp(scores)
    pos, neg = (exp * positive).sum(-1), (exp * negative).sum(-1)
    probs = pos / (pos + neg) / (positive.sum(-1) + eps)
    loss = -jnp.log(probs + eps)
    return _masked_mean(loss, loss > 0.3)


def orthonormal_vectors(rng, num_classes: int, dim: int):
    """``num_classes`` orthonormal rows of length ``dim`` (QR of a Gaussian matrix)."""
    q, _ = jnp.linalg.qr(jax.random.normal(rng, (dim, num_classes)))
    return q.T[:num_classes]


def spcl_init(rng, *, num_classes: int, dim: int, pool_size: int = 512):
    """SPCL state: default centres, per-class ring-buffer pools ``(C, pool, dim)`` and counts."""
    return {"default_centers": orthonormal_vectors(rng, num_classes, dim),
            "pools": jnp.zeros((num_classes, pool_size, dim), jnp.float32),
            "counts": jnp.zeros((num_classes,), jnp.int32)}


def spcl_centers(state, rng, *, support: int):
    """Per class: the mean of a random ``support`` subset of its pool, or the default centre while
    the pool holds fewer than ``support`` embeddings."""
    pools, counts = state["pools"], state["counts"]
    num_classes, pool_size, _ = pools.shape
    filled = jnp.minimum(counts, pool_size)

    def centre(pool, n, key, default):
        order = jax.random.permutation(key, pool_size)
        # Filled slots first, in random order; take the first ``support`` of them.
        rank = jnp.argsort(jnp.where(jnp.arange(pool_size)[order] < n, 0, 1), stable=True)
        chosen = order[rank][:support]
        mean = pool[chosen].mean(0)
        return jnp.where(n >= support, mean, default)

    keys = jax.random.split(rng, num_classes)
    return jax.vmap(centre)(pools, filled, keys, state["default_centers"])


def spcl_update(state, embeddings, labels):
    """Push each embedding (stop-gradient) into its class's ring buffer, oldest out first."""
    pools, counts = state["pools"], state["counts"]
    pool_size = pools.shape[1]
    embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings, jnp.float32))

    def push(carry, item):
        pools, counts = carry
        e, y = item
        pools = pools.at[y, counts[y] % pool_size].set(e)
        return (pools, counts.at[y].add(1)), None

    (pools, counts), _ = jax.lax.scan(push, (pools, counts), (embeddings, labels))
    return dict(state, pools=pools, counts=counts)


def spcl_loss(state, embeddings, labels, rng, *, temperature: float = 0.08, support: int = 64,
              decoupled: bool = False):
    """Supervised prototypical contrastive loss; returns ``(loss, new_state)``.

    Centres come from the pools as they were before this batch; the batch then enters the pools.
    """
    num_classes = state["pools"].shape[0]
    centres = spcl_centers(state, rng, support=support)
    new_state = spcl_update(state, embeddings, labels)
    x = jnp.concatenate([jnp.asarray(embeddings, jnp.float32), centres])
    y = jnp.concatenate([labels, jnp.arange(num_classes)])
    scores, positive, negative = prototype_scores(x, y, temperature=temperature)
    return prototype_contrastive_loss(scores, positive, negative, decoupled=decoupled), new_state


def apcl_init(rng, *, num_classes: int, dim: int):
    """APCL state: orthonormal prototypes and zero momenta ``(C, dim)``."""
    prototypes = orthonormal_vectors(rng, num_classes, dim)
    return {"prototypes": prototypes, "momenta": jnp.zeros_like(prototypes)}


def apcl_update(state, embeddings, labels, *, alpha: float = 0.5, gamma: float = 0.99):
    """Per sample ``m_c = gamma m_c + alpha (1 - gamma)(e - p_c)``; then prototypes = the
    orthonormalised (QR) rows of ``p + m``."""
    prototypes = state["prototypes"]
    beta = alpha * (1.0 - gamma)
    embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings, jnp.float32))

    def step(momenta, item):
        e, y = item
        return momenta.at[y].set(gamma * momenta[y] + beta * (e - prototypes[y])), None

    momenta, _ = jax.lax.scan(step, state["momenta"], (embeddings, labels))
    q, _ = jnp.linalg.qr((prototypes + momenta).T)
    return {"prototypes": q.T[:prototypes.shape[0]], "momenta": momenta}


def apcl_loss(state, embeddings, labels, *, temperature: float = 0.08, alpha: float = 0.5, gamma: float = 0.99):
    """Adaptive prototype contrastive loss; prototypes updated first; returns ``(loss, new_state)``."""
    new_state = apcl_update(state, embeddings, labels, alpha=alpha, gamma=gamma)
    num_classes = new_state["prototypes"].shape[0]
    x = jnp.concatenate([jnp.asarray(embeddings, jnp.float32), new_state["prototypes"]])
    y = jnp.concatenate([labels, jnp.arange(num_classes)])
    scores, positive, negative = prototype_scores(x, y, temperature=temperature)
    return prototype_contrastive_loss(scores, positive, negative, decoupled=True), new_state


# ---------------------------------------------------------------------------------------------
# Combining losses
# ---------------------------------------------------------------------------------------------
def uncertainty_weighted(losses, sigmas):
    """``sum_i 0.5 / sigma_i * L_i + sum_i log sigma_i`` (learned ``sigmas``, one per loss)."""
    losses = jnp.asarray(losses, jnp.float32)
    return (0.5 / sigmas) @ losses + jnp.log(sigmas).sum()


# ---------------------------------------------------------------------------------------------
# Extra losses in a training run: state in, state out
# ---------------------------------------------------------------------------------------------
# Losses that compare modalities with each other; skipped (with a logged note) on unimodal runs.
MULTIMODAL_LOSSES = ("cmcl",)
EXTRA_LOSSES = ("spcl", "apcl")


def init_loss_state(extras: Mapping, *, num_classes: int, embed_dim: int, rng) -> dict:
    """Initial state of the configured extra losses (``{"spcl": ..., "apcl": ...}``)."""
    state = {}
    for name, options in extras.items():
        rng, key = jax.random.split(rng)
        if name == "spcl":
            state[name] = spcl_init(key, num_classes=num_classes, dim=embed_dim,
                                    pool_size=int(options.get("pool_size", 512)))
        elif name == "apcl":
            state[name] = apcl_init(key, num_classes=num_classes, dim=embed_dim)
        else:
            raise ValueError(f"loss.extras.{name}: unknown extra loss; choose from {', '.join(EXTRA_LOSSES)}")
    return state


def extra_losses(extras: Mapping, state: dict, *, embeddings, labels, rng, **unused) -> tuple:
    """Weighted sum of the extra losses on the fused ``embeddings``; returns
    ``(total, new_state, logs)``."""
    total = jnp.zeros((), jnp.float32)
    new_state, logs = dict(state), {}
    for name, options in extras.items():
        rng, key = jax.random.split(rng)
        weight = float(options.get("weight", 1.0))
        if name == "spcl":
            value, new_state[name] = spcl_loss(state[name], embeddings, labels, key,
                                               temperature=float(options.get("temperature", 0.08)),
                                               support=int(options.get("support_set_size", 64)),
                                               decoupled=bool(options.get("decoupled", False)))
        elif name == "apcl":
            value, new_state[name] = apcl_loss(state[name], embeddings, labels,
                                               temperature=float(options.get("temperature", 0.08)),
                                               alpha=float(options.get("alpha", 0.5)),
                                               gamma=float(options.get("gamma", 0.99)))
        else:
            raise ValueError(f"loss.extras.{name}: unknown extra loss; choose from {', '.join(EXTRA_LOSSES)}")
        logs[name] = value
        total = total + weight * value
    return total, new_state, logs


# ---------------------------------------------------------------------------------------------
# Feature reconstruction (FRL): SimSiam between fused features and the modality features
# ---------------------------------------------------------------------------------------------
class SimSiamReconstruction(nn.Module):
    """SimSiam between the fused features ``a`` ``(batch, F)`` and the stop-gradient concatenation
    of the modality features ``b`` ``(batch, sum D_m)``: projectors map both to ``F + sum D_m``,
    predictors cross over, and the loss is ``alpha * sign * (cos(p_b, sg(h_b)) + cos(p_a, sg(h_a)))``.

    ``sign="simsiam"`` (default) minimises ``-cos`` as SimSiam does; ``sign="suite"`` keeps the
    PyTorch suite's ``+cos``, which pushes the pairs apart.
    """

    alpha: float = 1.0
    sign: str = "simsiam"

    @nn.compact
    def __call__(self, fused, modality_features):
        from emojax.layers import Projector

        b = jax.lax.stop_gradient(modality_features)
        hidden = fused.shape[-1] + b.shape[-1]
        h_a = Projector(hidden, name="projector_a")(fused)
        h_b = Projector(hidden, name="projector_b")(b)
        p_b = Projector(hidden, name="predictor_a")(h_a)
        p_a = Projector(hidden, name="predictor_b")(h_b)
        similarity = (_cosine(p_b, jax.lax.stop_gradient(h_b)).mean()
                      + _cosine(p_a, jax.lax.stop_gradient(h_a)).mean())
        if self.sign not in ("simsiam", "suite"):
            raise ValueError(f"sign {self.sign!r} is not 'simsiam' or 'suite'")
        return self.alpha * (-similarity if self.sign == "simsiam" else similarity)
