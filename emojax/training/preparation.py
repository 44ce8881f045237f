"""Everything a run needs before its first step: the dataset, its features, the model.

:func:`prepare` is shared by training (:func:`emojax.training.loop.fit`) and by rebuilding a
finished run (:func:`emojax.training.evaluation.load_run`), so both see the same features and model.

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
from typing import Any, Optional

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.features.cache import FeatureCache
from emojax.data import DATASETS, load_dataset
from emojax.data.context import all_speaker_tokens
from emojax.data.csvutil import warn_missing_media
from emojax.data.media import media_file
from emojax.data.demo import generate_demo
from emojax.features.featurizer import FeatureSet, Featurizer, feature_stats, standardize
from emojax.files import file_sha256
from emojax.training.finetune import Tuning
from emojax.training.plan import validate_config
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
    dataset = load_dataset(cfg.dataset.kind, str(path), target=cfg.dataset.target,
                           allow_outside_paths=bool(cfg.dataset.get("allow_outside_paths", False)))
    warn_missing_media(dataset, config_lib.modalities(cfg))  # the media this run reads only
    return dataset


def check_dev_split(cfg, dataset) -> None:
    """Model selection and early stopping score the dev split after every epoch: a dataset whose
    dev split is missing or holds no rows is refused before any feature is computed."""
    dev = dataset.splits.get("dev")
    if dev is None or not len(dev):
        described = DATASETS.get(str(cfg.dataset.kind))
        where = described.dev_source if described is not None else "the dev split"
        raise config_lib.ConfigError(f"dataset.path: {cfg.dataset.path} has no dev rows ({where} missing or "
                                     "empty); training selects its epoch on dev: add the dev split")


def feature_cache(cfg, workdir: pathlib.Path) -> FeatureCache:
    """The feature cache of ``cfg`` (``cache.dir``, default ``workdir/cache/features``)."""
    root = pathlib.Path(cfg.cache.dir) if cfg.cache.dir else pathlib.Path(workdir) / "cache" / "features"
    return FeatureCache(root, host_bytes=int(cfg.cache.host_bytes), device_bytes=int(cfg.cache.device_bytes))


def prepare(cfg, workdir: str | pathlib.Path, category: str = "training", *, dataset=None,
            run_dir: Optional[pathlib.Path] = None) -> Prepared:
    """Load the dataset (unless given, as :func:`load_data` returns it), compute (or read cached)
    features and build the model. Given the ``run_dir`` of a plan (:func:`emojax.training.plan.plan_run`,
    which validated ``cfg``), the config is not checked again; otherwise it is validated first."""
    workdir = pathlib.Path(workdir)
    if run_dir is None:
        validate_config(cfg)
        run_dir = config_lib.run_dir(cfg, workdir, category)
    dataset = load_data(cfg) if dataset is None else dataset
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

_MEDIA_FIELDS = {"A": "audio", "V": "video"}  # modality -> the Sample field naming its media file

class DataChangedError(ckpt_lib.CheckpointError):
    """The dataset a run recorded (folder, CSV contents) is not the one given now: resuming would
    mix two datasets' epochs and normalisation statistics, and rescoring a finished run would
    overwrite its results with scores of other data."""


def dataset_files(kind: str, path: str | pathlib.Path) -> list[pathlib.Path]:
    """The CSV files the loader of ``kind`` reads in the dataset folder ``path``, as its description
    (:data:`emojax.data.DATASETS`) names them: those present, each once, in split order; every
    ``*.csv`` directly in the folder for a kind not registered."""
    path = pathlib.Path(path)
    described = DATASETS.get(str(kind))
    if described is None:
        return sorted(p for p in path.glob("*.csv") if p.is_file())
    return [p for p in dict.fromkeys(described.files(path).values()) if p.is_file()]


def media_record(cfg, dataset) -> dict[str, list[int]]:
    """The media files ``cfg``'s modalities read from ``dataset`` (a loaded
    :class:`emojax.data.DatasetSplits`): path (relative to the dataset folder where inside it) ->
    ``[size, mtime_ns]``. Cheap (one ``stat`` per file) and enough to notice a re-encoded or
    replaced file; the feature cache keys rows by the files' content in any case."""
    root = pathlib.Path(dataset.root).resolve()
    used = [m for m in config_lib.modalities(cfg) if m in _MEDIA_FIELDS]
    record: dict[str, list[int]] = {}
    for split in dataset.splits.values():
        for sample in split.samples:
            for modality in used:
                ref = getattr(sample, _MEDIA_FIELDS[modality])
                if ref is None:
                    continue
                path = pathlib.Path(media_file(ref)).resolve()
                name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
                if name in record:
                    continue
                try:
                    stat = path.stat()
                except OSError:  # gone since the loader looked: recorded as absent
                    continue
                record[name] = [int(stat.st_size), int(stat.st_mtime_ns)]
    return record


