"""Losses as pure functions of logits / features, labels, explicit state and parameters.

Classification: :func:`cross_entropy` (optionally class-weighted, weights = 1 / class
frequency), :func:`focal_loss` (gamma 2), :func:`classification_loss` to pick one by name.

Extra losses (``loss.extras`` in a config: name -> options with ``weight``):

==========  =================================================  ======  =======  ============
name        what                                               state   params   modalities
==========  =================================================  ======  =======  ============
``spcl``    supervised prototypical contrastive (pools)        yes     no       any
``apcl``    adaptive prototype contrastive (prototypes)        yes     no       any
``cmcl``    cross-modal contrastive, main modality stop-grad   no      no       2 or more
``scl``     self contrastive: ``cmcl`` without the stop-grad   no      no       2 or more
``frl``     feature reconstruction (SimSiam, fused vs inputs)  no      yes      2 or more
``dist``    DIST distillation from a frozen teacher's logits   no      no       any
==========  =================================================  ======  =======  ============

The functional API for a training step::

    state = init_loss_state(extras, num_classes=C, embed_dim=F, rng=key)          # spcl / apcl
    loss_params = init_loss_params(extras, fused_dim=F, input_dims=dims, rng=key)  # frl, sigmas
    total, state, logs = extra_losses(extras, state, embeddings=fused, labels=y, features=inputs,
                                      fused=fused, logits=logits, rng=key, present_modalities=mods,
                                      loss_params=loss_params, teacher_logits=None)

``loss_params`` are trainable: keep them in the optimised parameter tree beside the model's
(e.g. ``{"model": ..., "losses": loss_params}``) and pass them in inside the differentiated
function. They are the parameters of :class:`ExtraLossHeads` (FRL's projectors and predictors;
the learned sigmas of uncertainty weighting), an empty dict when no extra loss needs any.
``features`` should be the per-modality features the fusion receives (the suite's pooled
embeddings): CMCL and SCL have a gradient path only through them.

Combining: the step's total is ``classification + fusion auxiliary + total_extra`` (each extra
times its ``weight``). With ``loss.combine == "uncertainty"`` use :func:`combine_losses` on the
unweighted values (``logs``) instead: ``sum_i 0.5 / sigma_i L_i + log sigma_i`` with learned
``sigma_i = exp(log_sigma_i)`` from ``loss_params["uncertainty"]``.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax.config import ConfigError
from emojax.data import DatasetError, dataset_kind
from emojax.data.csvutil import read_csv
from emojax.model.layers import Projector

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------
def _weighted_mean(per_sample, labels, class_weights):
    if class_weights is None:
        return per_sample.mean()
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    return (per_sample * w).sum() / w.sum()


def _nll(logits, labels, label_smoothing: float = 0.0):
    """Per sample cross entropy ``(B, C), (B,) -> (B,)`` float32, against the one-hot target mixed
    with ``label_smoothing`` of the uniform distribution (``(1 - s) onehot + s / C``)."""
    logits = jnp.asarray(logits, jnp.float32)
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def cross_entropy(logits, labels, class_weights: Optional[jax.Array] = None, label_smoothing: float = 0.0):
    """Mean cross entropy ``(B, C), (B,) -> ()`` float32; with ``class_weights (C,)`` the weighted
    mean ``sum_i w_{y_i} nll_i / sum_i w_{y_i}`` (PyTorch's ``CrossEntropyLoss(weight=...)``); with
    ``label_smoothing`` s each ``nll_i`` is taken against ``(1 - s) onehot(y_i) + s / C``."""
    return _weighted_mean(_nll(logits, labels, label_smoothing), labels, class_weights)


def focal_loss(logits, labels, gamma: float = 2.0, class_weights: Optional[jax.Array] = None,
               label_smoothing: float = 0.0):
    """``mean_i (1 - p_i)^gamma * nll_i`` with ``p_i`` the true class's probability; weighted like
    :func:`cross_entropy` when ``class_weights`` is given (the suite's has none), and ``nll_i``
    against the smoothed target with ``label_smoothing`` (``p_i`` stays the true class's)."""
    return _weighted_mean(focal_per_sample(logits, labels, gamma, label_smoothing), labels, class_weights)


def focal_per_sample(logits, labels, gamma: float = 2.0, label_smoothing: float = 0.0):
    """``(1 - p_i)^gamma * nll_i`` per sample ``(B,)`` (see :func:`focal_loss`)."""
    nll = _nll(logits, labels)
    smoothed = _nll(logits, labels, label_smoothing) if label_smoothing else nll
    return (1.0 - jnp.exp(-nll)) ** gamma * smoothed


CLASSIFICATION = ("ce", "weighted", "focal")


def classification_per_sample(kind: str, logits, labels, label_smoothing: float = 0.0):
    """The per-sample loss ``(B,)`` of the classification loss ``kind`` (before its class weights)."""
    if kind in ("ce", "weighted", "weight"):
        return _nll(logits, labels, label_smoothing)
    if kind == "focal":
        return focal_per_sample(logits, labels, 2.0, label_smoothing)
    raise ValueError(f"loss.classification: unknown kind {kind!r}; choose one of {', '.join(CLASSIFICATION)}")


def classification_loss(kind: str, logits, labels, class_weights=None, label_smoothing: float = 0.0):
    """``kind``: ``ce`` (plain), ``weighted`` (CE weighted by ``class_weights``, 1 / class
    frequency), ``focal`` (gamma 2, unweighted as in the suite). ``ce`` and ``focal`` are weighted
    too when given ``class_weights`` (``loss.class_weights``); ``label_smoothing`` as in
    :func:`cross_entropy`."""
    if kind in ("weighted", "weight") and class_weights is None:
        raise ValueError("loss.classification 'weighted' needs class_weights (1 / class frequency of the "
                         "training split)")
    return _weighted_mean(classification_per_sample(kind, logits, labels, label_smoothing), labels, class_weights)


# ---------------------------------------------------------------------------------------------
# Distillation (DIST) and cross-modal feature contrast (CMCL / SCL)
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
    """DIST on ``y = softmax(z / T)`` of student and teacher ``(B, C)``: inter-class loss
    ``1 - mean_i pearson(y_s[i], y_t[i])``, intra-class loss the same on the transposes;
    ``T^2 (beta inter + gamma intra)``. The teacher is held fixed (stop-gradient)."""
    y_s = jax.nn.softmax(jnp.asarray(student_logits, jnp.float32) / temperature, axis=1)
    y_t = jax.lax.stop_gradient(jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32) / temperature, axis=1))
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.T, y_t.T).mean()
    return temperature ** 2 * (beta * inter + gamma * intra)


