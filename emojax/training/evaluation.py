"""Scoring and results: class probabilities, scores, a run's results files, a finished run rebuilt.

Kept apart from the epoch loop (:mod:`emojax.training.loop`) so that scoring a finished run
(``launch.evaluate``, inference, benchmarks) needs only the evaluation step and the data, never
the training machinery. The loop calls :func:`write_results` once, on the selected epoch.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Optional

import jax
import numpy as np

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax import metrics as metrics_lib
from emojax.runs.format import FORMAT as RUN_FORMAT
from emojax.runs.records import run_config
from emojax.files import write_bytes_if_changed, write_json_if_changed
from emojax.features.featurizer import FeatureSet, padded_batches
from emojax.training.batches import batch_of
from emojax.training.dialogue_batches import dialogue_batch, dialogue_layout, scoring_plan, scoring_turns
from emojax.training.parallel import DataParallel
from emojax.training.preparation import Prepared, check_data_record, load_data, prepare, tuned_features
from emojax.training.state import best_target, init_state, make_optimizer
from emojax.training.steps import make_eval_step


def predict_proba(eval_step: Callable, params, data: FeatureSet, batch_size: int,
                  parallel: Optional[DataParallel] = None) -> np.ndarray:
    """Class probabilities ``(n, classes)`` for every sample, in batches of ``batch_size`` (the
    last one padded to that size and masked, so one compiled shape serves every batch and padding
    rows never reach the real rows through attention across the batch). With ``parallel``, every
    batch is padded to a multiple of the device count and split across the devices.

    A model with a dialogue context head (``eval_step.dialogue_context``) gets whole dialogues
    instead: :func:`predict_dialogue_proba`."""
    if getattr(eval_step, "dialogue_context", False):
        return predict_dialogue_proba(eval_step, params, data, batch_size, parallel)
    out = []
    for index, padded in padded_batches(len(data), batch_size, parallel.count if parallel is not None else 1):
        batch = batch_of(data, padded)
        mask = np.arange(len(padded)) < len(index)
        if parallel is not None:
            batch, mask = parallel.shard(batch), parallel.shard(mask)
        logits = eval_step(params, batch["features"], batch["present"], mask)
        out.append(np.asarray(jax.nn.softmax(logits, axis=-1))[:len(index)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_dialogue_proba(eval_step: Callable, params, data: FeatureSet, batch_size: int,
                           parallel: Optional[DataParallel] = None) -> np.ndarray:
    """Class probabilities ``(n, classes)`` of a model with a dialogue context head: every
    dialogue of ``data`` (its rows by position; a set without dialogue fields is one dialogue per
    row) scored whole, in dialogue batches of ``batch_size`` padded slots, all of one shape
    (:func:`emojax.training.dialogue_batches.scoring_plan`), rows in ``data``'s order."""
    layout = dialogue_layout(data)
    multiple = parallel.count if parallel is not None else 1
    out = None
    for group in scoring_plan(layout, batch_size, multiple):
        batch = dialogue_batch(data, layout, group, batch_size, multiple, scoring_turns(layout))
        args = (batch["features"], batch["present"], batch["mask"], batch["speakers"])
        if parallel is not None:
            args = parallel.shard(args)
        probs = np.asarray(jax.nn.softmax(eval_step(params, *args), axis=-1))
        if out is None:
            out = np.zeros((len(data), probs.shape[-1]), np.float32)
        out[batch["index"][batch["mask"]]] = probs[batch["mask"]]
    return out if out is not None else np.zeros((0, 0), np.float32)


def score(eval_step: Callable, params, data: FeatureSet, num_classes: int, batch_size: int,
          parallel: Optional[DataParallel] = None) -> dict:
    """The classification scores (accuracy, weighted and macro F1, per class, confusion) of ``data``."""
    probs = predict_proba(eval_step, params, data, batch_size, parallel)
    return metrics_lib.classification_scores(data.labels, probs.argmax(-1), num_classes)


def cross_entropy(probs: np.ndarray, labels) -> float:
    """Mean negative log-probability of the true class, ``probs`` ``(n, classes)``: the dev loss
    beside the dev scores (plain cross entropy, whatever the training loss adds)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return float("nan")
    true = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true, np.finfo(np.float32).tiny))))


def score_with_loss(eval_step: Callable, params, data: FeatureSet, num_classes: int, batch_size: int,
                    parallel: Optional[DataParallel] = None) -> tuple[dict, float]:
    """:func:`score` and the :func:`cross_entropy` of ``data``, from one pass over it."""
    probs = predict_proba(eval_step, params, data, batch_size, parallel)
    return (metrics_lib.classification_scores(data.labels, probs.argmax(-1), num_classes),
            cross_entropy(probs, data.labels))


def scores_summary(scores: dict) -> dict:
    """The headline numbers of ``scores``, as a run's history and a teacher's record keep them."""
    return {k: scores[k] for k in ("accuracy", "weighted_f1", "macro_f1")}


def write_meta(prep: Prepared) -> None:
    """``meta.json`` (class names, input sizes, label, hash, feature statistics, speaker tokens,
    the run format) and the text encoder's preprocessing: what inference needs to rebuild the
    run's inputs."""
    meta = {"class_names": list(prep.class_names), "input_dims": prep.featurizer.dims,
            "label": config_lib.run_label(prep.cfg), "hash": config_lib.config_hash(prep.cfg),
            "feature_stats": prep.feature_stats, "format": RUN_FORMAT}
    text = prep.featurizer.encoders.get("T")
    if text is not None:
        meta["speaker_tokens"] = list(getattr(text, "speaker_tokens", []))
        text.encoder.save_preprocessing(prep.run_dir / "preprocessing" / "T")
    write_json_if_changed(prep.run_dir / "meta.json", meta)


