"""TensorBoard event files of a run, so that ``tensorboard --logdir runs`` compares runs, and
the same points in an experiment tracker (``report_to``: ``tensorboard``, ``wandb`` or ``none``).

Each run directory gets ``events/`` with, against the global training step: the training loss
of every step, the learning rate it was taken with, the gradient's global norm (before
clipping), the steps per second and loss of each epoch, the dev loss and scores of each epoch,
and the test scores of the selected epoch once, at the last step. Scores are in percent, as the
console, ``metrics.md`` and ``history.png`` show them. A new run is named where TensorBoard
shows it: a text summary with its label (``run/label``) and its whole config (``run/config``),
and its config fields as the hparams plugin's session, in the run's own ``events/`` folder (no
folder of its own as tensorboardX's ``add_hparams`` makes). They are written from numbers the
epoch loop already holds on the host, just before the epoch's checkpoint, so they change
nothing the run computes.

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

Trackers (:class:`WandbRun`) get every point :meth:`RunEvents.scalars` writes, with the run's
label and config; ``wandb`` is an optional package, imported on the first point only.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from emojax import interrupts
from emojax.config import ConfigError
from emojax.files import digest

EVENTS_DIR = "events"
LABEL_TAG, CONFIG_TAG = "run/label", "run/config"  # the text summaries that name a run in TensorBoard
WANDB_PROJECT = "emojax"  # the Weights & Biases project unless WANDB_PROJECT names another


def percent(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores in [0, 1] (``accuracy``, ``weighted_f1``, ...) in percent, as every display shows them."""
    return {name: 100.0 * float(value) for name, value in scores.items()}


class RunEvents:
    """The event files a run's epochs write into: one opened on the first write after the start
    or after :meth:`flush` (a finished run that is started again writes nothing), closed by
    :meth:`flush` after each epoch (so a run killed later loses none of its finished epochs), by
    :meth:`close` or by the ``with`` block.

    ``first_step`` is the global step the next training step will have (the restored state's
    step + 1): recorded as the purge point of the first file, so replayed epochs replace, not
    duplicate, the earlier points. With ``enabled=False`` (a process other than 0 in a multi-host
    run, or ``report_to`` other than ``tensorboard``) it writes no file. ``trackers`` (such as
    :class:`WandbRun`) get the same points; the ``with`` block's end (:meth:`finish`) ends them."""

    def __init__(self, run_dir: str | pathlib.Path, *, first_step: int, enabled: bool = True):
        self.folder = pathlib.Path(run_dir) / EVENTS_DIR
        self.first_step = int(first_step)
        self.enabled = enabled
        self.trackers: list = []
        self._writer: Any = None  # the open tensorboardX SummaryWriter
        self._purge_step: Optional[int] = self.first_step  # the first file's; the later ones purge nothing

    def __enter__(self) -> "RunEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    @property
    def writes(self) -> bool:
        """Whether anything is written: event files, or points for a tracker."""
        return self.enabled or bool(self.trackers)

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
        """Write ``values`` (tag -> number) at global step ``step`` (to the trackers too)."""
        if not values:
            return
        for tracker in self.trackers:
            tracker.scalars(step, values)
        if not self.enabled:
            return
        writer, wall_time = self._open(), time.time()
        for tag, value in values.items():
            writer.add_scalar(tag, float(value), int(step), walltime=wall_time)

    def describe(self, label: str, config: Mapping[str, Any]) -> None:
        """Name a new run where TensorBoard shows it, at the first step: its label and whole
        config as text (``run/label``, ``run/config``), and the config's fields (dotted keys) as
        the hparams plugin's session, whose metrics are the run's own scalars. The trackers get
        them as their run's name and config."""
        for tracker in self.trackers:
            tracker.describe(label, config)
        if not self.enabled:
            return
        from tensorboardX.summary import hparams  # as SummaryWriter: on the first write

        writer, step = self._open(), self.first_step
        writer.add_text(LABEL_TAG, label, step)
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        writer.add_text(CONFIG_TAG, "\n".join("    " + line for line in text.splitlines()), step)  # a code block
        _, session_start, _ = hparams(hparam_fields(label, config), {})
        writer.file_writer.add_summary(session_start, step)

    def end_session(self, step: int) -> None:
        """Mark the hparams session finished (the run scored its test split)."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams

        _, _, session_end = hparams({}, {})
        self._open().file_writer.add_summary(session_end, int(step))

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

    def dev(self, step: int, scores: Mapping[str, float], loss: Optional[float] = None) -> None:
        """The epoch's dev scores (accuracy, weighted and macro F1, in [0, 1]; written in percent)
        and its dev loss (cross entropy) at the epoch's last step."""
        values = {f"dev/{name}": value for name, value in percent(scores).items()}
        if loss is not None:
            values["dev/loss"] = loss
        self.scalars(step, values)

    def test(self, step: int, scores: Mapping[str, float]) -> None:
        """The selected epoch's test scores (in [0, 1]; written in percent), once, at ``step``
        (the run's last), closing the hparams session."""
        self.scalars(step, {f"test/{name}": value for name, value in percent(scores).items()})
        self.end_session(step)
        for tracker in self.trackers:
            tracker.summary({f"test/{name}": value for name, value in percent(scores).items()})

    def flush(self) -> None:
        """Put what was written on disk (TensorBoard shows it on its next reload): the file is
        closed, the only call of tensorboardX's writer that waits for its writing thread; the
        next write opens a new one."""
        self.close()

    def close(self) -> None:
        """Write out and close the open file (nothing when none is open)."""
        if self._writer is not None:
            with interrupts.held():  # stopped half-way, tensorboardX's writer can be neither used nor closed
                self._writer.close()
                self._writer = None

    def finish(self) -> None:
        """:meth:`close`, and end the trackers' runs."""
        self.close()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()


