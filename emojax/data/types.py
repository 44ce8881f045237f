"""Plain data types shared by every dataset loader.

A loader turns a dataset folder into a :class:`DatasetSplits`: per split, a list of
:class:`Sample` with absolute media paths (``None`` where the file is absent) and an
integer label into ``class_names``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

MODALITIES = ("T", "A", "V")
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


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = 1.0 / counts[present]
    if present.any():
        weights[~present] = weights[present].max()
        weights = weights / weights[present].mean()
    return weights.astype(np.float32)