def data_record(cfg, dataset=None) -> dict:
    """What a run is trained and scored on: the dataset folder (absolute), the SHA-256 of each
    CSV file its loader reads and, given the loaded ``dataset``, the size and modification time
    of each media file its modalities read (``{"path", "kind", "files": {name: sha256},
    "media": {name: [size, mtime_ns]}}``)."""
    path = pathlib.Path(cfg.dataset.path).resolve()
    record = {"path": str(path), "kind": str(cfg.dataset.kind),
              "files": {p.name: file_sha256(p) for p in dataset_files(cfg.dataset.kind, path)}}
    if dataset is not None:
        record["media"] = media_record(cfg, dataset)
    return record


def check_data_record(cfg, run_dir: pathlib.Path, dataset=None, *, action: str = "train") -> dict:
    """The data record of ``cfg``'s dataset now; :class:`DataChangedError` when ``run_dir`` holds
    a record (``data.json``) of other data: another folder, a CSV file changed, added or removed,
    or (given the loaded ``dataset``, and where the record has them) a media file changed in size
    or modification time, added or removed. A run without a record (new, or written before runs
    recorded their data) passes. ``action`` names what was asked in the message (``train``,
    ``evaluate``)."""
    current = data_record(cfg, dataset)
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
                               f"on it; {_WHAT_TO_DO[action]}")
    if "media" in recorded and "media" in current:
        old_media, new_media = recorded["media"], current["media"]
        changed = sorted(name for name in set(old_media) | set(new_media) if old_media.get(name) != new_media.get(name))
        if changed:
            first = changed[0]
            old, new = old_media.get(first), new_media.get(first)
            change = ("is new" if old is None else "is gone" if new is None
                      else f"has changed (size {old[0]} -> {new[0]} bytes)" if old[0] != new[0]
                      else "has changed (modified since)")
            more = f" (and {len(changed) - 1} more media file(s))" if len(changed) > 1 else ""
            where = pathlib.Path(first) if pathlib.Path(first).is_absolute() else pathlib.Path(new_path) / first
            raise DataChangedError(f"{where}: {change} since the run {run_dir} was trained on it{more}; "
                                   f"{_WHAT_TO_DO[action]}")
    return current


def recorded_file_change(run_dir: str | pathlib.Path, path: str | pathlib.Path) -> Optional[str]:
    """When ``path`` is one of the CSV files the run in ``run_dir`` recorded (``data.json``) and its
    content differs from the record now, a one-line account of it; else ``None``. Batch prediction
    scores whatever file it is given, but says so when it is the run's own split, changed."""
    try:
        recorded = json.loads((pathlib.Path(run_dir) / DATA_RECORD).read_text())
    except (OSError, ValueError):
        return None
    path = pathlib.Path(path).resolve()
    if str(path.parent) != recorded.get("path") or path.name not in recorded.get("files", {}):
        return None
    if file_sha256(path) == recorded["files"][path.name]:
        return None
    return (f"{path} has changed since the run {run_dir} was trained and scored on it (data.json); the "
            "predictions are of the file as it is now")


_WHAT_TO_DO = {
    "train": "restore the data, or use a new --workdir to train on the new data",
    "evaluate": "restore the data, or pass --allow_data_change to score the run on the data as it is now",
}
