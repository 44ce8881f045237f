"""CH-SIMS: ``label.csv`` (``video_id``, ``clip_id``, ``text``, ``annotation``, ``mode``) and media
under ``Raw/{video_id}/{clip_id:04d}.mp4``, the audio beside it (``.wav``, else ``.flac``)."""
from __future__ import annotations

import logging
import pathlib

from emojax.data import csvutil, paths
from emojax.data.types import DatasetError, DatasetSplits, Sample, SPLITS

log = logging.getLogger(__name__)

SENTIMENTS = ("Negative", "Neutral", "Positive")
_MODES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}


def load_sims(root: str | pathlib.Path, *, target: str = "sentiment", allow_outside_paths: bool = False
              ) -> DatasetSplits:
    """Load CH-SIMS's ``label.csv``; ``allow_outside_paths`` lets a ``video_id`` lead outside ``root``."""
    root = pathlib.Path(root)
    if target != "sentiment":
        raise DatasetError(f"CH-SIMS has sentiment labels only; target {target!r} is not available")
    path = root / "label.csv"
    if not path.exists():
        raise DatasetError(f"{path}: CH-SIMS label file not found")
    frame = csvutil.read_csv(path)
    for column in ("video_id", "clip_id", "text", "annotation", "mode"):
        csvutil.pick_column(frame, path, [column], column)
    # One file carries every split (by its ``mode`` column), so an empty file lacks the training
    # rows and is an error; a mode without rows is reported below as a split not scored.
    csvutil.is_empty_split(frame, path, "train", "CH-SIMS")
    labels = {name.lower(): i for i, name in enumerate(SENTIMENTS)}
    by_split: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    keys: list[tuple[tuple[str, int], int]] = []
    for i, row in enumerate(frame.to_dict("records")):
        row_number = csvutil.csv_row(i)
        mode = str(row["mode"]).strip().lower()
        if mode not in _MODES:
            raise DatasetError(f"{path}, row {row_number}: unknown mode {row['mode']!r}; expected train, valid or test")
        try:
            clip = int(row["clip_id"])
        except ValueError:
            raise DatasetError(
                f"{path}, row {row_number}: clip_id must be an integer, got {row['clip_id']!r}") from None
        video_id = str(row["video_id"]).strip()
        keys.append(((video_id, clip), row_number))
        folder, _ = paths.resolve_media(root, f"Raw/{video_id}", where=f"{path}, row {row_number}",
                                        allow_outside=allow_outside_paths)
        audio = video = None  # a folder outside the dataset: the clip counts as missing
        if folder is not None:
            audio = csvutil.existing(folder / f"{clip:04d}.wav") or csvutil.existing(folder / f"{clip:04d}.flac")
            video = csvutil.existing(folder / f"{clip:04d}.mp4")
        split = _MODES[mode]
        by_split[split].append(Sample(
            uid=f"{split}/{video_id}/{clip:04d}", dialogue=video_id, index=clip, speaker=video_id,
            text=csvutil.clean_text(row["text"]), audio=audio, video=video,
            label=csvutil.label_index(row["annotation"], labels, path, row_number, "annotation")))
    csvutil.check_unique(path, keys, "(video_id, clip_id)")
    if not by_split["train"]:
        raise DatasetError(f"{path}: no rows with mode 'train'")
    splits, not_scored = {}, []
    for split, samples in by_split.items():
        if samples:
            splits[split] = csvutil.finish_split(split, samples, "CH-SIMS")
        else:
            log.warning("CH-SIMS: no %s rows in %s; the %s split is not scored", split, path, split)
            not_scored.append(split)
    return DatasetSplits("CH-SIMS", str(root), SENTIMENTS, splits, tuple(not_scored))
