"""Dialogue-shaped batches for runs with a dialogue context head (:mod:`emojax.model.dialogue`).

A batch is a block of ``(dialogues, turns)`` padded utterance slots, flattened to
``dialogues * turns`` rows for the per-utterance parts of the model (features, present, labels,
``mask``: which rows are real) plus ``speakers (dialogues, turns)``: each row's speaker numbered
within its dialogue by first appearance. A dialogue's utterances fill its slots from turn 0 in
the order of their position (``Sample.index``); padding follows.

Shapes come from a small set so ``jit`` compiles a few times: in training ``turns`` is the
longest dialogue of the batch rounded up to a power of two (at least :data:`MIN_TURNS`), and
``dialogues`` is ``rows // turns`` (at least one, rounded up to a multiple of the device count),
``rows`` being the batch's budget of slots (``train.batch_size``). Dialogues are packed greedily
in order of length (dialogues of one length in an order drawn for the epoch), so few slots are
padding, and the batches are then shuffled. The number of batches is the same in every epoch and
for every seed (so is the learning-rate schedule, and with it the compiled step); every order is
a pure function of seed and epoch, so a resumed run replays the epochs an uninterrupted run would
have seen, batch for batch. Scoring (``train.eval_batch_size`` slots) pads
every batch of a split to the turns of its longest dialogue: one compiled shape per split.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from emojax.data.csvutil import natural_key
from emojax.data.types import Split
from emojax.features.featurizer import FeatureSet
from emojax.training.batches import batch_of

# The fewest turns of a batch: dialogues of one to three utterances share one compiled shape.
MIN_TURNS = 4


def with_dialogues(data: FeatureSet, split: Split) -> FeatureSet:
    """``data`` (the features of ``split``, row for row) with each row's dialogue, position and
    speaker from the split's samples."""
    samples = split.samples
    if len(samples) != len(data):
        raise ValueError(f"split {split.name}: {len(samples)} samples for {len(data)} feature rows")
    return dataclasses.replace(data, dialogues=np.asarray([s.dialogue for s in samples], dtype=object),
                               positions=np.asarray([s.index for s in samples], np.int64),
                               speakers=np.asarray([s.speaker for s in samples], dtype=object))


@dataclasses.dataclass
class DialogueLayout:
    """The dialogues of a feature set: per dialogue (ordered by id, numbers by value, so the
    order of the rows never matters) its rows in position order and its speaker numbers; a set
    without dialogue fields is one dialogue per row."""

    rows: list[np.ndarray]
    speakers: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(r) for r in self.rows], np.int64)


def dialogue_layout(data: FeatureSet) -> DialogueLayout:
    """The :class:`DialogueLayout` of ``data``."""
    n = len(data)
    if data.dialogues is None:
        return DialogueLayout([np.asarray([i]) for i in range(n)], [np.zeros(1, np.int32) for _ in range(n)])
    positions = np.arange(n) if data.positions is None else np.asarray(data.positions)
    members: dict = {}
    for i, dialogue in enumerate(data.dialogues):
        members.setdefault(dialogue, []).append(i)
    rows, speakers = [], []
    for dialogue in sorted(members, key=lambda d: natural_key(str(d))):
        index = np.asarray(members[dialogue])
        index = index[np.argsort(positions[index], kind="stable")]
        numbers: dict = {}
        who = [] if data.speakers is None else [numbers.setdefault(data.speakers[i], len(numbers)) for i in index]
        rows.append(index)
        speakers.append(np.asarray(who, np.int32) if who else np.zeros(len(index), np.int32))
    return DialogueLayout(rows, speakers)


def bucket(length: int) -> int:
    """``length`` rounded up to a power of two, at least :data:`MIN_TURNS` (4, 8, 16, ...)."""
    return max(MIN_TURNS, 1 << max(0, int(length) - 1).bit_length())


