"""The training state and what updates it: parameters, optimizer, learning-rate schedule,
gradient accumulation.

``TrainState`` carries everything a step reads and writes (parameters, optimizer state, step,
RNG, the losses' state and parameters, the fine-tuned encoders' trainable parts), so the steps
are pure functions of their inputs and a checkpoint of the state is a complete resume point.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax import config as config_lib
from emojax.model import losses as losses_lib
from emojax.training.batches import batch_of
from emojax.training.preparation import Prepared

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """``params``: the model's; ``loss_params``: the extra losses' own trainable parameters (FRL's
    projectors and predictors, the learned sigmas of uncertainty weighting; ``{}`` when none);
    ``opt_state`` covers both (``{"model": params, "losses": loss_params}``); ``loss_state``: the
    stateful losses' state (SPCL pools, APCL prototypes)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    loss_state: Any
    loss_params: Any = flax.struct.field(default_factory=dict)
    # The fine-tuned encoders' trainable parts by modality (mode trainable: their parameters;
    # lora: the adapters; {} when frozen). The optimizer covers them under "encoder".
    encoder: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(cfg, total_steps: int, peak: Optional[float] = None) -> optax.Schedule:
    """The learning rate of each optimizer update ``0 .. total_steps - 1``: linear warm-up over
    ``train.warmup_ratio`` of the updates to ``peak`` (default ``train.lr``), then, by
    ``train.schedule``, linear decay to zero (``linear``, the default), cosine decay to zero
    (``cosine``) or ``peak`` held (``constant``)."""
    peak = float(cfg.train.lr) if peak is None else float(peak)
    warmup = max(1, int(round(cfg.train.warmup_ratio * total_steps)))
    rest = max(1, total_steps - warmup)
    kind = cfg.train.get("schedule", "linear")
    if kind == "linear":
        after = optax.linear_schedule(peak, 0.0, rest)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(peak, rest)
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise config_lib.ConfigError(f"train.schedule: {kind!r} is not one of {', '.join(config_lib.SCHEDULES)}")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def accumulation(cfg) -> int:
    """``train.grad_accum_steps``: how many batches (train steps) make one optimizer update."""
    return int(cfg.train.get("grad_accum_steps", 1))


