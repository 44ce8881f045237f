"""The jit-compiled steps: ``train_step(state, batch) -> (state, logs)`` and
``eval_step(params, features, present) -> logits``.

Both are plain functions of their inputs, built by a closure over the model, the optimizer and the
losses, so ``jax.jit`` compiles each once per batch shape and nothing lives outside the state.
Scoring needs only :func:`make_eval_step`, which is why it lives apart from the epoch loop.

A model with a dialogue context head trains on dialogue batches
(:mod:`emojax.training.dialogue_batches`): padded rows, marked by the batch's ``mask``, stay out
of the loss (:func:`masked_classification_loss`).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax.model import losses as losses_lib
from emojax.model.model import EmotionModel
from emojax.training.state import TrainState, compute_params, trainable_tree


def masked_classification_loss(kind: str, logits, labels, class_weights, mask, label_smoothing: float = 0.0):
    """The classification loss of ``kind`` over the rows ``mask (B,) bool`` marks: what
    :func:`emojax.model.losses.classification_loss` gives for those rows alone (the mean weighted
    by ``class_weights[label]`` when given, which ``weighted`` needs; ``focal``: gamma 2; the
    target smoothed by ``label_smoothing``), ``(B, C), (B,) -> ()`` float32."""
    if kind not in losses_lib.CLASSIFICATION and kind != "weight":
        raise ValueError(f"loss.classification: unknown kind {kind!r}; choose one of "
                         f"{', '.join(losses_lib.CLASSIFICATION)}")
    if kind in ("weighted", "weight") and class_weights is None:
        raise ValueError("loss.classification 'weighted' needs class_weights (1 / class frequency of the "
                         "training split)")
    per_row = losses_lib.classification_per_sample(kind, logits, labels, label_smoothing)
    weights = jnp.asarray(mask, jnp.float32)
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, jnp.float32)[labels]
    # max(.., tiny): a batch without real rows (never built, but traced alike) gives 0, not NaN.
    return (per_row * weights).sum() / jnp.maximum(weights.sum(), jnp.finfo(jnp.float32).tiny)


def _grad_without_placeholders(loss_fn: Callable, trainable: dict):
    """``jax.value_and_grad(loss_fn, has_aux=True)(trainable)`` with the model's modality
    placeholders (``placeholder_*``) held fixed: their gradient is given as zeros."""
    fixed = {k: v for k, v in trainable["model"].items() if k.startswith("placeholder_")}
    free = {**trainable, "model": {k: v for k, v in trainable["model"].items() if k not in fixed}}
    out, grads = jax.value_and_grad(lambda t: loss_fn({**t, "model": {**t["model"], **fixed}}), has_aux=True)(free)
    return out, {**grads, "model": {**grads["model"], **jax.tree_util.tree_map(jnp.zeros_like, fixed)}}


def make_train_step(model: EmotionModel, optimizer: optax.GradientTransformation, *,
                    loss_kind: str, class_weights: Optional[np.ndarray], extras: dict,
                    combine: str = "sum", teacher: Optional[EmotionModel] = None, tuning=None,
                    label_smoothing: float = 0.0) -> Callable:
    """``train_step(state, batch[, teacher_params][, encoder_base=...]) -> (state, logs)``; ``batch``
    has features, present, labels (and, with a ``teacher``, ``teacher_features`` /
    ``teacher_present``, the teacher's inputs for the same samples; with ``tuning``, a
    :class:`emojax.training.finetune.Tuning`, ``inputs``: the tuned modalities' features are then computed
    inside the step by the encoders being fine-tuned, from ``state.encoder`` and, for LoRA, the
    frozen base weights ``encoder_base``).

    With a ``teacher`` model the teacher's logits are computed inside the step from
    ``teacher_params`` (frozen: stop-gradient, never optimised) and feed the ``dist`` loss.

    ``logs`` holds the total ``loss``, its parts and ``grad_norm`` (the gradient's global norm
    before clipping).

    ``class_weights (C,)`` weigh the classification loss's rows by their label (``weighted``: 1 /
    class frequency; ``ce`` / ``focal``: ``loss.class_weights``, ``None`` for none);
    ``label_smoothing`` smooths its target (``loss.label_smoothing``). With an optimizer of
    ``train.grad_accum_steps`` > 1 (:func:`emojax.training.state.make_optimizer`) the step
    updates the parameters on every k-th call only; ``state.step`` counts the calls.

    A dialogue batch (``mask`` and ``speakers`` in ``batch``, for a model with a context head)
    gives the model the dialogues' shape and keeps padded rows out of the loss; the extra losses
    and a teacher, which work on the batch as a whole, are refused there.

    The total loss is ``classification + auxiliary (fusion, classifier) + sum_i weight_i extra_i``;
    with ``combine="uncertainty"`` the classification and extra losses are weighed by learned
    sigmas instead (``emojax.model.losses.combine_losses``) and the auxiliary loss is added as is.
    """
    weights = None if class_weights is None else jnp.asarray(class_weights)
    modalities = model.modalities
    wants_inputs = any(name in losses_lib.MULTIMODAL_LOSSES for name in extras)

    def train_step(state: TrainState, batch: dict, teacher_params=None, encoder_base=None):
        dialogues = "mask" in batch
        if dialogues and (extras or teacher is not None):
            raise ValueError(f"dialogue batches: the extra losses ({', '.join(extras) or 'dist'}) and a teacher "
                             "work on the batch as a whole; a run with a context head takes neither")
        layout = {"batch_mask": batch["mask"], "speakers": batch["speakers"]} if dialogues else {}
        rng, dropout_rng, router_rng, modality_rng, loss_rng = jax.random.split(state.rng, 5)
        teacher_logits = None
        if teacher is not None:
            teacher_logits, _, _ = teacher.apply({"params": compute_params(teacher_params, teacher.dtype)},
                                                 batch["teacher_features"], batch["teacher_present"],
                                                 deterministic=True)
            teacher_logits = jax.lax.stop_gradient(teacher_logits)
        rngs = {"dropout": dropout_rng, "router": router_rng, "modality": modality_rng}

        def loss_fn(trainable):
            params, loss_params = compute_params(trainable["model"], model.dtype), trainable["losses"]
            features = batch["features"]
            if tuning is not None:
                # A separate stream (folded from the loss key) keeps frozen runs' RNG unchanged.
                features = {**features, **tuning.features(trainable["encoder"], encoder_base, batch["inputs"],
                                                          batch["present"], rng=jax.random.fold_in(loss_rng, 1),
                                                          deterministic=False)}
            if wants_inputs:
                (logits, aux, fused), inter = model.apply(
                    {"params": params}, features, batch["present"], deterministic=False, rngs=rngs,
                    mutable=["intermediates"], **layout)
                inputs = inter["intermediates"]["fusion_inputs"][0]
            else:
                logits, aux, fused = model.apply({"params": params}, features, batch["present"],
                                                 deterministic=False, rngs=rngs, **layout)
                inputs = None
            if dialogues:
                classification = masked_classification_loss(loss_kind, logits, batch["labels"], weights,
                                                            batch["mask"], label_smoothing)
            else:
                classification = losses_lib.classification_loss(loss_kind, logits, batch["labels"], weights,
                                                                 label_smoothing)
            logs = {"classification": classification, "auxiliary": aux}
            loss_state = state.loss_state
            extra = jnp.zeros((), jnp.float32)
            if extras:
                extra, loss_state, extra_logs = losses_lib.extra_losses(
                    extras, state.loss_state, embeddings=fused, labels=batch["labels"], features=inputs,
                    fused=fused, logits=logits, rng=loss_rng, present_modalities=modalities,
                    loss_params=loss_params, teacher_logits=teacher_logits)
                logs.update(extra_logs)
            if combine == "uncertainty":
                named = {"classification": classification, **{k: logs[k] for k in extras if k in logs}}
                total = losses_lib.combine_losses(named, loss_params) + aux
            else:
                total = classification + aux + extra
            return total, (logs, loss_state)

        trainable = trainable_tree(state, tuning)
        full = jax.value_and_grad(loss_fn, has_aux=True)
        if tuning is None and not model.modality_dropout:
            # A batch with every modality of every sample never reaches the placeholders: their
            # gradient is exactly zero, and holding them fixed spares the backward pass the
            # gradient with respect to the fusion's inputs (a product per input layer).
            complete = jnp.all(jnp.stack([jnp.all(batch["present"][m]) for m in modalities]))
            (loss, (logs, loss_state)), grads = jax.lax.cond(
                complete, lambda t: _grad_without_placeholders(loss_fn, t), full, trainable)
        else:
            (loss, (logs, loss_state)), grads = full(trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        # The gradient's global norm before clipping, for the run's curves: read from the same
        # gradients, it changes neither the loss nor the update.
        logs = {"loss": loss, "grad_norm": optax.global_norm(grads), **logs}
        new_state = state.replace(step=state.step + 1, params=trainable["model"], opt_state=opt_state, rng=rng,
                                  loss_state=loss_state, loss_params=trainable["losses"],
                                  encoder=trainable.get("encoder", state.encoder))
        return new_state, logs

    return train_step


def make_eval_step(model: EmotionModel) -> Callable:
    """``eval_step(params, features, present, batch_mask=None, speakers=None) -> logits (batch,
    classes)``; ``batch_mask`` marks the real rows of a padded batch, ``speakers`` gives a dialogue
    batch's shape (a model with a context head, see :class:`emojax.model.model.EmotionModel`).

    The step's ``dialogue_context`` attribute (kept by ``jax.jit``) says whether the model has a
    context head: scoring (:func:`emojax.training.evaluation.predict_proba`) then gives it whole dialogues."""

    def eval_step(params, features, present, batch_mask=None, speakers=None):
        shape = {} if speakers is None else {"speakers": speakers}
        logits, _, _ = model.apply({"params": compute_params(params, model.dtype)}, features, present,
                                   deterministic=True,
                                   batch_mask=batch_mask, **shape)
        return logits

    eval_step.dialogue_context = model.context is not None
    return eval_step