def _normalize(x, eps=1e-12):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), eps)


def feature_kl_loss(features, target_features, *, temperature: float = 1.0):
    """``KL(softmax(t t^T / tau) || softmax(t f^T / tau))`` rows, summed, divided by the batch
    (PyTorch's ``kl_div(..., reduction="batchmean")``), on L2-normalised rows ``(B, D)``.
    ``target_features`` (the main modality) give the anchors and the target distribution."""
    t, f = _normalize(target_features), _normalize(features)
    log_q = jax.nn.log_softmax(t @ f.T / temperature, axis=1)
    log_p = jax.nn.log_softmax(t @ t.T / temperature, axis=1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum() / t.shape[0]


def cmcl_loss(features: Mapping, *, main: str = "T", temperature: float = 1.0, stop_gradient: bool = True):
    """Cross-modal contrast: :func:`feature_kl_loss` of every other modality against ``main``,
    summed; ``main`` is stop-gradient (``stop_gradient=False`` gives the suite's SCL)."""
    if main not in features:
        raise KeyError(f"loss cmcl: main modality {main!r} has no features (got {', '.join(features)})")
    target = jax.lax.stop_gradient(features[main]) if stop_gradient else features[main]
    total = jnp.zeros((), jnp.float32)
    for m in features:
        if m != main:
            total = total + feature_kl_loss(features[m], target, temperature=temperature)
    return total


# ---------------------------------------------------------------------------------------------
# Prototype contrastive losses (SPCL, APCL), state carried explicitly
# ---------------------------------------------------------------------------------------------
def prototype_scores(embeddings, labels, *, temperature: float, eps: float = 1e-8):
    """Pairwise scores of ``(n, D)`` rows: ``((1 + cos) / 2 + eps)`` with the diagonal zeroed,
    divided by ``temperature``, minus the (stop-gradient) maximum; and the positive (same label,
    not itself) and negative (other label) masks. Three ``(n, n)`` float32 arrays."""
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
    """Per anchor, with ``P`` / ``N`` the sums of ``exp(scores)`` over positives / negatives:
    ``-log(P / (P + N) / (n_pos + eps) + eps)``, averaged over anchors whose loss is above 0.3;
    ``decoupled``: ``-mean positive score + log(N + eps)``, averaged over anchors above 0.
    Zero when no anchor passes."""
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
    """``num_classes`` orthonormal rows of length ``dim`` (QR of a Gaussian ``(dim, C)``)."""
    if num_classes > dim:
        raise ValueError(f"prototype losses: {num_classes} classes need embeddings of at least that size, got {dim}")
    q, _ = jnp.linalg.qr(jax.random.normal(rng, (dim, num_classes)))
    return q.T[:num_classes]


def spcl_init(rng, *, num_classes: int, dim: int, pool_size: int = 512):
    """SPCL state: ``default_centers (C, D)`` (orthonormal), per-class ring buffers
    ``pools (C, pool, D)`` and the number of embeddings each class has pushed, ``counts (C,)``."""
    return {"default_centers": orthonormal_vectors(rng, num_classes, dim),
            "pools": jnp.zeros((num_classes, pool_size, dim), jnp.float32),
            "counts": jnp.zeros((num_classes,), jnp.int32)}


def spcl_centers(state, rng, *, support: int):
    """``(C, D)``: per class the mean of a random ``support``-subset of its pool, or its default
    centre while the pool holds fewer than ``support`` embeddings."""
    pools, counts = state["pools"], state["counts"]
    num_classes, pool_size, _ = pools.shape
    if support > pool_size:
        raise ValueError(f"loss spcl: support_set_size {support} is larger than pool_size {pool_size}")
    filled = jnp.minimum(counts, pool_size)

    def centre(pool, n, key, default):
        # The ring buffer fills slots 0 .. n-1 first: shuffle the slots, filled ones first.
        order = jax.random.permutation(key, pool_size)
        chosen = order[jnp.argsort(order >= n, stable=True)][:support]
        return jnp.where(n >= support, pool[chosen].mean(0), default)

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
    """Supervised prototypical contrastive loss of ``embeddings (B, D)``; ``(loss, new_state)``.

    Centres come from the pools as they were before this batch; the batch then enters the pools;
    the batch and the centres (labelled 0 .. C-1) are scored together.
    """
    num_classes = state["pools"].shape[0]
    centres = spcl_centers(state, rng, support=support)
    new_state = spcl_update(state, embeddings, labels)
    x = jnp.concatenate([jnp.asarray(embeddings, jnp.float32), centres])
    y = jnp.concatenate([labels, jnp.arange(num_classes)])
    scores, positive, negative = prototype_scores(x, y, temperature=temperature)
    return prototype_contrastive_loss(scores, positive, negative, decoupled=decoupled), new_state


def apcl_init(rng, *, num_classes: int, dim: int):
    """APCL state: orthonormal ``prototypes (C, D)`` and zero ``momenta (C, D)``."""
    prototypes = orthonormal_vectors(rng, num_classes, dim)
    return {"prototypes": prototypes, "momenta": jnp.zeros_like(prototypes)}


def apcl_update(state, embeddings, labels, *, alpha: float = 0.5, gamma: float = 0.99):
    """Sample by sample ``m_c = gamma m_c + alpha (1 - gamma)(e - p_c)`` (``p`` as it was before the
    batch); then prototypes = the orthonormalised rows of ``p + m`` (QR of its transpose)."""
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
    """Adaptive prototype contrastive loss: prototypes updated first, then the decoupled
    prototype loss of the batch with the new prototypes; ``(loss, new_state)``."""
    new_state = apcl_update(state, embeddings, labels, alpha=alpha, gamma=gamma)
    num_classes = new_state["prototypes"].shape[0]
    x = jnp.concatenate([jnp.asarray(embeddings, jnp.float32), new_state["prototypes"]])
    y = jnp.concatenate([labels, jnp.arange(num_classes)])
    scores, positive, negative = prototype_scores(x, y, temperature=temperature)
    return prototype_contrastive_loss(scores, positive, negative, decoupled=True), new_state


# ---------------------------------------------------------------------------------------------
# Feature reconstruction (FRL): SimSiam between fused features and the modality features
# ---------------------------------------------------------------------------------------------
SIMSIAM_SIGNS = ("simsiam", "suite")


def reconstruction_loss(params, fused, modality_features, *, alpha: float = 1.0, sign: str = "simsiam"):
    """FRL: SimSiam between ``fused (B, F)`` and the stop-gradient ``modality_features
    (B, sum D_m)`` (their concatenation), times ``alpha``.

    ``sign="simsiam"`` (default) returns ``-alpha * similarity``, which SimSiam minimises;
    ``sign="suite"`` returns the suite's ``+alpha * similarity`` (minimising it pushes the pairs
    apart).
    """
    if sign not in SIMSIAM_SIGNS:
        raise ValueError(f"loss frl: sign {sign!r} is not one of {', '.join(SIMSIAM_SIGNS)}")
    similarity = SimSiamHeads().apply({"params": params}, jnp.asarray(fused, jnp.float32),
                                      jax.lax.stop_gradient(jnp.asarray(modality_features, jnp.float32)))
    return alpha * (-similarity if sign == "simsiam" else similarity)


class SimSiamHeads(nn.Module):
    """FRL's projectors and predictors (each a one-layer ``Projector`` to ``F + sum D_m``):
    ``projector_a`` (fused), ``projector_b`` (modalities), ``predictor_a``, ``predictor_b``.
    Returns ``cos(p_b, sg(h_b)).mean() + cos(p_a, sg(h_a)).mean()`` with ``h_a = projector_a(a)``,
    ``h_b = projector_b(b)``, ``p_b = predictor_a(h_a)``, ``p_a = predictor_b(h_b)``."""

    @nn.compact
    def __call__(self, fused, modality_features):
        hidden = fused.shape[-1] + modality_features.shape[-1]
        h_a = Projector(hidden, name="projector_a")(fused)
        h_b = Projector(hidden, name="projector_b")(modality_features)
        p_b = Projector(hidden, name="predictor_a")(h_a)
        p_a = Projector(hidden, name="predictor_b")(h_b)
        return (_cosine(p_b, jax.lax.stop_gradient(h_b)).mean()
                + _cosine(p_a, jax.lax.stop_gradient(h_a)).mean())


# ---------------------------------------------------------------------------------------------
# Combining losses
# ---------------------------------------------------------------------------------------------
def uncertainty_weighted(losses, sigmas):
    """``sum_i 0.5 / sigma_i * L_i + sum_i log sigma_i`` (the suite's ``MultiLoss``), ``(n,), (n,)``."""
    losses = jnp.asarray(losses, jnp.float32)
    return (0.5 / sigmas) @ losses + jnp.log(sigmas).sum()


def combine_losses(values: Mapping[str, jax.Array], loss_params: Mapping) -> jax.Array:
    """Uncertainty-weighted total of the named losses, with ``sigma = exp(log_sigma)`` from
    ``loss_params["uncertainty"]`` (see :func:`init_loss_params`)."""
    sigmas = loss_params.get("uncertainty") if loss_params else None
    if sigmas is None:
        raise ValueError("combine_losses: loss_params has no 'uncertainty' entry; init_loss_params(..., "
                         "combine='uncertainty', loss_names=...) creates it")
    unknown = [k for k in values if k not in sigmas]
    if unknown:
        raise KeyError(f"combine_losses: no learned sigma for loss {', '.join(unknown)}; known: {', '.join(sigmas)}")
    names = list(values)
    log_sigma = jnp.stack([sigmas[k] for k in names])
    return uncertainty_weighted(jnp.stack([jnp.asarray(values[k], jnp.float32) for k in names]), jnp.exp(log_sigma))


# ---------------------------------------------------------------------------------------------
# Extra losses in a training run: state and parameters in, state out
# ---------------------------------------------------------------------------------------------
EXTRA_LOSSES = ("spcl", "apcl", "cmcl", "scl", "frl", "dist")
# Losses that compare modalities with each other; skipped (with a logged note) on unimodal runs.
MULTIMODAL_LOSSES = ("cmcl", "scl", "frl")
STATEFUL_LOSSES = ("spcl", "apcl")


CLASSIFICATION_LOSSES = ("ce", "weighted", "focal")
COMBINATIONS = ("sum", "uncertainty")


def check_loss_config(cfg) -> None:
    """The ``loss`` section of a run config against this registry: a ``ConfigError`` naming the key
    for an unknown classification loss, extra loss or combination."""
    loss = cfg.loss
    if loss.classification not in CLASSIFICATION_LOSSES:
        raise ConfigError(f"loss.classification: {loss.classification!r} is not one of "
                          f"{', '.join(CLASSIFICATION_LOSSES)}")
    for name in loss.extras:
        if name not in EXTRA_LOSSES:
            raise ConfigError(f"loss.extras.{name}: unknown extra loss; choose from {', '.join(EXTRA_LOSSES)}")
    if loss.get("combine", "sum") not in COMBINATIONS:
        raise ConfigError(f"loss.combine: {loss.combine!r} is not {' or '.join(COMBINATIONS)}")
    class_weights(cfg)  # the count, values and file of loss.class_weights


def class_weights(cfg) -> Optional[np.ndarray]:
    """``loss.class_weights`` as ``(C,)`` float32 in the order of the dataset target's classes, or
    ``None`` when empty: the weights themselves, one per class, or one entry naming a file of them
    (``.json``: a list, or an object class name -> weight; ``.csv``: columns ``class`` and
    ``weight``, a row per class). A ``ConfigError`` names the key (and the file) for a wrong
    count, a negative or non-finite weight, all zero, an unknown class or an unreadable file; and
    refuses them beside ``loss.classification: weighted`` (which takes 1 / class frequency)."""
    given = list(cfg.loss.get("class_weights", ()) or ())
    if not given:
        return None
    key = "loss.class_weights"
    if cfg.loss.classification in ("weighted", "weight"):
        raise ConfigError(f"{key}: loss.classification 'weighted' weighs the classes by 1 / their frequency; "
                          "give explicit weights with ce or focal instead")
    try:
        names = dataset_kind(cfg.dataset.kind).class_names(cfg.dataset.target)
    except DatasetError as err:
        raise ConfigError(str(err)) from None
    where = key
    if len(given) == 1 and isinstance(given[0], str):
        where = f"{key}: {given[0]}"
        given = _weights_file(pathlib.Path(given[0]), names, where)
    bad = [w for w in given if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
    if bad:
        raise ConfigError(f"{where}: weights must be finite numbers (or one .json / .csv file), got {bad[0]!r}")
    if len(given) != len(names):
        raise ConfigError(f"{where}: {len(given)} weights for the {len(names)} classes of {cfg.dataset.kind} "
                          f"{cfg.dataset.target} ({', '.join(names)}); give one per class")
    if min(given) < 0 or max(given) == 0:
        raise ConfigError(f"{where}: weights must be at least 0 and not all 0, got {list(given)}")
    return np.asarray(given, np.float32)


def _weights_file(path: pathlib.Path, names: Sequence[str], where: str) -> list:
    """The weights a ``.json`` / ``.csv`` file gives the classes ``names``, in their order."""
    if path.suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"{where}: not a .json or .csv file of class weights")
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{where}: cannot read it as JSON ({err})") from None
        if isinstance(data, list):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: holds a {type(data).__name__}; give a list of weights or an object "
                              "class name -> weight")
        by_name = data
    else:
        try:
            frame = read_csv(path)
        except DatasetError as err:
            raise ConfigError(f"loss.class_weights: {err}") from None
        if not {"class", "weight"} <= set(frame.columns):
            raise ConfigError(f"{where}: needs the columns class and weight, has {', '.join(map(str, frame.columns))}")
        counts = frame["class"].value_counts()
        if (counts > 1).any():
            raise ConfigError(f"{where}: class {counts.index[counts > 1][0]!r} has several rows")
        by_name = {}
        for row, (name, weight) in enumerate(zip(frame["class"], frame["weight"]), start=2):
            try:
                by_name[name] = float(weight)
            except ValueError:
                raise ConfigError(f"{where}: row {row}: weight {weight!r} is not a number") from None
    unknown = [name for name in by_name if name not in names]
    missing = [name for name in names if name not in by_name]
    if unknown or missing:
        what = f"unknown class {unknown[0]!r}" if unknown else f"no weight for class {missing[0]!r}"
        raise ConfigError(f"{where}: {what}; the classes are {', '.join(names)}")
    return [by_name[name] for name in names]