def write_results(prep: Prepared, eval_step: Callable, params, progress: dict, *,
                  parallel: Optional[DataParallel] = None, write: bool = True) -> dict:
    """Score dev and test with ``params``; write results.json, history, tables and plots
    (unless ``write`` is false: the other processes of a multi-host run score, and stay silent)."""
    cfg, run_dir, names = prep.cfg, prep.run_dir, prep.class_names
    results: dict = {"best_epoch": progress["best_epoch"], "label": config_lib.run_label(cfg),
                     "hash": config_lib.config_hash(cfg), "seed": int(cfg.seed), "class_names": list(names)}
    report = [f"# {results['label']}", "",
              f"selected epoch (dev {cfg.train.select_metric}): {progress['best_epoch']}", ""]
    for split in ("dev", "test"):
        if split not in prep.features:
            results[split] = {"scored": False, "reason": f"no {split} split in {cfg.dataset.path}"}
            report += [f"### {split}", "", f"not scored: no {split} split in {cfg.dataset.path}", ""]
            continue
        scores = score(eval_step, params, prep.features[split], len(names), int(cfg.train.eval_batch_size),
                       parallel)
        scores["class_names"] = list(names)
        results[split] = {"scored": True, **scores}
        if not write:
            continue
        metrics_lib.plot_confusion(scores["confusion"], names, run_dir / f"confusion_{split}.png",
                                   title=f"{split}: acc {100 * scores['accuracy']:.2f}, "
                                         f"wF1 {100 * scores['weighted_f1']:.2f}")
        report += [metrics_lib.format_table(scores, names, title=split), "",
                   metrics_lib.format_confusion(scores["confusion"], names), ""]
    if not write:
        return results
    # Each file atomically, and not at all where unchanged (a finished run started again).
    write_json_if_changed(run_dir / "results.json", results)
    write_json_if_changed(run_dir / "history.json", progress["history"])
    metrics_lib.plot_history(progress["history"], run_dir / "history.png", cfg.train.select_metric,
                             label=results["label"], best_epoch=progress["best_epoch"])
    write_bytes_if_changed(run_dir / "metrics.md", "\n".join(report).encode())
    return results


def load_run(run_dir: str | pathlib.Path, workdir: Optional[str | pathlib.Path] = None, *,
             allow_data_change: bool = False):
    """Rebuild a finished run: ``(prep, eval_step, best_params, progress)``.

    Refused (:class:`emojax.runs.checkpoint.CheckpointError`, before any feature is computed)
    when the run's ``config.json`` was edited since training, or when its data (CSV files,
    media) differs from the run's record, unless ``allow_data_change``."""
    run_dir = pathlib.Path(run_dir)
    progress = ckpt_lib.finished_run(run_dir)  # before any model is loaded
    cfg = run_config(run_dir)  # refuses a config edited since training
    cfg.progress = False
    workdir = pathlib.Path(workdir) if workdir else _workdir_of(run_dir)
    dataset = load_data(cfg)
    if not allow_data_change:
        check_data_record(cfg, run_dir, dataset, action="evaluate")
    prep = prepare(cfg, workdir, dataset=dataset, run_dir=run_dir)  # its config checked by run_config
    eval_step = jax.jit(make_eval_step(prep.model))
    optimizer = make_optimizer(cfg, 1)
    state = init_state(prep, optimizer)
    with ckpt_lib.RunCheckpoints(run_dir, keep_epochs=int(cfg.train.keep_epochs)) as checkpoints:
        params = checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])
    if prep.tuning is not None:
        # Every split's tuned features from the fine-tuned encoders of the selected epoch.
        prep.features = tuned_features(prep, params["encoder"], int(cfg.train.eval_batch_size))
        params = params["params"]
    return prep, eval_step, params, progress


def _workdir_of(run_dir: pathlib.Path) -> pathlib.Path:
    """``{workdir}/checkpoints/{category}/...`` -> ``workdir`` (six levels up)."""
    parts = run_dir.resolve().parts
    if "checkpoints" in parts:
        return pathlib.Path(*parts[:len(parts) - 1 - parts[::-1].index("checkpoints")])
    return run_dir.parent
