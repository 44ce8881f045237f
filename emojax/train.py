"""Compatibility names for code written against the former single training module.

The code lives in :mod:`emojax.training` (state, steps, batches, data parallelism, preparation,
distillation, the ``fit`` loop) and :mod:`emojax.evaluation` (scoring, results, a finished run
rebuilt). New code imports from there; this module keeps ``from emojax import train`` and
``emojax.train.fit`` working in notebooks and existing scripts.

It re-exports names only: to replace a function for a test, patch the module that defines it
(``emojax.training.loop``, ``emojax.evaluation``, ...), as the code there calls its own names.
"""
from __future__ import annotations

from emojax.runs import checkpoint as ckpt_lib
from emojax.evaluation import load_run, predict_proba, score, scores_summary, write_meta, write_results
from emojax.features.featurizer import FeatureSet
from emojax.training.batches import batch_of, epoch_order, train_batches
from emojax.training.distillation import Teacher, load_teacher, transfer_matching
from emojax.training.loop import check_run_paths, fit, progress_at
from emojax.training.parallel import DataParallel, data_parallel
from emojax.training.preparation import (DATA_RECORD, DataChangedError, Prepared, check_data_record, data_record,
                                         dataset_files, feature_cache, load_data, prepare, tuned_features)
from emojax.training.state import (TrainState, best_target, compute_params, init_state, learning_rate_schedule,
                                   make_optimizer, trainable_tree, usable_extras)
from emojax.training.steps import make_eval_step, make_train_step

# The former private names that notebooks and tests reach for.
_usable_extras = usable_extras
_scores_summary = scores_summary
_write_meta = write_meta

__all__ = [
    "DATA_RECORD", "DataChangedError", "DataParallel", "FeatureSet", "Prepared", "Teacher", "TrainState",
    "batch_of", "best_target", "check_data_record", "check_run_paths", "ckpt_lib", "compute_params",
    "data_parallel", "data_record", "dataset_files", "epoch_order", "feature_cache", "fit", "init_state",
    "learning_rate_schedule", "load_data", "load_run", "load_teacher", "make_eval_step", "make_optimizer",
    "make_train_step", "predict_proba", "prepare", "progress_at", "score", "scores_summary", "train_batches",
    "trainable_tree", "transfer_matching", "tuned_features", "usable_extras", "write_meta", "write_results",
]
