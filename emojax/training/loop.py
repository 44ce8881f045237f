"""The epoch loop: :func:`fit` trains (or resumes) one run and scores its selected epoch once.

Read top to bottom, ``fit`` is the recipe: data -> features -> model -> optimizer -> resume ->
epochs (train, score dev, checkpoint, early stop) -> best epoch -> dev and test scored once.
Each epoch's curves go to the run's TensorBoard events (:mod:`emojax.training.events`).

Around it: the checks that run before any work (config, paths, the run's data record), the lock
that keeps one process per run directory, and the replay of progress when a run resumes from an
older training state than its progress file names.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import pathlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.runs import store
from emojax.data.types import inverse_frequency_weights
from emojax.model.dialogue import check_context_run
from emojax.evaluation import score, scores_summary, write_meta, write_results
from emojax.files import folder_problem, write_problem
from emojax.progress import progress_bar, write_line
from emojax.training.batches import train_batches
from emojax.training.dialogue_batches import DialogueBatches
from emojax.training.distillation import load_teacher, transfer_matching
from emojax.training.events import RunEvents, as_floats
from emojax.training.parallel import data_parallel
from emojax.training.preparation import (DATA_RECORD, check_data_record, check_dev_split, load_data, prepare,
                                         tuned_features)
from emojax.training.state import (best_target, init_state, learning_rate_schedule, make_optimizer,
                                   trainable_tree, usable_extras)
from emojax.training.steps import make_eval_step, make_train_step

log = logging.getLogger(__name__)


class DivergedError(config_lib.ConfigError, FloatingPointError):
    """The training loss stopped being finite; the message names the epoch, the step and the
    learning rate. Nothing of the epoch is saved, so the run resumes from its last finished one."""


def run_category(category: str, teacher) -> str:
    """The run's category: ``distillation`` with a teacher (and only then)."""
    if teacher is not None:
        return "distillation"
    if category == "distillation":
        raise config_lib.ConfigError("a distillation run needs a teacher run directory (--teacher=RUN_DIR)")
    return category


def check_run_paths(cfg, workdir: str | pathlib.Path, run_dir: pathlib.Path) -> None:
    """Refuse, before anything is computed, folders that cannot be written: the workdir, the run
    directory, the feature cache or the demo dataset's folder being (under) a file, or read-only,
    would otherwise fail only once the features are computed."""
    workdir = pathlib.Path(workdir)
    problem = folder_problem(workdir) or folder_problem(run_dir)
    if problem:
        raise ckpt_lib.CheckpointError(f"workdir: {problem}; give a folder for the runs (it is created if missing)")
    problem = folder_problem(cfg.cache.dir or workdir / "cache" / "features")
    if problem and cfg.cache.dir:
        raise config_lib.ConfigError(f"cache.dir: {problem}; give a folder for the feature cache, or leave it "
                                     "empty for WORKDIR/cache/features")
    if problem:
        raise ckpt_lib.CheckpointError(f"workdir: {problem}; the feature cache goes there: move the file or set "
                                       "cache.dir")
    path = pathlib.Path(cfg.dataset.path)
    if cfg.dataset.get("generate"):
        problem = folder_problem(path)
        if problem:
            raise config_lib.ConfigError(f"dataset.path: {problem}; the demo dataset is generated there: "
                                         "give a new or empty folder")
    elif path.exists() and not path.is_dir():
        raise config_lib.ConfigError(f"dataset.path: {path} is a file; give the dataset's folder")
    # Read-only folders (a mount, missing permission) fail the same way, only later: checked by a write.
    problem = write_problem(run_dir)
    if problem:
        raise ckpt_lib.CheckpointError(f"workdir: {problem}; the run directory {run_dir} is written there: give "
                                       "a --workdir that can be written")
    cache_root = cfg.cache.dir or workdir / "cache" / "features"
    problem = write_problem(cache_root)
    if problem:
        what = "cache.dir" if cfg.cache.dir else "workdir"
        raise config_lib.ConfigError(f"{what}: {problem}; the feature cache {cache_root} is written during the run: "
                                     "give a folder that can be written")