def batch_shape(turns: int, rows: int, multiple: int = 1) -> tuple[int, int]:
    """``(dialogues, turns)`` of a batch whose longest dialogue has ``turns`` utterances."""
    turns = bucket(turns)
    dialogues = max(1, int(rows) // turns)
    return -(-dialogues // multiple) * multiple, turns


def pack(order: Sequence[int], lengths: np.ndarray, rows: int, multiple: int = 1,
         turns: int = 0) -> list[np.ndarray]:
    """Dialogues ``order`` (in that order) packed greedily into batches of :func:`batch_shape`
    (of at least ``turns`` turns)."""
    groups, current, longest = [], [], int(turns)
    for d in order:
        grown = max(longest, int(lengths[d]))
        if current and len(current) + 1 > batch_shape(grown, rows, multiple)[0]:
            groups.append(np.asarray(current))
            current, grown = [], max(int(lengths[d]), int(turns))
        current.append(int(d))
        longest = grown
    if current:
        groups.append(np.asarray(current))
    return groups


def epoch_plan(layout: DialogueLayout, rows: int, seed: int, epoch: int, multiple: int = 1) -> list[np.ndarray]:
    """The training batches of an epoch as groups of dialogue numbers: a pure function of seed and
    epoch. Every dialogue is in exactly one batch."""
    rng = np.random.default_rng([seed, epoch])
    lengths = layout.lengths
    order = rng.permutation(len(lengths))
    groups = pack(order[np.argsort(lengths[order], kind="stable")], lengths, rows, multiple)
    return [groups[i] for i in rng.permutation(len(groups))]


def scoring_turns(layout: DialogueLayout) -> int:
    """The turns of every scoring batch of ``layout``: its longest dialogue's, bucketed."""
    return bucket(int(layout.lengths.max(initial=1)))


def scoring_plan(layout: DialogueLayout, rows: int, multiple: int = 1) -> list[np.ndarray]:
    """The scoring batches, all of :func:`scoring_turns` turns: dialogues by length (ties in
    dialogue order), packed."""
    return pack(np.argsort(layout.lengths, kind="stable"), layout.lengths, rows, multiple, scoring_turns(layout))


def dialogue_batch(data: FeatureSet, layout: DialogueLayout, group: np.ndarray, rows: int,
                   multiple: int = 1, turns: int = 0) -> dict:
    """The dialogues ``group`` as one batch of :func:`batch_shape` (at least ``turns`` turns):
    what :func:`emojax.training.batches.batch_of` gives for the ``dialogues * turns`` slots
    (padding slots repeat the batch's first row), with ``mask (dialogues * turns,)``,
    ``speakers (dialogues, turns)`` and ``index``, each slot's row."""
    lengths = layout.lengths[group]
    dialogues, turns = batch_shape(max(int(lengths.max()), int(turns)), rows, multiple)
    index = np.full((dialogues, turns), layout.rows[group[0]][0], np.int64)
    mask = np.zeros((dialogues, turns), bool)
    speakers = np.zeros((dialogues, turns), np.int32)
    for slot, d in enumerate(group):
        n = len(layout.rows[d])
        index[slot, :n], mask[slot, :n], speakers[slot, :n] = layout.rows[d], True, layout.speakers[d]
    flat = index.reshape(-1)
    return {**batch_of(data, flat), "mask": mask.reshape(-1), "speakers": speakers, "index": flat}


class DialogueBatches:
    """The training batches of a run with a context head: ``batches(epoch)`` yields them,
    ``steps(epoch)`` counts them (for the learning-rate schedule, before training starts)."""

    def __init__(self, data: FeatureSet, rows: int, seed: int, multiple: int = 1):
        self.data, self.rows, self.seed, self.multiple = data, int(rows), int(seed), int(multiple)
        self.layout = dialogue_layout(data)

    def plan(self, epoch: int) -> list[np.ndarray]:
        return epoch_plan(self.layout, self.rows, self.seed, epoch, self.multiple)

    def steps(self, epoch: int) -> int:
        """The batches of an epoch (the same in every epoch)."""
        return len(self.plan(epoch))

    def batches(self, epoch: int) -> Iterator[dict]:
        for group in self.plan(epoch):
            yield dialogue_batch(self.data, self.layout, group, self.rows, self.multiple)