def _check_names(extras: Mapping) -> None:
    for name in extras:
        if name not in EXTRA_LOSSES:
            raise ValueError(f"loss.extras.{name}: unknown extra loss; choose from {', '.join(EXTRA_LOSSES)}")


def init_loss_state(extras: Mapping, *, num_classes: int, embed_dim: int, rng) -> dict:
    """Initial state of the stateful extras (``{"spcl": ..., "apcl": ...}``; others have none)."""
    _check_names(extras)
    state = {}
    for name, options in extras.items():
        rng, key = jax.random.split(rng)
        if name == "spcl":
            state[name] = spcl_init(key, num_classes=num_classes, dim=embed_dim,
                                    pool_size=int(options.get("pool_size", 512)))
        elif name == "apcl":
            state[name] = apcl_init(key, num_classes=num_classes, dim=embed_dim)
    return state


class _Sigmas(nn.Module):
    names: tuple[str, ...]

    @nn.compact
    def __call__(self):
        return {k: self.param(k, nn.initializers.zeros, ()) for k in self.names}


class ExtraLossHeads(nn.Module):
    """The trainable parameters of the extra losses: ``frl`` (:class:`SimSiamHeads`, when
    ``frl``) and ``uncertainty/{name}`` (one ``log_sigma`` per name of ``loss_names``, initialised
    0, i.e. sigma 1). ``module(fused (B, F), modality_features (B, sum D_m))`` returns
    ``{"frl": similarity, "uncertainty": {name: log_sigma}}`` for the parts it has; a model may
    hold it as a submodule, or :func:`init_loss_params` gives its parameters alone."""

    frl: bool = False
    loss_names: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, fused, modality_features):
        out = {}
        if self.frl:
            out["frl"] = SimSiamHeads(name="frl")(fused, modality_features)
        if self.loss_names:
            out["uncertainty"] = _Sigmas(tuple(self.loss_names), name="uncertainty")()
        return out


