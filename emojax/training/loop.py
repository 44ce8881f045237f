"""The epoch loop: :func:`fit` trains (or resumes) one run and scores its selected epoch once.

Read top to bottom, ``fit`` is the recipe, in named steps: plan the run (config, directory,
folders: :mod:`emojax.training.plan`) -> hold its lock, checkpoints and event files in one
``with`` -> prepare (data record, features, model) -> build the trainer (optimizer, state, steps)
-> resume -> epochs (train, score dev, checkpoint, early stop) -> score the selected epoch once.
Each epoch's curves go to the run's TensorBoard events and trackers (:mod:`emojax.training.events`);
each start that trains is recorded, with where it ran, in ``provenance.json`` (:mod:`emojax.runs.provenance`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax import config as config_lib
from emojax.data.types import inverse_frequency_weights
from emojax.model import losses as losses_lib
from emojax.training.evaluation import score_with_loss, scores_summary, write_meta, write_results
from emojax.progress import progress_bar, write_line
from emojax.runs import checkpoint as ckpt_lib
from emojax.runs import format as format_lib
from emojax.runs import provenance
from emojax.runs import store
from emojax.training.batches import train_batches
from emojax.training.dialogue_batches import DialogueBatches
from emojax.training.distillation import load_teacher, transfer_matching
from emojax.training.events import RunEvents, as_floats, open_trackers
from emojax.training.parallel import DataParallel, data_parallel
from emojax.training.plan import RunPlan, check_same_config, plan_run
from emojax.training.preparation import (DATA_RECORD, Prepared, check_data_record, check_dev_split, load_data,
                                         prepare, tuned_features)
from emojax.training.state import (accumulation, best_target, init_state, learning_rate_schedule, make_optimizer,
                                   optimizer_updates, trainable_tree, usable_extras)
from emojax.training.steps import make_eval_step, make_train_step

log = logging.getLogger(__name__)

NEW_PROGRESS = {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0, "bad_epochs": 0, "finished": False}


class DivergedError(config_lib.ConfigError, FloatingPointError):
    """The training loss stopped being finite; the message names the epoch, the step and the
    learning rate. Nothing of the epoch is saved, so the run resumes from its last finished one."""


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------
def fit(cfg, workdir: str | pathlib.Path, *, category: str = "training", max_epochs: Optional[int] = None,
        teacher: Optional[str | pathlib.Path] = None) -> pathlib.Path:
    """Train (or resume) the run ``cfg`` describes under ``workdir``; returns its run directory.

    ``max_epochs`` stops after that many epochs of this call without finishing the run (used
    to exercise resuming); the run then continues when ``fit`` is called again.

    ``teacher`` (a finished run directory, typically a text-only run) makes this a distillation
    run, placed under ``checkpoints/distillation/``: the teacher is scored and its test metrics
    printed first; the student starts from the teacher's parameters wherever a tensor of the
    same path and shape exists; the teacher's logits, computed inside the jitted step from its
    frozen parameters, feed the configured ``dist`` loss for all student modalities at once.

    The run records its data (``data.json``: :func:`emojax.training.preparation.data_record`);
    started again on other data (another folder, a changed CSV or media file) it raises
    :class:`emojax.training.preparation.DataChangedError` before anything is computed or written,
    finished or not. One process holds the run directory (:class:`emojax.runs.checkpoint.RunLock`)
    from before any work to the end; a second identical command is refused at once.

    A finished run keeps its selected parameters (``best/``) and drops its training state
    (``state/``: :func:`emojax.runs.checkpoint.drop_resume_state`) unless ``train.keep_state``.
    """
    plan = plan_run(cfg, workdir, category=category, teacher=teacher, primary=jax.process_index() == 0)
    format_lib.refuse_earlier(cfg, plan.run_dir, plan.workdir)  # a run of an earlier format: migrate it first
    with contextlib.ExitStack() as run:
        if plan.primary:  # in a multi-host run process 0 holds the lock for all
            run.enter_context(ckpt_lib.RunLock(plan.run_dir))
        prep = prepare_run(plan)
        trainer = build_trainer(plan, prep)
        checkpoints = run.enter_context(ckpt_lib.RunCheckpoints(plan.run_dir, keep_epochs=int(cfg.train.keep_epochs),
                                                                primary=plan.primary))
        progress, state = resume(plan, checkpoints, trainer.init_state)
        if trainer.parallel is not None:
            state = trainer.parallel.replicate(state)
            log.info("data parallel over %d %s devices", trainer.parallel.count, trainer.parallel.devices[0].platform)
        report_to = cfg.get("report_to", "tensorboard")
        events = run.enter_context(RunEvents(plan.run_dir, first_step=int(state.step) + 1,
                                             enabled=plan.primary and report_to == "tensorboard"))
        events.trackers = open_trackers(report_to, plan.run_dir, enabled=plan.primary)
        training = not progress["finished"] and progress["epoch"] < int(cfg.train.epochs)
        if training and plan.primary:  # where this start came from (provenance.json)
            provenance.record_start(plan.run_dir)
            if int(state.step) == 0:  # a new run: named by its label where TensorBoard and trackers show it
                events.describe(config_lib.run_label(cfg), {k: v for k, v in cfg.to_dict().items() if k != "composed"})
        epochs_run, keep_state = 0, bool(cfg.train.get("keep_state", False))
        while not progress["finished"] and progress["epoch"] < int(cfg.train.epochs):
            if max_epochs is not None and epochs_run >= max_epochs:
                break
            progress, state, improved = train_epoch(plan, trainer, state, progress, events)
            # The state of a finished run is only kept with train.keep_state (to train it further).
            checkpoints.save_epoch(progress["epoch"], state, progress,
                                   best_params=best_target(state, prep.tuning) if improved else None,
                                   save_state=keep_state or not progress["finished"])
            epochs_run += 1
        events.close()
        if not progress["finished"]:
            if training and plan.primary:
                provenance.record_end(plan.run_dir, finished=False)
            return plan.run_dir
        best = checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])
        if not keep_state:  # a finished run needs its selected parameters (best/) only
            checkpoints.drop_state()
        scored_before = (plan.run_dir / "results.json").exists()
        results = score_selected(plan, trainer, best, progress)
        if not scored_before and progress["history"] and results["test"].get("scored"):
            events.test(progress["history"][-1]["steps"], scores_summary(results["test"]))  # once, at the end
        events.close()
        if training and plan.primary:
            provenance.record_end(plan.run_dir, finished=True)
    return plan.run_dir


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------
def prepare_run(plan: RunPlan) -> Prepared:
    """The run's data, checked, then its features and model; the run's own files written (config,
    data record, meta, encoder links). The data (CSV files and media) is checked against the run's
    record, and the dev split model selection needs, before the (costly) features are computed."""
    cfg = plan.cfg
    dataset = load_data(cfg)
    data = check_data_record(cfg, plan.run_dir, dataset)
    check_dev_split(cfg, dataset)
    prep = prepare(cfg, plan.workdir, plan.category, dataset=dataset, run_dir=plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    check_same_config(cfg, plan.run_dir)
    if plan.primary:  # in a multi-host run only process 0 writes files
        config_lib.save_config(cfg, plan.run_dir / "config.json")
        if not (plan.run_dir / DATA_RECORD).exists():
            ckpt_lib.write_json_atomic(plan.run_dir / DATA_RECORD, data)
        write_meta(prep)
        store.link_run_encoders(plan.run_dir, prep.featurizer, plan.workdir)
    return prep


@dataclasses.dataclass
class Trainer:
    """What the epochs of one run need besides its state: the prepared run, its optimizer,
    jitted steps, batches and data parallelism, and a distillation teacher."""

    prep: Prepared
    parallel: Optional[DataParallel]
    epoch_steps: dict[int, int]
    epoch_batches: Callable[[int], Any]
    total_steps: int
    init_state: Any
    train_step: Callable
    eval_step: Callable
    step_args: tuple
    step_kwargs: dict
    distill: Any

    @property
    def eval_batch(self) -> int:
        return int(self.prep.cfg.train.eval_batch_size)


def build_trainer(plan: RunPlan, prep: Prepared) -> Trainer:
    """The optimizer over the run's steps, the initial state (from the teacher's parameters where
    they fit), and the jitted train and evaluation steps."""
    cfg = plan.cfg
    distill = load_teacher(plan.teacher, prep, plan.workdir) if plan.teacher is not None else None
    if distill is not None and distill.model.context is not None:
        raise config_lib.ConfigError(f"{plan.teacher}: the teacher run has a dialogue context head (model.context); "
                                     "its logits need whole dialogues, which distillation batches are not")
    train_data = prep.features["train"]
    batch_size = min(int(cfg.train.batch_size), len(train_data))
    parallel = data_parallel(cfg)
    if parallel is not None and batch_size % parallel.count:
        raise config_lib.ConfigError(f"train.batch_size: the {len(train_data)} training samples give batches of "
                                     f"{batch_size}, which do not split across {parallel.count} devices")
    if prep.model.context is not None:
        # Dialogue batches of train.batch_size padded slots (emojax.training.dialogue_batches);
        # the schedule needs their count before the first step.
        dialogue_batches = DialogueBatches(train_data, int(cfg.train.batch_size), int(cfg.seed),
                                           parallel.count if parallel is not None else 1)
        epoch_steps = {e: dialogue_batches.steps(e) for e in range(1, int(cfg.train.epochs) + 1)}
        epoch_batches = dialogue_batches.batches
    else:
        steps, accumulate = max(1, len(train_data) // batch_size), accumulation(cfg)
        if steps < accumulate:
            raise config_lib.ConfigError(f"train.grad_accum_steps: {accumulate} batches make one update, but the "
                                         f"{len(train_data)} training samples give {steps} batch(es) of {batch_size} "
                                         "an epoch; lower it or train.batch_size")
        # Whole updates only: an epoch's batches beyond the last multiple of grad_accum_steps are
        # left out, so k batches of b see the samples k * b would (floor(floor(n / b) / k) updates).
        steps -= steps % accumulate
        epoch_steps = {e: steps for e in range(1, int(cfg.train.epochs) + 1)}

        def epoch_batches(epoch: int):
            return itertools.islice(train_batches(train_data, batch_size, int(cfg.seed), epoch), steps)
    total_steps = sum(epoch_steps.values())
    optimizer = make_optimizer(cfg, total_steps)
    extras = usable_extras(cfg, prep.model.modalities, distillation=distill is not None)
    state = init_state(prep, optimizer, extras)
    if distill is not None:
        params, copied = transfer_matching(state.params, distill.params)
        log.info("student: %d of %d parameter tensors start from the teacher's", copied,
                 len(jax.tree_util.tree_leaves(state.params)))
        state = state.replace(params=params)
        state = state.replace(opt_state=optimizer.init(trainable_tree(state, prep.tuning)))
    class_weights = losses_lib.class_weights(cfg)  # loss.class_weights (None: none given)
    if cfg.loss.classification == "weighted":
        class_weights = inverse_frequency_weights(train_data.labels, len(prep.class_names))
    # Multi-device: every output replicated, so each process reads the same numbers.
    outputs = {} if parallel is None else {"out_shardings": parallel.replicated}
    train_step = jax.jit(make_train_step(prep.model, optimizer, loss_kind=cfg.loss.classification,
                                         class_weights=class_weights, extras=extras,
                                         combine=cfg.loss.get("combine", "sum"),
                                         teacher=distill.model if distill is not None else None,
                                         tuning=prep.tuning,
                                         label_smoothing=float(cfg.loss.get("label_smoothing", 0.0))),
                         donate_argnums=0, **outputs)
    step_kwargs = {}
    if prep.tuning is not None and prep.tuning.base_args is not None:
        step_kwargs["encoder_base"] = (prep.tuning.base_args if parallel is None
                                       else parallel.replicate(prep.tuning.base_args))
    step_args = ()
    if distill is not None:
        step_args = (distill.params if parallel is None else parallel.replicate(distill.params),)
    eval_step = jax.jit(make_eval_step(prep.model), **outputs)
    return Trainer(prep, parallel, epoch_steps, epoch_batches, total_steps, state, train_step, eval_step,
                   step_args, step_kwargs, distill)


def resume(plan: RunPlan, checkpoints: ckpt_lib.RunCheckpoints, state) -> tuple[dict, Any]:
    """The run's progress and state: new, or restored from the newest intact training state.
    Damaged states are moved aside (logged) and the run replays the epochs after the one it
    resumes from. A finished run needs only its best parameters."""
    progress = checkpoints.progress() or dict(NEW_PROGRESS)
    if progress["epoch"] == 0 or progress["finished"]:
        return progress, state
    resumed, state = checkpoints.restore_latest(progress["epoch"], state)
    if resumed < progress["epoch"]:
        log.warning("%s: progress.json names epoch %d but its training state is damaged or missing; "
                    "resuming after epoch %d", plan.run_dir, progress["epoch"], resumed)
        progress = progress_at(progress, resumed, plan.cfg.train.select_metric,
                               float(plan.cfg.train.get("min_delta", 0.0)))
        if plan.primary:
            ckpt_lib.write_json_atomic(checkpoints.progress_path, progress)
    if resumed:
        log.info("resuming %s after epoch %d", plan.run_dir, resumed)
    return progress, state


def train_epoch(plan: RunPlan, trainer: Trainer, state, progress: dict, events: RunEvents) -> tuple[dict, Any, bool]:
    """One epoch: its steps, the dev scores, the selection and early-stopping record, its line and
    its TensorBoard points. Returns ``(progress, state, improved)``; raises
    :class:`DivergedError` when the loss stops being finite (nothing of the epoch is kept)."""
    cfg, prep = plan.cfg, trainer.prep
    epoch, total_epochs = progress["epoch"] + 1, int(cfg.train.epochs)
    start = time.perf_counter()
    losses, grad_norms = [], []
    last_dev = progress["history"][-1]["dev"] if progress["history"] else None
    steps_per_epoch = trainer.epoch_steps[epoch]
    bar = progress_bar(trainer.epoch_batches(epoch), enabled=bool(cfg.progress),
                       total=steps_per_epoch, desc=f"epoch {epoch}/{total_epochs}", leave=False)
    for batch in bar:
        if trainer.distill is not None:
            batch.update(trainer.distill.batch(batch["index"]))
        batch.pop("index", None)
        if trainer.parallel is not None:
            batch = trainer.parallel.shard(batch)
        state, logs = trainer.train_step(state, batch, *trainer.step_args, **trainer.step_kwargs)
        losses.append(logs["loss"])
        grad_norms.append(logs.get("grad_norm"))
        if len(losses) % 10 == 0 or len(losses) == steps_per_epoch:
            postfix = {"loss": f"{float(np.mean(jax.device_get(losses[-10:]))):.4f}"}
            if last_dev:
                postfix.update(dev_acc=f"{100 * last_dev['accuracy']:.2f}",
                               dev_wf1=f"{100 * last_dev['weighted_f1']:.2f}")
            bar.set_postfix(postfix)
    step_losses = np.asarray(jax.device_get(losses), np.float64)
    train_loss = float(np.mean(step_losses)) if losses else float("nan")
    if not np.isfinite(train_loss):
        bad = int(np.argmin(np.isfinite(step_losses))) if losses else 0
        step = int(state.step) - len(losses) + bad + 1
        raise DivergedError(f"train.lr: training diverged at epoch {epoch}, step {step} (the loss is "
                            f"{step_losses[bad] if losses else train_loss}); lower train.lr (now {cfg.train.lr}) "
                            "or check the features; the run resumes from its last finished epoch")
    train_seconds = time.perf_counter() - start
    dev_data = prep.features["dev"]
    if prep.tuning is not None:
        dev_data = prep.tuning.refresh(dev_data, state.encoder, trainer.eval_batch)
    dev_scores, dev_loss = score_with_loss(trainer.eval_step, state.params, dev_data, len(prep.class_names),
                                           trainer.eval_batch, trainer.parallel)
    seconds = time.perf_counter() - start
    row = {"epoch": epoch, "train_loss": train_loss, "dev": scores_summary(dev_scores), "dev_loss": dev_loss,
           "seconds": seconds, "steps": int(state.step)}
    if epoch == 1 and progress["epoch"] == 0:
        row["feature_seconds"] = prep.feature_seconds
    metric, min_delta = cfg.train.select_metric, float(cfg.train.get("min_delta", 0.0))
    improved = improves(dev_scores[metric], progress["best_score"], min_delta)
    progress = {**progress, "epoch": epoch, "history": progress["history"] + [row]}
    if improved:
        progress.update(best_epoch=epoch, best_score=dev_scores[metric], bad_epochs=0)
    else:
        progress["bad_epochs"] += 1
    stopped = progress["bad_epochs"] >= int(cfg.train.patience) and epoch < total_epochs
    if stopped or epoch >= total_epochs:
        progress["finished"] = True
    if cfg.progress and plan.primary:
        write_line(epoch_line(epoch, train_loss, dev_scores, seconds, improved, row.get("feature_seconds")))
    if stopped and plan.primary:
        if cfg.progress:
            write_line(stop_line(epoch, metric, min_delta, progress))
        else:
            log.info(stop_line(epoch, metric, min_delta, progress))
    # Before the checkpoint: a run killed in between replays this epoch, and the resumed
    # run's events file hides these points (its purge step), so none is lost or doubled.
    if events.writes and losses:
        last_step = int(row["steps"])
        events.train_epoch(epoch=epoch, last_step=last_step, losses=as_floats(jax.device_get(losses)),
                           learning_rates=learning_rates(cfg, trainer.total_steps, last_step - len(losses) + 1,
                                                         last_step),
                           grad_norms=(None if grad_norms[0] is None else as_floats(jax.device_get(grad_norms))),
                           epoch_loss=train_loss, steps_per_second=len(losses) / max(train_seconds, 1e-9))
        events.dev(last_step, row["dev"], row["dev_loss"])
        events.flush()
    return progress, state, improved


def score_selected(plan: RunPlan, trainer: Trainer, best, progress: dict) -> dict:
    """The selected epoch's parameters scored once on dev and test; the results files written."""
    prep = trainer.prep
    params = best
    if prep.tuning is not None:
        params = best["params"]
        prep.features = tuned_features(prep, best["encoder"], trainer.eval_batch, splits=("dev", "test"))
    return write_results(prep, trainer.eval_step, params, progress, parallel=trainer.parallel, write=plan.primary)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def improves(value: float, best: float, min_delta: float = 0.0) -> bool:
    """Whether a dev score ``value`` improves on ``best`` by more than ``min_delta``
    (``train.min_delta``): such an epoch is selected and restarts the patience count."""
    return value - best > min_delta


