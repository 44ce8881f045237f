"""Everything a run needs before its first step: the dataset, its features, the model.

:func:`prepare` is shared by training (:func:`emojax.training.loop.fit`) and by rebuilding a
finished run (:func:`emojax.evaluation.load_run`), so both see the same features and model.

It also keeps the record of what a run was trained on (``data.json``: the dataset folder and the
SHA-256 of its CSV files): resuming or rescoring a run on other data would mix two datasets, so
:func:`check_data_record` refuses it before any feature is computed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.features.cache import FeatureCache
from emojax.data import load_dataset
from emojax.data.context import all_speaker_tokens
from emojax.data.demo import generate_demo
from emojax.data.types import SPLITS
from emojax.model.dialogue import check_context_run
from emojax.features.featurizer import FeatureSet, Featurizer, feature_stats, standardize
from emojax.files import file_sha256
from emojax.training.finetune import Tuning
from emojax.model.model import EmotionModel, build_model
from emojax.training.dialogue_batches import with_dialogues

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prepared:
    """Everything a run needs besides its parameters: data, features, model, steps."""

    cfg: Any
    run_dir: pathlib.Path
    class_names: tuple[str, ...]
    features: dict[str, FeatureSet]
    not_scored: tuple[str, ...]
    featurizer: Featurizer
    model: EmotionModel
    feature_seconds: float
    feature_stats: dict  # modality -> {"mean", "std"} of the training split
    tuning: Any = None  # emojax.training.finetune.Tuning when encoders are fine-tuned


def load_data(cfg):
    """The dataset ``cfg`` names (the demo dataset generated first when ``dataset.generate``)."""
    path = pathlib.Path(cfg.dataset.path)
    if cfg.dataset.generate:
        generate_demo(path, seed=0)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path: {path} does not exist (dataset {cfg.dataset.name}); "
                                f"set --config.dataset.path to the dataset folder")
    return load_dataset(cfg.dataset.kind, str(path), target=cfg.dataset.target,
                        allow_outside_paths=bool(cfg.dataset.get("allow_outside_paths", False)))


def feature_cache(cfg, workdir: pathlib.Path) -> FeatureCache:
    """The feature cache of ``cfg`` (``cache.dir``, default ``workdir/cache/features``)."""
    root = pathlib.Path(cfg.cache.dir) if cfg.cache.dir else pathlib.Path(workdir) / "cache" / "features"
    return FeatureCache(root, host_bytes=int(cfg.cache.host_bytes), device_bytes=int(cfg.cache.device_bytes))


def prepare(cfg, workdir: str | pathlib.Path, category: str = "training") -> Prepared:
    """Validate, load the dataset, compute (or read cached) features and build the model."""
    config_lib.validate(cfg)
    check_context_run(cfg)
    workdir = pathlib.Path(workdir)
    run_dir = config_lib.run_dir(cfg, workdir, category)
    dataset = load_data(cfg)
    cache = feature_cache(cfg, workdir)
    start = time.perf_counter()
    featurizer = Featurizer(cfg, all_speaker_tokens(dataset), cache=cache)
    # Each row's dialogue, position and speaker ride along: a context head's batches are dialogues.
    raw = {name: with_dialogues(featurizer.split_features(split), split) for name, split in dataset.splits.items()}
    feature_seconds = time.perf_counter() - start
    stats = feature_stats(raw["train"])
    features = {name: standardize(data, stats) for name, data in raw.items()}
    for name, split in dataset.splits.items():
        missing = {m: int((~features[name].present[m]).sum()) for m in featurizer.modalities if m != "T"}
        if any(missing.values()):
            log.info("%s: samples without %s", name,
                     ", ".join(f"{m}: {c}/{len(split)}" for m, c in missing.items() if c))
    model = build_model(cfg, featurizer.dims, dataset.num_classes)
    tuning = None
    if cfg.mode != "frozen":
        tuning = Tuning(cfg, featurizer, stats)
        features = {name: tuning.attach(features[name], split, root=cache.inputs_root, progress=featurizer.progress)
                    for name, split in dataset.splits.items()}
    return Prepared(cfg, run_dir, dataset.class_names, features, tuple(dataset.not_scored), featurizer,
                    model, feature_seconds, stats, tuning)


def tuned_features(prep: Prepared, encoder, batch_size: int, splits=None) -> dict[str, FeatureSet]:
    """``prep.features`` with the tuned modalities' features of ``splits`` (default all)
    recomputed by the fine-tuned encoders ``encoder`` (their trainable parts); unchanged for a
    frozen run."""
    if prep.tuning is None:
        return dict(prep.features)
    return {name: prep.tuning.refresh(data, encoder, batch_size) if splits is None or name in splits else data
            for name, data in prep.features.items()}


# ---------------------------------------------------------------------------------------------
# What a run was trained on
# ---------------------------------------------------------------------------------------------
DATA_RECORD = "data.json"

# The CSV files each dataset loader reads (emojax.data.meld / iemocap / sims).
_DATASET_CSVS = {"meld": tuple(f"{split}_sent_emo.csv" for split in SPLITS),
                 "iemocap": tuple(f"IEMOCAP_{split}.csv" for split in SPLITS),
                 "sims": ("label.csv",)}


class DataChangedError(ckpt_lib.CheckpointError):
    """The dataset a run recorded (folder, CSV contents) is not the one given now: resuming would
    mix two datasets' epochs and normalisation statistics, and rescoring a finished run would
    overwrite its results with scores of other data."""


def dataset_files(kind: str, path: str | pathlib.Path) -> list[pathlib.Path]:
    """The CSV files the loader of ``kind`` reads in the dataset folder ``path`` (those present;
    every ``*.csv`` directly in the folder for a kind without a known layout)."""
    path = pathlib.Path(path)
    names = _DATASET_CSVS.get(str(kind))
    if names is None:
        return sorted(p for p in path.glob("*.csv") if p.is_file())
    return [path / name for name in names if (path / name).is_file()]


def data_record(cfg) -> dict:
    """What a run is trained and scored on: the dataset folder (absolute) and the SHA-256 of each
    CSV file its loader reads (``{"path", "kind", "files": {name: sha256}}``)."""
    path = pathlib.Path(cfg.dataset.path).resolve()
    return {"path": str(path), "kind": str(cfg.dataset.kind),
            "files": {p.name: file_sha256(p) for p in dataset_files(cfg.dataset.kind, path)}}


def check_data_record(cfg, run_dir: pathlib.Path) -> dict:
    """The data record of ``cfg``'s dataset now; :class:`DataChangedError` when ``run_dir`` holds
    a record (``data.json``) of other data: another folder, or a CSV file changed, added or
    removed. A run without a record (new, or written before runs recorded their data) passes."""
    current = data_record(cfg)
    record_path = pathlib.Path(run_dir) / DATA_RECORD
    if not record_path.exists():
        return current
    try:
        recorded = json.loads(record_path.read_text())
    except json.JSONDecodeError as err:
        raise ckpt_lib.CheckpointError(f"{record_path}: unreadable ({err}); delete it to record the "
                                       "current data with the next start") from err
    old_path, new_path = recorded.get("path"), current["path"]
    if old_path != new_path:
        raise DataChangedError(f"{record_path}: this run was trained on {old_path}, not {new_path}; give "
                               f"--config.dataset.path={old_path}, or use a new --workdir to train on {new_path}")
    old_files, new_files = recorded.get("files", {}), current["files"]
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name), new_files.get(name)
        if old == new:
            continue
        if old is None:
            change = "is new"
        elif new is None:
            change = "is gone"
        else:
            change = f"has changed (sha256 {old[:12]} in {record_path}, now {new[:12]})"
        raise DataChangedError(f"{pathlib.Path(new_path) / name}: {change} since the run {run_dir} was trained "
                               "on it; restore the data, or use a new --workdir to train on the new data")
    return current