def init_loss_params(extras: Mapping, *, fused_dim: int, input_dims: Mapping[str, int], rng,
                     combine: str = "sum", loss_names: Sequence[str] = ()) -> dict:
    """Parameters of :class:`ExtraLossHeads` for the configured extras: ``{"frl": ...}`` (when
    ``frl`` is configured and there are two or more modalities) and, with
    ``combine="uncertainty"``, ``{"uncertainty": {name: log_sigma}}`` for ``loss_names`` (the
    names later given to :func:`combine_losses`, e.g. ``("classification", "fusion", "spcl")``).
    ``input_dims`` are the sizes of the per-modality ``features``. ``{}`` when nothing is needed."""
    _check_names(extras)
    if combine not in ("sum", "uncertainty"):
        raise ValueError(f"loss.combine: {combine!r} is not 'sum' or 'uncertainty'")
    if combine == "uncertainty" and not loss_names:
        raise ValueError("loss.combine 'uncertainty': give loss_names, the losses to weigh")
    heads = ExtraLossHeads(frl="frl" in extras and len(input_dims) >= 2,
                           loss_names=tuple(loss_names) if combine == "uncertainty" else ())
    if not heads.frl and not heads.loss_names:
        return {}
    fused = jnp.zeros((1, int(fused_dim)), jnp.float32)
    concat = jnp.zeros((1, sum(int(d) for d in input_dims.values())), jnp.float32)
    return dict(heads.init(rng, fused, concat).get("params", {}))