def optimizer_updates(cfg, train_steps: int) -> int:
    """The optimizer updates of a run of ``train_steps`` train steps (batches): one per
    ``train.grad_accum_steps`` of them (the schedule's length)."""
    return max(1, int(train_steps) // accumulation(cfg))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` (same empty state, so checkpoints are interchangeable), with
    the clipping applied as one scale factor, ``min(1, max_norm / norm)``, per element.

    Why: optax divides every element by the norm; XLA will not repeat a division in each consumer,
    so the clipped gradient was written out and read back by the two moment updates, two of the
    optimizer's ~13 passes over memory, and the step on CPU is bound by those passes. A product by
    a scalar is repeated in the consumers instead. Without clipping the gradient is untouched; with
    it, ``g * (max_norm / norm)`` may differ from optax's ``g / norm * max_norm`` in the last bit.
    """

    def update(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree_util.tree_map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW on the schedule of :func:`learning_rate_schedule` and global-norm gradient clipping,
    for a run of ``total_steps`` train steps (batches).

    When encoders are fine-tuned (``mode`` trainable / lora) the encoders' part of the
    trainable tree (key ``"encoder"``) gets its own AdamW with peak rate ``finetune.lr`` on the
    same schedule shape; the clipping norm covers everything.

    With ``train.grad_accum_steps`` k > 1 the whole chain is wrapped in ``optax.MultiSteps``: each
    train step adds its gradient to a running mean, and every k-th one clips that mean and
    updates (the steps between leave the parameters as they are), so the schedule counts
    ``total_steps // k`` updates. For losses that average over the batch's samples, k batches
    of b give the update of one batch of k * b (the same samples)."""
    updates = optimizer_updates(cfg, total_steps)
    head = optax.adamw(learning_rate_schedule(cfg, updates), weight_decay=cfg.train.weight_decay)
    if cfg.mode == "frozen":
        chain = optax.chain(clip_by_global_norm(cfg.train.clip_norm), head)
    else:
        encoder = optax.adamw(learning_rate_schedule(cfg, updates, cfg.finetune.lr),
                              weight_decay=cfg.train.weight_decay)

        def labels(tree):
            return {k: jax.tree_util.tree_map(lambda _: "encoder" if k == "encoder" else "head", v)
                    for k, v in tree.items()}

        chain = optax.chain(clip_by_global_norm(cfg.train.clip_norm),
                            optax.multi_transform({"head": head, "encoder": encoder}, labels))
    if accumulation(cfg) == 1:
        return chain
    return optax.MultiSteps(chain, every_k_schedule=accumulation(cfg)).gradient_transformation()


def trainable_tree(state: TrainState, tuning=None) -> dict:
    """What the optimizer updates: the model's and the losses' parameters, and the fine-tuned
    encoders' trainable parts."""
    tree = {"model": state.params, "losses": state.loss_params}
    if tuning is not None:
        tree["encoder"] = state.encoder
    return tree


def compute_params(params, dtype):
    """The parameters as the forward pass uses them: float32 masters cast to ``dtype``
    (bfloat16 mixed precision), so every matrix product runs in ``dtype`` while gradients,
    optimizer state and updates stay float32. LayerNorm, softmax and the losses compute in float32."""
    if jnp.dtype(dtype) == jnp.float32:
        return params
    return jax.tree_util.tree_map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def best_target(state: TrainState, tuning=None):
    """What the best checkpoint holds: the model's parameters, plus the fine-tuned encoders'
    trainable parts (``{"params", "encoder"}``)."""
    return state.params if tuning is None else {"params": state.params, "encoder": state.encoder}


def usable_extras(cfg, modalities, distillation: bool = False) -> dict:
    """The configured extra losses this run can use: those comparing modalities are skipped, with
    a logged note, on a unimodal run (as is CMCL/SCL without its main modality)."""
    extras = cfg.loss.extras.to_dict() if cfg.loss.extras else {}
    usable = {}
    for name, options in extras.items():
        if name in losses_lib.MULTIMODAL_LOSSES and len(modalities) < 2:
            log.warning("loss %s needs several modalities; skipped on this %s run", name, "+".join(modalities))
            continue
        if name in ("cmcl", "scl") and options.get("main_modal", "T") not in modalities:
            log.warning("loss %s: its main modality %s is not in this %s run; skipped", name,
                        options.get("main_modal", "T"), "+".join(modalities))
            continue
        if name == "dist" and not distillation:
            raise config_lib.ConfigError("loss.extras.dist: distillation needs a teacher's logits; give a teacher "
                                         "run (--teacher=RUN_DIR) or remove dist from loss")
        usable[name] = options
    return usable


def init_state(prep: Prepared, optimizer: optax.GradientTransformation, extras: Optional[dict] = None) -> TrainState:
    """The initial training state; ``extras`` are the extra losses this run uses (default: the
    config's)."""
    cfg = prep.cfg
    rng = jax.random.PRNGKey(int(cfg.seed))
    init_rng, state_rng, loss_rng = jax.random.split(rng, 3)
    sample = batch_of(prep.features["train"], np.arange(min(2, len(prep.features["train"]))))
    params = prep.model.init({"params": init_rng}, sample["features"], sample["present"],
                             deterministic=True)["params"]
    extras = cfg.loss.extras.to_dict() if extras is None else extras
    combine = cfg.loss.get("combine", "sum")
    loss_state, loss_params = {}, {}
    if extras or combine != "sum":
        (_, _, fused), inter = prep.model.apply({"params": params}, sample["features"], sample["present"],
                                                deterministic=True, mutable=["intermediates"])
        inputs = inter["intermediates"]["fusion_inputs"][0]
        state_rng_, params_rng = jax.random.split(loss_rng)
        loss_state = losses_lib.init_loss_state(extras, num_classes=len(prep.class_names),
                                                embed_dim=int(fused.shape[-1]), rng=state_rng_)
        loss_params = losses_lib.init_loss_params(
            extras, fused_dim=int(fused.shape[-1]), input_dims={m: int(x.shape[-1]) for m, x in inputs.items()},
            rng=params_rng, combine=combine, loss_names=("classification", *extras))
    encoder, tuning = {}, getattr(prep, "tuning", None)
    if tuning is not None:
        encoder = tuning.init(jax.random.fold_in(init_rng, 1))
        log.info(tuning.describe(encoder))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                       rng=state_rng, loss_state=loss_state, loss_params=loss_params, encoder=encoder)
    return state.replace(opt_state=optimizer.init(trainable_tree(state, tuning)))
