"""TensorBoard event files of a run, so that ``tensorboard --logdir runs`` compares runs.

Each run directory gets ``events/`` with, against the global training step: the training loss
of every step, the learning rate it was taken with, the gradient's global norm (before
clipping), the steps per second and loss of each epoch, and the dev scores of each epoch. They
are written from numbers the epoch loop already holds on the host, just before the epoch's
checkpoint, so they change nothing the run computes.

A resumed run writes a new events file that opens with a purge marker at its first step:
TensorBoard then hides whatever an earlier file recorded from that step on (an epoch replayed
after a crash), and :func:`read_scalars` does the same.

The files are written with tensorboardX's event writer and protocol buffers (no TensorFlow, no
PyTorch). tensorboardX imports PyTorch, when it is installed, only to accept its tensors; the run
logs plain floats, so that import is kept out (it costs seconds and memory in every run).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import struct
import sys
import time
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np


@contextlib.contextmanager
def _without_module(name: str) -> Iterator[None]:
    """While inside, ``import name`` fails (unless it is loaded already); afterwards it imports
    as usual."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


with _without_module("torch"):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary

EVENTS_DIR = "events"


class RunEvents:
    """The event file a run's epochs write into: opened on the first write (a finished run that
    is started again writes nothing), flushed after each epoch (:meth:`flush`; written in this
    thread, so a run killed later loses none of its finished epochs), closed by :meth:`close` or
    the ``with`` block.

    ``first_step`` is the global step the next training step will have (the restored state's
    step + 1): recorded as the purge point, so replayed epochs replace, not duplicate, the
    earlier points. With ``enabled=False`` (a process other than 0 in a multi-host run) it writes
    nothing."""

    def __init__(self, run_dir: str | pathlib.Path, *, first_step: int, enabled: bool = True):
        self.folder = pathlib.Path(run_dir) / EVENTS_DIR
        self.first_step = int(first_step)
        self.enabled = enabled
        self._writer: Optional[EventsWriter] = None

    def __enter__(self) -> "RunEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> EventsWriter:
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A unique suffix: a run resumed within the same second must not reopen (and so
            # truncate) the file of the process before it.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self._writer = EventsWriter(str(self.folder / "events"), filename_suffix=suffix)
            self._writer.write_event(Event(wall_time=time.time(), step=self.first_step,
                                         session_log=SessionLog(status=SessionLog.START)))
        return self._writer

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write ``values`` (tag -> number) at global step ``step``, one event."""
        if not self.enabled or not values:
            return
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()])
        self._open().write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

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
        """Put what was written on disk (TensorBoard shows it on its next reload)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the file (nothing when none was opened)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
        for record in _records(path):
            event = Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()}
            if event.HasField("summary"):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return {tag: sorted(points, key=lambda point: point[0]) for tag, points in scalars.items()}


def as_floats(values) -> list[float]:
    """Device or numpy scalars as Python floats (for :meth:`RunEvents.train_epoch`)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