def _skip(name: str, reason: str) -> None:
    # Runs at trace time, so the note is logged once per compilation.
    log.warning("loss %s skipped: %s", name, reason)


def extra_losses(extras: Mapping, state: Mapping, *, embeddings, labels, rng, features: Optional[Mapping] = None,
                 fused=None, logits=None, teacher_logits=None, present_modalities: Optional[Sequence[str]] = None,
                 loss_params: Optional[Mapping] = None) -> tuple:
    """The configured extra losses of one training batch.

    ``embeddings (B, E)``: what the prototype losses contrast (the fused features fed to the
    classifier); ``features``: modality -> ``(B, D_m)`` fusion inputs (CMCL, SCL, FRL); ``fused
    (B, F)`` (FRL; defaults to ``embeddings``); ``logits (B, C)`` and ``teacher_logits (B, C)``
    (DIST); ``present_modalities``: the run's modalities (default: the keys of ``features``);
    ``loss_params`` from :func:`init_loss_params`.

    Returns ``(total, new_state, logs)``: ``total = sum_name weight * value`` float32,
    ``logs[name]`` the unweighted values. Multimodal losses on a unimodal run are skipped with a
    logged note (as is ``cmcl``/``scl`` without its main modality).
    """
    _check_names(extras)
    total = jnp.zeros((), jnp.float32)
    new_state, logs = dict(state), {}
    fused = embeddings if fused is None else fused
    modalities = tuple(present_modalities if present_modalities is not None else (features or {}))
    for name, options in extras.items():
        options = dict(options)
        rng, key = jax.random.split(rng)
        weight = float(options.get("weight", 1.0))
        if name in MULTIMODAL_LOSSES and len(modalities) < 2:
            _skip(name, f"it needs several modalities, this run has {'+'.join(modalities) or 'none'}")
            continue
        if name == "spcl":
            if name not in state:
                raise KeyError("loss.extras.spcl: no state; create it with init_loss_state")
            value, new_state[name] = spcl_loss(state[name], embeddings, labels, key,
                                               temperature=float(options.get("temperature", 0.08)),
                                               support=int(options.get("support_set_size", 64)),
                                               decoupled=bool(options.get("decoupled", False)))
        elif name == "apcl":
            if name not in state:
                raise KeyError("loss.extras.apcl: no state; create it with init_loss_state")
            value, new_state[name] = apcl_loss(state[name], embeddings, labels,
                                               temperature=float(options.get("temperature", 0.08)),
                                               alpha=float(options.get("alpha", 0.5)),
                                               gamma=float(options.get("gamma", 0.99)))
        elif name in ("cmcl", "scl"):
            main = options.get("main_modal", "T")
            if main not in modalities:
                _skip(name, f"its main modality {main} is not in this run ({'+'.join(modalities)})")
                continue
            sizes = {m: int(features[m].shape[-1]) for m in modalities}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"loss {name}: compares the modalities' features, which need one size, got "
                                 f"{sizes}; map them to one size with --config.fusion.project_inputs=N")
            value = cmcl_loss({m: features[m] for m in modalities}, main=main,
                              temperature=float(options.get("temperature", 1.0)), stop_gradient=name == "cmcl")
        elif name == "frl":
            if not loss_params or "frl" not in loss_params:
                raise KeyError("loss.extras.frl: no parameters; create them with init_loss_params and pass "
                               "loss_params")
            concat = jnp.concatenate([jnp.asarray(features[m], jnp.float32) for m in modalities], axis=-1)
            value = reconstruction_loss(loss_params["frl"], fused, concat, alpha=float(options.get("alpha", 1.0)),
                                        sign=options.get("sign", "simsiam"))
        elif name == "dist":
            if teacher_logits is None or logits is None:
                raise ValueError("loss.extras.dist: needs logits and teacher_logits (the frozen teacher's logits "
                                 "for the batch)")
            value = dist_loss(logits, teacher_logits, temperature=float(options.get("temperature", 4.0)),
                              beta=float(options.get("beta", 1.0)), gamma=float(options.get("gamma", 1.0)))
        logs[name] = jnp.asarray(value, jnp.float32)
        total = total + weight * logs[name]
    return total, new_state, logs
