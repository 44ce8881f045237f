"""Distillation from a teacher run: the teacher loaded, scored, aligned with the student's data.

A finished run (typically text-only) becomes a frozen teacher: its logits are computed inside the
student's jitted step (:func:`emojax.training.steps.make_train_step`) and feed the ``dist`` loss;
the student starts from the teacher's tensors wherever path and shape match.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.training.evaluation import load_run, score, scores_summary
from emojax.features.featurizer import FeatureSet
from emojax.model.model import EmotionModel
from emojax.progress import write_line
from emojax.training.batches import batch_of
from emojax.training.preparation import Prepared

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Teacher:
    """A finished run used as a frozen teacher: its model, parameters and, for the student's
    training split, its inputs row-aligned with the student's samples."""

    run_dir: pathlib.Path
    model: EmotionModel
    params: Any
    train: FeatureSet  # the teacher's features, in the student's training order of samples
    scores: dict

    def batch(self, index: np.ndarray) -> dict:
        """The teacher's inputs for the student's training rows ``index``."""
        rows = batch_of(self.train, index)
        return {"teacher_features": rows["features"], "teacher_present": rows["present"]}


def transfer_matching(student, teacher) -> tuple[Any, int]:
    """``student`` with every tensor replaced by the teacher's of the same path and shape;
    returns the new tree and how many tensors were copied."""
    flat_teacher = flatten_dict(jax.device_get(dict(teacher)))
    flat = flatten_dict(dict(student))
    copied = 0
    for path, value in flat.items():
        source = flat_teacher.get(path)
        if source is not None and np.shape(source) == np.shape(value):
            flat[path] = jnp.asarray(source, dtype=value.dtype)
            copied += 1
    return unflatten_dict(flat), copied


def load_teacher(teacher_dir, prep: Prepared, workdir) -> Teacher:
    """Load the teacher run, check it fits the student's dataset, score it on dev and test
    (printed, as the suite did) and align its training features with the student's."""
    teacher_dir = pathlib.Path(teacher_dir)
    if not (teacher_dir / "results.json").exists():
        raise ckpt_lib.CheckpointError(f"{teacher_dir}: not a finished run (no results.json); train the teacher first")
    t_prep, t_eval, t_params, _ = load_run(teacher_dir, workdir)
    cfg, t_cfg = prep.cfg, t_prep.cfg
    if (t_cfg.dataset.name, t_cfg.dataset.target) != (cfg.dataset.name, cfg.dataset.target) or \
            tuple(t_prep.class_names) != tuple(prep.class_names):
        raise config_lib.ConfigError(
            f"teacher {teacher_dir}: trained on {t_cfg.dataset.name} ({t_cfg.dataset.target}), "
            f"the student on {cfg.dataset.name} ({cfg.dataset.target}); they must match")
    scores = {}
    for split in ("dev", "test"):
        if split in t_prep.features:
            scores[split] = scores_summary(score(t_eval, t_params, t_prep.features[split], len(t_prep.class_names),
                                                 int(t_cfg.train.eval_batch_size)))
    line = "  ".join(f"{split} acc {100 * v['accuracy']:.2f} wF1 {100 * v['weighted_f1']:.2f}"
                     for split, v in scores.items())
    message = f"teacher {config_lib.run_label(t_cfg)}: {line}"
    log.warning(message)
    if cfg.progress:
        write_line(message)
    student_train, teacher_train = prep.features["train"], t_prep.features["train"]
    position = {uid: i for i, uid in enumerate(teacher_train.uids)}
    missing = [uid for uid in student_train.uids if uid not in position]
    if missing:
        raise config_lib.ConfigError(f"teacher {teacher_dir}: has no training sample {missing[0]} of the student's "
                                     f"dataset ({len(missing)} missing); train the teacher on the same data")
    order = np.array([position[uid] for uid in student_train.uids])
    aligned = FeatureSet({m: v[order] for m, v in teacher_train.features.items()},
                         {m: v[order] for m, v in teacher_train.present.items()},
                         teacher_train.labels[order], list(student_train.uids))
    if jax.process_index() == 0:
        ckpt_lib.write_json_atomic(prep.run_dir / "teacher.json", {"run_dir": str(teacher_dir.resolve()),
                                                               "label": config_lib.run_label(t_cfg),
                                                               "scores": scores})
    return Teacher(teacher_dir, t_prep.model, t_params, aligned, scores)