def _check_same_config(cfg, run_dir: pathlib.Path) -> None:
    """Refuse a run directory that holds a run of another config (a hash collision of the
    directory name, or a config edited by hand)."""
    path = run_dir / "config.json"
    if path.exists():
        old = config_lib.load_config(path)
        if config_lib.config_hash(old) != config_lib.config_hash(cfg):
            raise ckpt_lib.CheckpointError(f"{path}: this run directory holds a run of another config "
                                           f"(hash {config_lib.config_hash(old)}, not {config_lib.config_hash(cfg)})")


def _one_process_per_run(fit_fn: Callable[..., pathlib.Path]) -> Callable[..., pathlib.Path]:
    """``fit`` holding its run directory's lock (:class:`emojax.runs.checkpoint.RunLock`) from before
    any work to the end, after the cheap checks of the config and paths: a second identical
    command is refused at once, naming the holder, instead of writing the same checkpoints. In a
    multi-host run process 0 holds it for all."""
    @functools.wraps(fit_fn)
    def locked(cfg, workdir: str | pathlib.Path, *, category: str = "training", max_epochs: Optional[int] = None,
               teacher: Optional[str | pathlib.Path] = None) -> pathlib.Path:
        config_lib.validate(cfg)
        check_context_run(cfg)
        run_dir = config_lib.run_dir(cfg, workdir, run_category(category, teacher))
        check_run_paths(cfg, workdir, run_dir)
        lock = ckpt_lib.RunLock(run_dir) if jax.process_index() == 0 else contextlib.nullcontext()
        with lock:
            return fit_fn(cfg, workdir, category=category, max_epochs=max_epochs, teacher=teacher)

    return locked


def progress_at(progress: dict, epoch: int, metric: str) -> dict:
    """``progress`` as it stood after ``epoch``: its history cut there, the best epoch and the
    early-stopping count replayed from it. Used when a run resumes from an older training state
    than progress.json names (the newer ones were damaged), so the replayed epochs select and
    stop exactly as the uninterrupted run did."""
    replayed = {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0, "bad_epochs": 0, "finished": False}
    for row in progress["history"][:epoch]:
        replayed["history"].append(row)
        replayed["epoch"] = row["epoch"]
        if row["dev"][metric] > replayed["best_score"]:
            replayed.update(best_epoch=row["epoch"], best_score=row["dev"][metric], bad_epochs=0)
        else:
            replayed["bad_epochs"] += 1
    return {**progress, **replayed}


def learning_rates(cfg, total_steps: int, first_step: int, last_step: int) -> dict[str, list[float]]:
    """Event tag -> the learning rate of each global step ``first_step..last_step``: step ``k``
    is the optimizer's update number ``k - 1`` on the schedule :func:`make_optimizer` builds (the
    fine-tuned encoders' own peak rate too, when they train)."""
    counts = jnp.arange(first_step - 1, last_step)
    rates = {"train/learning_rate": as_floats(learning_rate_schedule(cfg, total_steps)(counts))}
    if cfg.mode != "frozen":
        rates["train/encoder_learning_rate"] = as_floats(
            learning_rate_schedule(cfg, total_steps, cfg.finetune.lr)(counts))
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


