"""TensorBoard event files of a run, so that ``tensorboard --logdir runs`` compares runs.

Each run directory gets ``events/`` with, against the global training step: the training loss
of every step, the learning rate it was taken with, the gradient's global norm (before
clipping), the steps per second and loss of each epoch, and the dev scores of each epoch. They
are written from numbers the epoch loop already holds on the host, just before the epoch's
checkpoint, so they change nothing the run computes.

Each epoch's points go to an events file of their own, closed before the epoch's checkpoint:
tensorboardX's ``SummaryWriter`` writes on a thread of its own, and only ``close`` waits until
everything given to it is on disk (its ``flush`` leaves the events still queued for that thread),
so closing is what keeps a finished epoch's points when the run is killed later. The first file
a process writes opens with a purge marker at its first step (``purge_step``): TensorBoard then
hides whatever an earlier file recorded from that step on (an epoch replayed after a crash), and
:func:`read_scalars` does the same.

The files are written with tensorboardX's ``SummaryWriter`` (no TensorFlow) and read back here
from the file format itself: TFRecord framing around the protocol buffers of TensorBoard's
``event.proto`` and ``summary.proto``, of which :func:`read_scalars` decodes the few fields it
needs. tensorboardX imports PyTorch, when it is installed, to accept its tensors; it is imported
on the first write, so that importing this module (training, evaluation, inference) does not.
"""
from __future__ import annotations

import os
import pathlib
import struct
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

EVENTS_DIR = "events"