def hparam_fields(label: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The hparams plugin's fields of a run: ``label`` and every field of ``config`` by dotted
    key; values other than numbers, strings and booleans (lists) as JSON text."""
    fields: dict[str, Any] = {"label": label}

    def walk(prefix: str, node: Mapping) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(f"{prefix}{key}.", value)
            elif isinstance(value, (bool, int, float, str)):
                fields[f"{prefix}{key}"] = value
            else:
                fields[f"{prefix}{key}"] = json.dumps(value, default=str)

    walk("", config)
    return fields


# -- experiment trackers -------------------------------------------------------------------------

def import_wandb():
    """The ``wandb`` module, or :class:`ConfigError` saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("report_to: wandb is not installed; pip install wandb (or pip install 'emojax[wandb]'), "
                          "or choose report_to=tensorboard") from None
    return wandb


class WandbRun:
    """A run's points in a Weights & Biases run (``report_to=wandb``): the same scalars as its
    event files, at the same steps, with its label as the run's name and its config. The wandb
    run opens on the first point (a finished run started again opens none), in the run directory
    (``wandb/``), with an id fixed by the run directory, so a resumed run continues the same wandb
    run; ``WANDB_MODE=offline`` keeps it on disk (``wandb sync`` uploads it later), and
    ``WANDB_PROJECT`` names the project (default ``emojax``)."""

    def __init__(self, run_dir: str | pathlib.Path, *, module=None):
        self.run_dir = pathlib.Path(run_dir)
        self.run_id = "emojax-" + digest(str(self.run_dir.resolve()))[:16]
        self._module = module  # the wandb module (tests give a stand-in)
        self._label: Optional[str] = None
        self._config: dict = {}
        self._run: Any = None

    def describe(self, label: str, config: Mapping[str, Any]) -> None:
        self._label, self._config = label, dict(config)
        if self._run is not None:
            self._run.config.update(self._config, allow_val_change=True)

    def _open(self):
        if self._run is None:
            wandb = self._module or import_wandb()
            self._run = wandb.init(project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, dir=str(self.run_dir),
                                   id=self.run_id, name=self._label, config=self._config or None, resume="allow")
        return self._run

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._open().log({tag: float(value) for tag, value in values.items()}, step=int(step))

    def summary(self, values: Mapping[str, float]) -> None:
        run = self._open()
        for tag, value in values.items():
            run.summary[tag] = float(value)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def open_trackers(report_to: str, run_dir: str | pathlib.Path, *, enabled: bool = True) -> list:
    """The trackers ``report_to`` names besides TensorBoard (``wandb``: a :class:`WandbRun`);
    none for a process that does not write (``enabled=False``)."""
    if report_to not in ("tensorboard", "wandb", "none"):
        raise ConfigError(f"report_to: {report_to!r} is not one of tensorboard, wandb, none")
    if not enabled or report_to != "wandb":
        return []
    import_wandb()  # before any work: the missing package in one line
    return [WandbRun(run_dir)]


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
