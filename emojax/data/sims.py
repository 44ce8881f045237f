"""CH-SIMS: ``label.csv`` (``video_id``, ``clip_id``, ``text``, ``annotation``, ``mode``) and media
under ``Raw/{video_id}/{clip_id:04d}.mp4``, the audio beside it (``.wav``, else ``.flac``)."""
from __future__ import annotations

import logging
import pathlib

from emojax.data import csvutil
from emojax.data.types import DatasetError, DatasetSplits, Sample, SPLITS

log = logging.getLogger(__name__)

SENTIMENTS = ("Negative", "Neutral", "Positive")
_MODES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}


def load_sims(root: str | pathlib.Path, *, target: str = "sentiment") -> DatasetSplits:
    root = pathlib.Path(root)
    if target != "sentiment":
        raise DatasetError(f"CH-SIMS has sentiment labels only; target {target!r} is not available")
    path = root / "label.csv"
    if not path.exists():
        raise DatasetError(f"{path}: CH-SIMS label file not found")
    frame = csvutil.read_csv(path)
    for column in ("video_id", "clip_id", "text", "annotation", "mode"):
        csvutil.pick_column(frame, path, [column], column)
    labels = {name.lower(): i for i, name in enumerate(SENTIMENTS)}
    by_split: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for i, row in enumerate(frame.to_dict("records")):
        row_number = csvutil.csv_row(i)
        mode = str(row["mode"]).strip().lower()
        if mode not in _MODES:
            raise DatasetError(f"{path}, row {row_number}: unknown mode {row['mode']!r}; expected train, valid or test")
        try:
            clip = int(row["clip_id"])
        except ValueError:
            raise DatasetError(f"{path}, row {row_number}: clip_id must be an integer, got {row['clip_id']!r}") from None
        video_id = str(row["video_id"]).strip()
        folder = root / "Raw" / video_id
        audio = csvutil.existing(folder / f"{clip:04d}.wav") or csvutil.existing(folder / f"{clip:04d}.flac")
        split = _MODES[mode]
        by_split[split].append(Sample(
            uid=f"{split}/{video_id}/{clip:04d}", dialogue=video_id, index=clip, speaker=video_id,
            text=csvutil.clean_text(row["text"]), audio=audio, video=csvutil.existing(folder / f"{clip:04d}.mp4"),
            label=csvutil.label_index(row["annotation"], labels, path, row_number, "annotation")))
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
