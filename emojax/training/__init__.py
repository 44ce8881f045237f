"""Training: one job per file.

    state.py         TrainState, the optimizer and learning-rate schedule, the initial state
    steps.py         the jit-compiled pure steps: make_train_step, make_eval_step
    batches.py       epoch order and batches (a pure function of seed and epoch)
    parallel.py      data parallelism over devices with jax.sharding (DataParallel)
    preparation.py   data, features and model of a run (Prepared, prepare); the record of its data
    distillation.py  a finished run as a frozen teacher
    loop.py          fit: resume, epochs, dev selection, the selected epoch scored once
    dialogue_batches.py  batches of whole dialogues for the dialogue-context head
    finetune.py      encoders trained with the head (trainable, LoRA, top layers): stored inputs
    finetune_text.py the text encoders' tuner
    events.py        TensorBoard event files of a run
    distributed.py   multi-host runs on jax.distributed

Scoring and results (predict_proba, score, write_results, load_run) live in
:mod:`emojax.evaluation`.

The names below resolve on first use: importing one light module (``emojax.training.steps``
to score a run) runs this file first, and that must not load the epoch loop with it.
"""
from __future__ import annotations

from emojax import lazy_exports

# Public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    "TrainState": "state",
    "learning_rate_schedule": "state",
    "make_optimizer": "state",
    "trainable_tree": "state",
    "compute_params": "state",
    "best_target": "state",
    "usable_extras": "state",
    "init_state": "state",
    "make_train_step": "steps",
    "make_eval_step": "steps",
    "epoch_order": "batches",
    "batch_of": "batches",
    "train_batches": "batches",
    "DataParallel": "parallel",
    "data_parallel": "parallel",
    "Prepared": "preparation",
    "load_data": "preparation",
    "feature_cache": "preparation",
    "prepare": "preparation",
    "tuned_features": "preparation",
    "DATA_RECORD": "preparation",
    "DataChangedError": "preparation",
    "dataset_files": "preparation",
    "data_record": "preparation",
    "check_data_record": "preparation",
    "Teacher": "distillation",
    "transfer_matching": "distillation",
    "load_teacher": "distillation",
    "fit": "loop",
    "progress_at": "loop",
    "check_run_paths": "loop",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