def stop_line(epoch: int, metric: str, min_delta: float, progress: dict) -> str:
    """The line saying that, and why, a run stopped before its last epoch."""
    by = f" by more than {min_delta:g}" if min_delta else ""
    return (f"stopped early at epoch {epoch}: dev {metric} did not improve{by} for {progress['bad_epochs']} "
            f"epochs (best {100 * progress['best_score']:.2f} at epoch {progress['best_epoch']})")


def progress_at(progress: dict, epoch: int, metric: str, min_delta: float = 0.0) -> dict:
    """``progress`` as it stood after ``epoch``: its history cut there, the best epoch and the
    early-stopping count replayed from it. Used when a run resumes from an older training state
    than progress.json names (the newer ones were damaged), so the replayed epochs select and
    stop exactly as the uninterrupted run did."""
    replayed = {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0, "bad_epochs": 0, "finished": False}
    for row in progress["history"][:epoch]:
        replayed["history"].append(row)
        replayed["epoch"] = row["epoch"]
        if improves(row["dev"][metric], replayed["best_score"], min_delta):
            replayed.update(best_epoch=row["epoch"], best_score=row["dev"][metric], bad_epochs=0)
        else:
            replayed["bad_epochs"] += 1
    return {**progress, **replayed}


def learning_rates(cfg, total_steps: int, first_step: int, last_step: int) -> dict[str, list[float]]:
    """Event tag -> the learning rate of each global step ``first_step..last_step``: step ``k``
    belongs to the optimizer's update number ``(k - 1) // train.grad_accum_steps`` on the schedule
    :func:`make_optimizer` builds (the fine-tuned encoders' own peak rate too, when they train)."""
    counts = jnp.arange(first_step - 1, last_step) // accumulation(cfg)
    updates = optimizer_updates(cfg, total_steps)
    rates = {"train/learning_rate": as_floats(learning_rate_schedule(cfg, updates)(counts))}
    if cfg.mode != "frozen":
        rates["train/encoder_learning_rate"] = as_floats(
            learning_rate_schedule(cfg, updates, cfg.finetune.lr)(counts))
    return rates


def epoch_line(epoch: int, train_loss: float, dev_scores: dict, seconds: float, improved: bool,
               feature_seconds: Optional[float] = None) -> str:
    """The line printed after an epoch; the first epoch of a run also says how long its
    features took (often most of a short run's time, and cached for the next run)."""
    line = (f"epoch {epoch}: loss {train_loss:.4f}  dev acc {100 * dev_scores['accuracy']:.2f}  "
            f"dev wF1 {100 * dev_scores['weighted_f1']:.2f}  ({seconds:.1f}s")
    if feature_seconds is not None:
        line += f"; features {feature_seconds:.1f}s"
    return line + ")" + ("  *" if improved else "")
