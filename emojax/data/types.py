"""Plain data types shared by every dataset loader.

A loader turns a dataset folder into a :class:`DatasetSplits`: per split, a list of
:class:`Sample` with absolute media paths (``None`` where the file is absent) and an
integer label into ``class_names``. A :class:`DatasetKind` says what one kind of dataset folder
is (its CSV files, targets, loader and media paths); each dataset module holds one.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

MODALITIES = ("T", "A", "V")
# dataset.max_seconds by default: the longest stretch of one input that is decoded (0: no cap)
DEFAULT_MAX_SECONDS = 60.0
SPLITS = ("train", "dev", "test")


class DatasetError(ValueError):
    """A dataset file is malformed: the message names the file, and the row where one is at fault."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One utterance.

    uid: unique within the dataset, e.g. ``"train/dia3_utt2"``; also the cache key's sample part.
    dialogue: dialogue identifier (utterances sharing it form one conversation, in ``index`` order).
    index: position of the utterance within its dialogue.
    speaker: the speaker's name as the file gives it.
    text: the transcript.
    audio, video: absolute paths of the media files, or ``None`` where the file is missing.
    label: index into the dataset's ``class_names``.
    """

    uid: str
    dialogue: str
    index: int
    speaker: str
    text: str
    audio: Optional[str]
    video: Optional[str]
    label: int


@dataclasses.dataclass
class Split:
    """The samples of one split, in dialogue order, and the count of missing media per modality."""

    name: str
    samples: list[Sample]
    missing: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.int32)


@dataclasses.dataclass
class DatasetSplits:
    """A loaded dataset: its class names, the splits found, and the splits that are absent."""

    name: str
    root: str
    class_names: tuple[str, ...]
    splits: dict[str, Split]
    not_scored: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_weights(self, split: str = "train") -> np.ndarray:
        """Inverse class frequency on ``split``, normalised to mean 1 over the classes present.

        A class absent from the split gets weight 0 only if absent everywhere; otherwise the
        largest weight seen, so a rare class is never ignored.
        """
        return inverse_frequency_weights(self.splits[split].labels, self.num_classes)


@dataclasses.dataclass(frozen=True)
class MediaPaths:
    """The media files one CSV row names, existence not checked.

    audio, video: ``None`` where the row names none, or names one outside the dataset folder.
    problems: modality (``"A"``, ``"V"``) -> why the row's path was not used, the path first
    (``"Raw/v1: path leads outside the dataset folder; ..."``).
    """

    audio: Optional[pathlib.Path]
    video: Optional[pathlib.Path]
    problems: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset folder, described once (``emojax.data.meld.MELD``, ...) and registered
    under ``kind`` in :data:`emojax.data.DATASETS`; loading, the record of a run's data, the dev
    split check, config validation and batch prediction all read it from there.

    kind: the config's ``dataset.kind`` (``"meld"``).
    name: the dataset's name in messages and :attr:`DatasetSplits.name` (``"MELD"``).
    csv_files: split -> the CSV file, relative to the dataset folder, its rows come from; splits
        may share one file (CH-SIMS's ``label.csv``).
    targets: target -> class names in label order (``{"emotion": (...), "sentiment": (...)}``).
    load: ``load(root, *, target, allow_outside_paths) -> DatasetSplits``.
    media_paths: ``media_paths(root, split, row, *, where, allow_outside) -> MediaPaths``: the
        media files of one CSV row (a dict of its cells; ``split`` may be ``None`` where unknown,
        ``where`` names the row in messages, e.g. ``"train.csv, row 7"``). A row whose ids are
        malformed raises :class:`DatasetError`. The loader and batch prediction both use it.
    dev_hint: where the dev rows come from, for messages (default: the dev CSV's name).
    """

    kind: str
    name: str
    csv_files: Mapping[str, str]
    targets: Mapping[str, tuple[str, ...]]
    load: Callable[..., DatasetSplits]
    media_paths: Callable[..., MediaPaths]
    dev_hint: str = ""

    def files(self, root: str | pathlib.Path) -> dict[str, pathlib.Path]:
        """Split -> the path of its CSV file in the dataset folder ``root`` (present or not)."""
        return {split: pathlib.Path(root) / name for split, name in self.csv_files.items()}

    def class_names(self, target: str) -> tuple[str, ...]:
        """The classes of ``target``; :class:`DatasetError` for a target this dataset lacks."""
        if target not in self.targets:
            raise DatasetError(f"{self.name} has {' and '.join(self.targets)} labels only; target {target!r} "
                               "is not available")
        return tuple(self.targets[target])

    def split_of(self, csv_name: str) -> Optional[str]:
        """The split whose rows alone a CSV file named ``csv_name`` holds (compared without the
        suffix: ``"dev_sent_emo.csv"`` -> ``"dev"``); ``None`` for another name or a shared file."""
        stem = pathlib.PurePath(csv_name).stem
        splits = [split for split, name in self.csv_files.items() if pathlib.PurePath(name).stem == stem]
        return splits[0] if len(splits) == 1 else None

    @property
    def dev_source(self) -> str:
        """Where the dev rows come from, for messages: ``dev_hint``, else the dev CSV's name."""
        return self.dev_hint or self.csv_files.get("dev", "the dev split")


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = 1.0 / counts[present]
    if present.any():
        weights[~present] = weights[present].max()
        weights = weights / weights[present].mean()
    return weights.astype(np.float32)
