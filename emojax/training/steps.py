"""The jit-compiled steps: ``train_step(state, batch) -> (state, logs)`` and
``eval_step(params, features, present) -> logits``.

Both are plain functions of their inputs, built by a closure over the model, the optimizer and the
losses, so ``jax.jit`` compiles each once per batch shape and nothing lives outside the state.
Scoring needs only :func:`make_eval_step`, which is why it lives apart from the epoch loop.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax import losses as losses_lib
from emojax.model import EmotionModel
from emojax.training.state import TrainState, compute_params, trainable_tree


def make_train_step(model: EmotionModel, optimizer: optax.GradientTransformation, *,
                    loss_kind: str, class_weights: Optional[np.ndarray], extras: dict,
                    combine: str = "sum", teacher: Optional[EmotionModel] = None, tuning=None) -> Callable:
    """``train_step(state, batch[, teacher_params][, encoder_base=...]) -> (state, logs)``; ``batch``
    has features, present, labels (and, with a ``teacher``, ``teacher_features`` /
    ``teacher_present``, the teacher's inputs for the same samples; with ``tuning``, a
    :class:`emojax.finetune.Tuning`, ``inputs``: the tuned modalities' features are then computed
    inside the step by the encoders being fine-tuned, from ``state.encoder`` and, for LoRA, the
    frozen base weights ``encoder_base``).

    With a ``teacher`` model the teacher's logits are computed inside the step from
    ``teacher_params`` (frozen: stop-gradient, never optimised) and feed the ``dist`` loss.

    ``logs`` holds the total ``loss``, its parts and ``grad_norm`` (the gradient's global norm
    before clipping).

    The total loss is ``classification + auxiliary (fusion, classifier) + sum_i weight_i extra_i``;
    with ``combine="uncertainty"`` the classification and extra losses are weighed by learned
    sigmas instead (``emojax.losses.combine_losses``) and the auxiliary loss is added as is.
    """
    weights = None if class_weights is None else jnp.asarray(class_weights)
    modalities = model.modalities
    wants_inputs = any(name in losses_lib.MULTIMODAL_LOSSES for name in extras)

    def train_step(state: TrainState, batch: dict, teacher_params=None, encoder_base=None):
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
                    mutable=["intermediates"])
                inputs = inter["intermediates"]["fusion_inputs"][0]
            else:
                logits, aux, fused = model.apply({"params": params}, features, batch["present"],
                                                 deterministic=False, rngs=rngs)
                inputs = None
            classification = losses_lib.classification_loss(loss_kind, logits, batch["labels"], weights)
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
        (loss, (logs, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
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
    """``eval_step(params, features, present, batch_mask=None) -> logits (batch, classes)``;
    ``batch_mask`` marks the real rows of a padded batch."""

    def eval_step(params, features, present, batch_mask=None):
        logits, _, _ = model.apply({"params": compute_params(params, model.dtype)}, features, present,
                                   deterministic=True,
                                   batch_mask=batch_mask)
        return logits

    return eval_step
