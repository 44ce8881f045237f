"""CH-SIMS: ``label.csv`` (``video_id``, ``clip_id``, ``text``, ``annotation``, ``mode``) and media
under ``Raw/{video_id}/{clip_id:04d}.mp4``, the audio beside it (``.wav``, else ``.flac``)."""
from __future__ import annotations

import logging
import pathlib
from typing import Optional

from emojax.data import paths
from emojax.data.types import SPLITS, DatasetError, DatasetKind, DatasetSplits, MediaPaths, Sample

log = logging.getLogger(__name__)

SENTIMENTS = ("Negative", "Neutral", "Positive")
CSV_FILE = "label.csv"  # every split, told apart by the ``mode`` column
_MODES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}


def clip_key(row: dict, where: str) -> tuple[str, int]:
    """``(video_id, clip_id)`` of a CSV row; :class:`DatasetError` naming ``where`` unless
    ``clip_id`` is an integer."""
    try:
        clip = int(row["clip_id"])
    except ValueError:
        raise DatasetError(f"{where}: clip_id must be an integer, got {row['clip_id']!r}") from None
    return str(row["video_id"]).strip(), clip


def media_paths(root: pathlib.Path, split: Optional[str], row: dict, *, where: str = "",
                allow_outside: bool = False) -> MediaPaths:
    """``{root}/Raw/{video_id}/{clip:04d}.mp4`` and the audio beside it: the ``.wav``, else an
    existing ``.flac``, else the ``.wav`` looked for. A ``video_id`` leading outside ``root`` gives
    no paths (both modalities' problems say why) unless ``allow_outside``. ``split`` plays no part."""
    folder_name = f"Raw/{str(row['video_id']).strip()}"
    folder, problem = paths.resolve_media(root, folder_name, where=where, allow_outside=allow_outside)
    _, clip = clip_key(row, where)
    if folder is None:
        return MediaPaths(None, None, {"A": f"{folder_name}: {problem}", "V": f"{folder_name}: {problem}"})
    wav, flac = folder / f"{clip:04d}.wav", folder / f"{clip:04d}.flac"
    return MediaPaths(flac if not wav.is_file() and flac.is_file() else wav, folder / f"{clip:04d}.mp4")


def load_sims(root: str | pathlib.Path, *, target: str = "sentiment", allow_outside_paths: bool = False
              ) -> DatasetSplits:
    """Load CH-SIMS's ``label.csv``; ``allow_outside_paths`` lets a ``video_id`` lead outside ``root``."""
    from emojax.data import csvutil  # import cost: pandas, when a dataset is loaded only

    root = pathlib.Path(root)
    class_names = SIMS.class_names(target)
    path = root / CSV_FILE
    if not path.exists():
        raise DatasetError(f"{path}: CH-SIMS label file not found")
    frame = csvutil.read_csv(path)
    for column in ("video_id", "clip_id", "text", "annotation", "mode"):
        csvutil.pick_column(frame, path, [column], column)
    # One file carries every split (by its ``mode`` column), so an empty file lacks the training
    # rows and is an error; a mode without rows is reported below as a split not scored.
    csvutil.is_empty_split(frame, path, "train", "CH-SIMS")
    labels = {name.lower(): i for i, name in enumerate(class_names)}
    by_split: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    keys: list[tuple[tuple[str, int], int]] = []
    for i, row in enumerate(frame.to_dict("records")):
        row_number = csvutil.csv_row(i)
        where = f"{path}, row {row_number}"
        mode = str(row["mode"]).strip().lower()
        if mode not in _MODES:
            raise DatasetError(f"{where}: unknown mode {row['mode']!r}; expected train, valid or test")
        video_id, clip = clip_key(row, where)
        keys.append(((video_id, clip), row_number))
        split = _MODES[mode]
        media = media_paths(root, split, row, where=where, allow_outside=allow_outside_paths)
        by_split[split].append(Sample(  # a folder outside the dataset: the clip counts as missing
            uid=f"{split}/{video_id}/{clip:04d}", dialogue=video_id, index=clip, speaker=video_id,
            text=csvutil.clean_text(row["text"]),
            audio=csvutil.existing(media.audio) if media.audio else None,
            video=csvutil.existing(media.video) if media.video else None,
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
    return DatasetSplits("CH-SIMS", str(root), class_names, splits, tuple(not_scored))


SIMS = DatasetKind(
    kind="sims", name="CH-SIMS", csv_files={split: CSV_FILE for split in SPLITS},
    targets={"sentiment": SENTIMENTS}, load=load_sims, media_paths=media_paths,
    dev_hint=f"{CSV_FILE} rows with mode=valid")