class RunEvents:
    """The event files a run's epochs write into: one opened on the first write after the start
    or after :meth:`flush` (a finished run that is started again writes nothing), closed by
    :meth:`flush` after each epoch (so a run killed later loses none of its finished epochs), by
    :meth:`close` or by the ``with`` block.

    ``first_step`` is the global step the next training step will have (the restored state's
    step + 1): recorded as the purge point of the first file, so replayed epochs replace, not
    duplicate, the earlier points. With ``enabled=False`` (a process other than 0 in a multi-host
    run) it writes nothing."""

    def __init__(self, run_dir: str | pathlib.Path, *, first_step: int, enabled: bool = True):
        self.folder = pathlib.Path(run_dir) / EVENTS_DIR
        self.first_step = int(first_step)
        self.enabled = enabled
        self._writer: Any = None  # the open tensorboardX SummaryWriter
        self._purge_step: Optional[int] = self.first_step  # the first file's; the later ones purge nothing

    def __enter__(self) -> "RunEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self):
        if self._writer is None:
            # tensorboardX imports PyTorch when it is installed: imported on the first write only.
            from tensorboardX import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            # A unique suffix: a run resumed within the same second must not reopen (and so
            # truncate) the file of the process before it, nor an epoch the file of the one before.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self._writer = SummaryWriter(str(self.folder), purge_step=self._purge_step, filename_suffix=suffix)
            self._purge_step = None
        return self._writer

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write ``values`` (tag -> number) at global step ``step``."""
        if not self.enabled or not values:
            return
        writer, wall_time = self._open(), time.time()
        for tag, value in values.items():
            writer.add_scalar(tag, float(value), int(step), walltime=wall_time)

    def train_epoch(self, *, epoch: int, last_step: int, losses: Sequence[float],
                    learning_rates: Mapping[str, Sequence[float]], grad_norms: Optional[Sequence[float]],
                    epoch_loss: float, steps_per_second: float) -> None:
        """One epoch of training: per step (the epoch's last step is ``last_step``) the loss,
        learning rate(s) and gradient norm; at ``last_step`` the epoch's loss and speed."""
        first = int(last_step) - len(losses) + 1
        for i, loss in enumerate(losses):
            values = {"train/loss": loss}
            values.update({tag: rates[i] for tag, rates in learning_rates.items()})
            if grad_norms is not None:
                values["train/grad_norm"] = grad_norms[i]
            self.scalars(first + i, values)
        self.scalars(last_step, {"train/epoch_loss": epoch_loss, "train/steps_per_second": steps_per_second,
                                 "epoch": epoch})

    def dev(self, step: int, scores: Mapping[str, float]) -> None:
        """The epoch's dev scores (accuracy, weighted and macro F1) at the epoch's last step."""
        self.scalars(step, {f"dev/{name}": value for name, value in scores.items()})

    def flush(self) -> None:
        """Put what was written on disk (TensorBoard shows it on its next reload): the file is
        closed, the only call of tensorboardX's writer that waits for its writing thread; the
        next write opens a new one."""
        self.close()

    def close(self) -> None:
        """Write out and close the open file (nothing when none is open)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# -- reading back: TFRecord framing, then the protocol buffer wire format ------------------------

# Field numbers in TensorBoard's event.proto and summary.proto, of the fields read here.
_EVENT_STEP, _EVENT_SUMMARY, _EVENT_SESSION_LOG = 2, 5, 7  # Event
_SUMMARY_VALUE = 1  # Summary: repeated Value
_VALUE_TAG, _VALUE_SIMPLE = 1, 2  # Summary.Value: tag, simple_value (float)
_SESSION_STATUS, _SESSION_START = 1, 1  # SessionLog: status; SessionStatus.START


def _records(path: pathlib.Path) -> Iterator[bytes]:
    """The records of a TFRecord file (length, its CRC, data, its CRC); a torn last record (a
    process killed while writing) ends the file."""
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        end = offset + 12 + length
        if end + 4 > len(data):
            return
        yield data[offset + 12:end]
        offset = end + 4


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """The base-128 varint at ``offset`` and the offset after it."""
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("a varint runs past the end of its message")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _fields(message: bytes) -> Iterator[tuple[int, Any]]:
    """``(field number, value)`` of a protocol buffer message in wire format: varints as ``int``,
    fixed-width (double, float) and length-delimited (string, message) fields as their bytes."""
    offset = 0
    while offset < len(message):
        key, offset = _varint(message, offset)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _varint(message, offset)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, offset = message[offset:offset + width], offset + width
        elif wire == 2:
            length, offset = _varint(message, offset)
            value, offset = message[offset:offset + length], offset + length
        else:
            raise ValueError(f"field {number} has wire type {wire}, which events do not use")
        if offset > len(message):
            raise ValueError(f"field {number} runs past the end of its message")
        yield number, value


def _event(record: bytes) -> tuple[int, bool, list[tuple[str, float]]]:
    """One serialized ``Event``: its step, whether it is a session start (a purge marker), and
    its scalar values ``[(tag, simple_value)]``."""
    step, start, values = 0, False, []
    for number, value in _fields(record):
        if number == _EVENT_STEP:
            step = value - (1 << 64) if value >= 1 << 63 else value  # int64, two's complement
        elif number == _EVENT_SESSION_LOG:
            start = dict(_fields(value)).get(_SESSION_STATUS) == _SESSION_START
        elif number == _EVENT_SUMMARY:
            for key, item in _fields(value):
                if key != _SUMMARY_VALUE:
                    continue
                fields = dict(_fields(item))
                if _VALUE_SIMPLE in fields:
                    tag = fields.get(_VALUE_TAG, b"").decode()
                    values.append((tag, float(struct.unpack("<f", fields[_VALUE_SIMPLE])[0])))
    return step, start, values


def event_files(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """The events files under ``folder`` (a run's ``events/``, or any folder above runs), oldest
    first within each folder."""
    return sorted(pathlib.Path(folder).rglob("events.out.tfevents.*"))


def read_scalars(folder: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] sorted by step, from the event files of one run's ``events/``
    folder, as TensorBoard shows them: a later file's purge marker hides the earlier files'
    points from its step on. For checking a run's curves without TensorBoard."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(folder):
        for number, record in enumerate(_records(path)):
            try:
                step, start, values = _event(record)
            except ValueError as err:
                raise ValueError(f"{path}: record {number} is not a TensorBoard event ({err}); "
                                 "move the file aside") from None
            if start:
                scalars = {tag: [(s, v) for s, v in points if s < step] for tag, points in scalars.items()}
            for tag, value in values:
                scalars.setdefault(tag, []).append((step, value))
    return {tag: sorted(points, key=lambda point: point[0]) for tag, points in scalars.items()}


def as_floats(values) -> list[float]:
    """Device or numpy scalars as Python floats (for :meth:`RunEvents.train_epoch`)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