@_one_process_per_run
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
    started again on other data (another folder, a changed CSV) it raises
    :class:`emojax.training.preparation.DataChangedError` before anything is computed or written,
    finished or not.
    """
    category = run_category(category, teacher)
    if teacher is not None and "dist" not in cfg.loss.extras:
        raise config_lib.ConfigError("loss: a distillation run needs the dist loss; add it, e.g. loss=focal+dist")
    # -- data, features, model ------------------------------------------------------------
    # The data (CSV files and media) is checked against the run's record, and the splits model
    # selection needs are checked, before the (costly) features are computed.
    dataset = load_data(cfg)
    data = check_data_record(cfg, config_lib.run_dir(cfg, workdir, category), dataset)
    check_dev_split(cfg, dataset)
    prep = prepare(cfg, workdir, category, dataset=dataset)
    run_dir = prep.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, run_dir)
    primary = jax.process_index() == 0  # in a multi-host run only process 0 writes files
    if primary:
        config_lib.save_config(cfg, run_dir / "config.json")
        if not (run_dir / DATA_RECORD).exists():  # a new run, or one from before runs recorded their data
            ckpt_lib.write_json_atomic(run_dir / DATA_RECORD, data)
        write_meta(prep)
        store.link_run_encoders(run_dir, prep.featurizer, workdir)
    train_data, dev_data = prep.features["train"], prep.features["dev"]
    distill = load_teacher(teacher, prep, workdir) if teacher is not None else None
    if distill is not None and distill.model.context is not None:
        raise config_lib.ConfigError(f"{teacher}: the teacher run has a dialogue context head (model.context); "
                                     "its logits need whole dialogues, which distillation batches are not")

    # -- optimizer and state --------------------------------------------------------------
    batch_size = min(int(cfg.train.batch_size), len(train_data))
    parallel = data_parallel(cfg)
    if prep.model.context is not None:
        # Dialogue batches of train.batch_size padded slots (emojax.training.dialogue_batches);
        # the schedule needs their count before the first step.
        dialogue_batches = DialogueBatches(train_data, int(cfg.train.batch_size), int(cfg.seed),
                                           parallel.count if parallel is not None else 1)
        epoch_steps = {e: dialogue_batches.steps(e) for e in range(1, int(cfg.train.epochs) + 1)}
        epoch_batches = dialogue_batches.batches
    else:
        steps = max(1, len(train_data) // batch_size)
        epoch_steps = {e: steps for e in range(1, int(cfg.train.epochs) + 1)}
        epoch_batches = functools.partial(train_batches, train_data, batch_size, int(cfg.seed))
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
    class_weights = None
    if cfg.loss.classification == "weighted":
        class_weights = inverse_frequency_weights(train_data.labels, len(prep.class_names))
    # Multi-device: every output replicated, so each process reads the same numbers.
    outputs = {} if parallel is None else {"out_shardings": parallel.replicated}
    train_step = jax.jit(make_train_step(prep.model, optimizer, loss_kind=cfg.loss.classification,
                                         class_weights=class_weights, extras=extras,
                                         combine=cfg.loss.get("combine", "sum"),
                                         teacher=distill.model if distill is not None else None,
                                         tuning=prep.tuning),
                         donate_argnums=0, **outputs)
    base_kw = {}
    if prep.tuning is not None and prep.tuning.base_args is not None:
        base_kw["encoder_base"] = (prep.tuning.base_args if parallel is None
                                   else parallel.replicate(prep.tuning.base_args))
    teacher_args = (distill.params,) if distill is not None else ()
    if distill is not None and parallel is not None:
        teacher_args = (parallel.replicate(distill.params),)
    if parallel is not None and batch_size % parallel.count:
        raise config_lib.ConfigError(f"train.batch_size: the {len(train_data)} training samples give batches of "
                                     f"{batch_size}, which do not split across {parallel.count} devices")
    eval_step = jax.jit(make_eval_step(prep.model), **outputs)
    eval_batch = int(cfg.train.eval_batch_size)
    metric = cfg.train.select_metric

    # -- resume ---------------------------------------------------------------------------
    checkpoints = ckpt_lib.RunCheckpoints(run_dir, keep_epochs=int(cfg.train.keep_epochs), primary=primary)
    progress = checkpoints.progress() or {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0,
                                          "bad_epochs": 0, "finished": False}
    if progress["epoch"] > 0 and not progress["finished"]:
        # The newest intact state: damaged ones are moved aside (logged) and the run replays the
        # epochs after the one it resumes from. A finished run needs only its best parameters.
        try:
            resumed, state = checkpoints.restore_latest(progress["epoch"], state)
        except ckpt_lib.CheckpointError:
            checkpoints.close()
            raise
        if resumed < progress["epoch"]:
            log.warning("%s: progress.json names epoch %d but its training state is damaged or missing; "
                        "resuming after epoch %d", run_dir, progress["epoch"], resumed)
            progress = progress_at(progress, resumed, metric)
            if primary:
                ckpt_lib.write_json_atomic(checkpoints.progress_path, progress)
        if resumed:
            log.info("resuming %s after epoch %d", run_dir, resumed)
    if parallel is not None:
        state = parallel.replicate(state)
        log.info("data parallel over %d %s devices", parallel.count, parallel.devices[0].platform)
    events = RunEvents(run_dir, first_step=int(state.step) + 1, enabled=primary)

    # -- epochs ---------------------------------------------------------------------------
    epochs_run = 0
    total_epochs = int(cfg.train.epochs)
    while not progress["finished"] and progress["epoch"] < total_epochs:
        if max_epochs is not None and epochs_run >= max_epochs:
            break
        epoch = progress["epoch"] + 1
        start = time.perf_counter()
        losses, grad_norms = [], []
        last_dev = progress["history"][-1]["dev"] if progress["history"] else None
        steps_per_epoch = epoch_steps[epoch]
        bar = progress_bar(epoch_batches(epoch), enabled=bool(cfg.progress),
                           total=steps_per_epoch, desc=f"epoch {epoch}/{total_epochs}", leave=False)
        for batch in bar:
            if distill is not None:
                batch.update(distill.batch(batch["index"]))
            batch.pop("index", None)
            if parallel is not None:
                batch = parallel.shard(batch)
            state, logs = train_step(state, batch, *teacher_args, **base_kw)
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
            checkpoints.close()
            events.close()
            raise DivergedError(f"train.lr: training diverged at epoch {epoch}, step {step} (the loss is "
                                f"{step_losses[bad] if losses else train_loss}); lower train.lr (now {cfg.train.lr}) "
                                "or check the features; the run resumes from its last finished epoch")
        train_seconds = time.perf_counter() - start
        if prep.tuning is not None:
            dev_data = prep.tuning.refresh(prep.features["dev"], state.encoder, eval_batch)
        dev_scores = score(eval_step, state.params, dev_data, len(prep.class_names), eval_batch, parallel)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_loss": train_loss, "dev": scores_summary(dev_scores),
               "seconds": seconds, "steps": int(state.step)}
        if epoch == 1 and progress["epoch"] == 0:
            row["feature_seconds"] = prep.feature_seconds
        improved = dev_scores[metric] > progress["best_score"]
        progress.update(epoch=epoch, history=progress["history"] + [row])
        if improved:
            progress.update(best_epoch=epoch, best_score=dev_scores[metric], bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        if progress["bad_epochs"] >= int(cfg.train.patience) or epoch >= total_epochs:
            progress["finished"] = True
        if cfg.progress and primary:
            write_line(epoch_line(epoch, train_loss, dev_scores, seconds, improved, row.get("feature_seconds")))
        # Before the checkpoint: a run killed in between replays this epoch, and the resumed
        # run's events file hides these points (its purge step), so none is lost or doubled.
        if events.enabled and losses:
            last_step = int(row["steps"])
            events.train_epoch(epoch=epoch, last_step=last_step, losses=as_floats(jax.device_get(losses)),
                               learning_rates=learning_rates(cfg, total_steps, last_step - len(losses) + 1,
                                                             last_step),
                               grad_norms=(None if grad_norms[0] is None
                                           else as_floats(jax.device_get(grad_norms))),
                               epoch_loss=train_loss, steps_per_second=len(losses) / max(train_seconds, 1e-9))
            events.dev(last_step, row["dev"])
            events.flush()
        checkpoints.save_epoch(epoch, state, progress,
                               best_params=best_target(state, prep.tuning) if improved else None)
        epochs_run += 1
    events.close()

    if not progress["finished"]:
        checkpoints.close()
        return run_dir

    # -- the selected epoch, scored once on dev and test -----------------------------------
    try:
        best = checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])
    finally:
        checkpoints.close()
    best_params = best
    if prep.tuning is not None:
        best_params = best["params"]
        prep.features = tuned_features(prep, best["encoder"], eval_batch, splits=("dev", "test"))
    write_results(prep, eval_step, best_params, progress, parallel=parallel, write=primary)
    return run_dir
