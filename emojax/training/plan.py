"""A run's plan: everything decided about it before any work, built once and handed down.

:func:`plan_run` validates the config, names the run's category and directory, and refuses
folders that cannot be used (a file where a folder belongs, a read-only mount) before anything is
loaded or computed. :func:`emojax.training.loop.fit` then holds the run's lock, checkpoints and
event files in one ``with`` around the plan's run directory.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from emojax import config as config_lib
from emojax.files import folder_problem, write_problem
from emojax.model.dialogue import check_context_run
from emojax.model.losses import check_loss_config
from emojax.runs import checkpoint as ckpt_lib


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run, decided: its validated config, workdir, category, directory and teacher, and
    whether this process writes the run's files (process 0 of a multi-host run)."""

    cfg: object
    workdir: pathlib.Path
    category: str
    run_dir: pathlib.Path
    teacher: Optional[pathlib.Path]
    primary: bool


def validate_config(cfg) -> None:
    """A whole run config checked before any work, each section by its own registry: the values,
    names, encoders and dataset (:func:`emojax.config.validate`), the losses
    (:func:`emojax.model.losses.check_loss_config`) and the dialogue context head
    (:func:`emojax.model.dialogue.check_context_run`); a ``ConfigError`` names the key at fault."""
    config_lib.validate(cfg)
    check_loss_config(cfg)
    check_context_run(cfg)


def plan_run(cfg, workdir: str | pathlib.Path, *, category: str = "training",
             teacher: Optional[str | pathlib.Path] = None, primary: bool = True) -> RunPlan:
    """The plan of the run ``cfg`` describes under ``workdir``, after every check that needs no
    data: the config's values, a distillation run's loss, the context head, the folders."""
    category = run_category(category, teacher)
    if teacher is not None and "dist" not in cfg.loss.extras:
        raise config_lib.ConfigError("loss: a distillation run needs the dist loss; add it, e.g. loss=focal+dist")
    validate_config(cfg)
    workdir = pathlib.Path(workdir)
    run_dir = config_lib.run_dir(cfg, workdir, category)
    check_run_paths(cfg, workdir, run_dir)
    return RunPlan(cfg, workdir, category, run_dir, pathlib.Path(teacher) if teacher is not None else None,
                   primary)


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


def check_same_config(cfg, run_dir: pathlib.Path) -> None:
    """Refuse a run directory that holds a run of another config (a hash collision of the
    directory name, or a config edited by hand)."""
    path = run_dir / "config.json"
    if path.exists():
        old = config_lib.load_config(path)
        if config_lib.config_hash(old) != config_lib.config_hash(cfg):
            raise ckpt_lib.CheckpointError(f"{path}: this run directory holds a run of another config "
                                           f"(hash {config_lib.config_hash(old)}, not {config_lib.config_hash(cfg)})")
