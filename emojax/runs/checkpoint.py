"""Run checkpoints with Orbax: the last training state (for resuming) and the best parameters.

Layout inside a run directory::

    state/<epoch>/   full TrainState of the last finished epoch (params, optimizer, step, RNG,
                     loss state), Orbax, ``keep_epochs`` kept; what a run resumes from, so dropped
                     once the run has finished unless ``train.keep_state`` (:func:`drop_resume_state`)
    best/<epoch>/    parameters of the epoch selected on dev, Orbax, one kept
    progress.json    history, best epoch and early-stopping state, written after the checkpoint
    set_aside/       checkpoints moved out of Orbax's way: damaged ones and those newer than the
                     epoch a run resumed from (never deleted; see ``RunCheckpoints.set_aside``)
    .lock            held (``fcntl.flock``) by the process training the run; names its pid and host

``progress.json`` is replaced atomically after the Orbax save has finished, so a run killed at
any moment resumes from a consistent epoch. Saves are synchronous: each one is waited for before
the next epoch anyway, and Orbax would report that wait as a slow save. A damaged training state (unreadable metadata or
array files) is moved to ``set_aside/`` and the run resumes from the newest intact one.
"""
from __future__ import annotations

import datetime
import fcntl
import gc
import json
import logging
import os
import pathlib
import shutil
import socket
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from emojax import interrupts
from emojax.files import write_json_atomic  # noqa: F401 - re-exported: run files are written with it

log = logging.getLogger(__name__)

SET_ASIDE = "set_aside"
LOCK_FILE = ".lock"
STATE = "state"
# progress.json of a finished run whose training state was dropped (drop_resume_state)
STATE_DROPPED = "state_dropped"
_ITEM = "default"  # the item folder CheckpointManager writes a single StandardSave to


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from another config; the message names the path."""


class RunBusyError(CheckpointError):
    """Another process holds the run directory's lock; the message names the run and the holder."""


def finished_run(run_dir: str | pathlib.Path) -> dict:
    """The progress of the finished run in ``run_dir``, after cheap checks that say what is wrong
    (no such folder, a workdir given for a run, not a run, unfinished, best checkpoint missing)
    before any model or feature is loaded."""
    run_dir = pathlib.Path(run_dir)
    find = "python -m launch.tool info --workdir=WORKDIR lists the runs"
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory; give the folder launch.train printed last "
                              f"({find})")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: is a file, not a run directory; give the folder launch.train printed "
                              f"last ({find})")
    if not (run_dir / "config.json").is_file():
        if (run_dir / "checkpoints").is_dir():
            raise CheckpointError(f"{run_dir}: is a workdir, not a run directory; give one of its runs "
                                  f"(python -m launch.tool info --workdir={run_dir} lists them)")
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json); give the folder launch.train "
                              f"printed last ({find})")
    resume = "start the run's launch.train command again to finish it"
    progress_path = run_dir / "progress.json"
    if not progress_path.is_file():
        raise CheckpointError(f"{run_dir}: the run has not finished an epoch (no progress.json); {resume}")
    try:
        progress = json.loads(progress_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{progress_path}: unreadable ({brief(err)}); the run's training record is lost: "
                              "move the run directory aside and train again") from None
    if not progress.get("finished"):
        try:
            total = json.loads((run_dir / "config.json").read_text())["train"]["epochs"]
        except (OSError, ValueError, KeyError, TypeError):
            total = "?"
        raise CheckpointError(f"{run_dir}: the run has not finished (epoch {progress.get('epoch', 0)} of "
                              f"{total}); {resume}")
    if not (run_dir / "best" / str(progress.get("best_epoch"))).is_dir():
        raise CheckpointError(f"{run_dir / 'best' / str(progress.get('best_epoch'))}: the best checkpoint named in "
                              f"{progress_path} is missing; rebuild it: move {run_dir} aside and start the run's "
                              "launch.train command again")
    return progress


def folder_bytes(path: str | pathlib.Path) -> int:
    """Bytes of the files under ``path`` (links not followed: a run's encoder links point into the
    shared encoder store); 0 when it does not exist."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed meanwhile
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += stat.st_size
    return total


def resume_state_bytes(run_dir: str | pathlib.Path) -> int:
    """Bytes of the run's training state (``state/``: what an unfinished run resumes from)."""
    return folder_bytes(pathlib.Path(run_dir) / STATE)


def drop_resume_state(run_dir: str | pathlib.Path) -> int:
    """Remove the training state (``state/<epoch>/``: parameters, optimizer moments, step, RNG) of
    the finished run in ``run_dir``; returns the bytes freed. What a finished run is used for stays:
    the selected epoch's parameters (``best/``), which evaluation, inference, the Estimator and
    standalone copies read, and every record. ``progress.json`` says so (``state_dropped``) before
    anything is removed, so a removal cut short is finished by the next call, and a request to
    train the run further is refused with a message (:meth:`RunCheckpoints.restore_latest`).
    Raises ``CheckpointError`` for a run that has not finished: it still needs its state."""
    run_dir = pathlib.Path(run_dir)
    progress = finished_run(run_dir)
    folder = run_dir / STATE
    parts = sorted(folder.iterdir()) if folder.is_dir() else []
    if not progress.get(STATE_DROPPED):
        write_json_atomic(run_dir / "progress.json", {**progress, STATE_DROPPED: True})
    freed = 0
    for part in parts:
        if part.is_dir() and not part.is_symlink():
            freed += folder_bytes(part)
            shutil.rmtree(part)
        else:
            freed += part.lstat().st_size
            part.unlink()
    return freed


def brief(err: BaseException) -> str:
    """A one-line account of ``err`` for a message: the innermost cause's first line (Orbax wraps
    TensorStore's precise error, e.g. a truncated file, in a generic one with a page-long spec)."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _leaf_shapes(tree) -> dict[str, tuple]:
    """``path -> shape`` of every array of a pytree, or of Orbax's metadata tree of a checkpoint;
    paths are spelled the same for both (dict keys, sequence indices and attribute names alike)."""
    def name(key) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape if hasattr(leaf, "shape") else np.shape(leaf))
            for path, leaf in leaves}


def _unreadable(item: pathlib.Path) -> Optional[str]:
    """What cannot be read in a checkpoint's item folder (its JSON metadata parsed, every stored
    array chunk read through TensorStore), or ``None``. Run before Orbax reads the folder: a failed
    Orbax restore leaves reads pending on a closed event loop, which then print tracebacks of their
    own after the error message."""
    if not item.is_dir():
        return f"{item} is missing"
    files = [item / "_METADATA", *([item / "_sharding"] if (item / "_sharding").exists() else []),
             *sorted((item / "array_metadatas").glob("*"))]
    for file in files:
        try:
            json.loads(file.read_text())
        except FileNotFoundError:
            return f"{file} is missing"
        except (OSError, UnicodeDecodeError, ValueError) as err:
            return f"{file.relative_to(item.parent)} is not readable JSON ({brief(err)})"
    if not (item / "manifest.ocdbt").exists():
        return f"{item / 'manifest.ocdbt'} is missing"
    key = b""
    try:
        store = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": f"{item}/"}}).result()
        keys = store.list().result()
        for start in range(0, len(keys), 64):  # a bounded number of chunks in memory at once
            batch = keys[start:start + 64]
            for key, read in zip(batch, [store.read(key) for key in batch]):
                read.result()
    except Exception as err:  # noqa: BLE001 - TensorStore reports bad files as ValueError or plain Exception
        where = f" ({key.decode(errors='replace')})" if key else ""
        return f"unreadable array files{where}: {brief(err)}"
    return None


def _differences(path: pathlib.Path, target) -> Optional[tuple[bool, str]]:
    """How the arrays of the (readable) checkpoint at ``path`` differ from ``target``'s:
    ``(same array names, what differs)``, or ``None`` when they agree or the metadata cannot be
    read. Other shapes under the same names are another model for certain; other names may only
    be spelled differently, so Orbax's restore decides those."""
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = _leaf_shapes(handler.metadata(path / _ITEM))
    except Exception:  # noqa: BLE001 - left to the restore, which reports what it cannot read
        return None
    finally:
        handler.close()
    wanted = _leaf_shapes(target)
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing:
        return False, f"{len(missing)} of the model's arrays are not in it, e.g. {missing[0]}"
    if extra:
        return False, f"{len(extra)} of its arrays are not in the model, e.g. {extra[0]}"
    for key, shape in wanted.items():
        if saved[key] != shape:
            return True, f"{key} has shape {saved[key]}, the model's has {shape}"
    return None


def _discard_pending_reads() -> None:
    """Finalize, quietly, the reads a failed Orbax restore left pending on its closed event loop:
    each would otherwise print a traceback of its own (or, at interpreter exit, an ImportError)
    repeating the failure being reported."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


class RunCheckpoints:
    """Save / restore the training state and the best parameters of one run."""

    def __init__(self, run_dir: str | pathlib.Path, keep_epochs: int = 2, primary: bool = True):
        """``primary``: whether this process writes ``progress.json`` and moves damaged
        checkpoints aside (process 0 of a multi-host run; the Orbax checkpoints are written by
        all processes together)."""
        self.run_dir = pathlib.Path(run_dir).absolute()
        self.primary = primary
        options = ocp.CheckpointManagerOptions(max_to_keep=keep_epochs, create=True, enable_async_checkpointing=False)
        self._state = ocp.CheckpointManager(self.run_dir / STATE, options=options)
        self._best = ocp.CheckpointManager(self.run_dir / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False))
        self.progress_path = self.run_dir / "progress.json"
        self._closed = False

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- progress -------------------------------------------------------------------------
    def progress(self) -> Optional[dict]:
        if not self.progress_path.exists():
            return None
        try:
            return json.loads(self.progress_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.progress_path}: unreadable progress file ({err}); "
                                  "delete the run directory to start afresh") from err

    def save_epoch(self, epoch: int, state, progress: dict, *, best_params=None, save_state: bool = True) -> None:
        """Checkpoint ``state`` after ``epoch`` (and ``best_params`` when this epoch is the best).
        ``save_state=False``: the run's last epoch, whose state would be dropped at once."""
        # One save at a time: in a multi-host run each save ends at a barrier named by its step.
        # Ctrl-C / SIGTERM are held until the whole epoch is written (emojax.interrupts).
        with interrupts.held():
            self._save_epoch(epoch, state, progress, best_params=best_params, save_state=save_state)

    def _save_epoch(self, epoch: int, state, progress: dict, *, best_params, save_state: bool) -> None:
        if save_state:
            self._state.save(epoch, args=ocp.args.StandardSave(state))
            self._state.wait_until_finished()
        if best_params is not None:
            self._best.save(epoch, args=ocp.args.StandardSave(best_params))
            self._best.wait_until_finished()
        if self.primary:
            write_json_atomic(self.progress_path, progress)

    # -- restore --------------------------------------------------------------------------
    def _restore(self, manager: ocp.CheckpointManager, step: int, target) -> tuple[Any, Optional[str]]:
        """``(restored, None)``, or ``(None, what is damaged)`` for a damaged checkpoint; raises
        ``CheckpointError`` for another model's checkpoint (today's clear error, kept distinct:
        moving another model's checkpoints aside would hide a wrong --workdir or config)."""
        path = pathlib.Path(manager.directory) / str(step)
        damage = _unreadable(path / _ITEM)
        if damage is not None:
            return None, damage
        mismatch = f"{path}: does not match this config's model ({{}}); this run directory holds another " \
                   "model's checkpoints: move it aside or use another --workdir"
        difference = _differences(path, target)
        if difference is not None and difference[0]:
            raise CheckpointError(mismatch.format(difference[1]))
        try:
            with interrupts.held():  # a restore stopped half-way leaves Orbax's reads pending
                return manager.restore(step, args=ocp.args.StandardRestore(target)), None
        except Exception as err:  # noqa: BLE001 - Orbax and TensorStore raise bare Exception for bad files
            failure = brief(err)
        # Out of the except block the failed restore's frames are released and can be collected.
        _discard_pending_reads()
        if difference is not None:
            raise CheckpointError(mismatch.format(difference[1]))
        return None, failure

    def restore_latest(self, epoch: int, target) -> tuple[int, Any]:
        """The newest intact training state at or before ``epoch`` (the one ``progress.json``
        names): ``(its epoch, state)``, or ``(0, target)`` when none is intact.

        Damaged states are moved to ``set_aside/`` with a logged warning naming them, and so
        is every state or best checkpoint newer than the epoch returned: the run replays those
        epochs, and Orbax would skip saving an epoch older than one it already holds. A finished
        run whose state was dropped (:func:`drop_resume_state`) cannot go on: ``CheckpointError``."""
        if (self.progress() or {}).get(STATE_DROPPED):
            raise CheckpointError(
                f"{self.run_dir}: the run finished and its training state was dropped to save space "
                "(train.keep_state was off, or launch.tool gc pruned it), so it cannot train more epochs; its "
                "evaluation and inference still work. To train further, train the run again under another "
                "--workdir with --config.train.keep_state=True")
        for step in sorted((s for s in self._state.all_steps() if s <= epoch), reverse=True):
            state, damage = self._restore(self._state, step, target)
            if damage is None:
                self._set_aside_after(step)
                return step, state
            moved = self.set_aside(self._state, step, "damaged")
            log.warning("%s: damaged training state (%s); moved to %s, resuming from an older epoch",
                        self.run_dir / "state" / str(step), damage, moved or "(left in place: not process 0)")
        if epoch > 0:
            log.warning("%s: no intact training state of epoch %d or before; the run starts again from epoch 1",
                        self.run_dir / "state", epoch)
        self._set_aside_after(0)
        return 0, target

    def restore_state(self, epoch: int, target):
        """The training state of exactly ``epoch`` (no fallback); ``CheckpointError`` if it is
        missing or damaged."""
        path = self.run_dir / STATE / str(epoch)
        if epoch not in self._state.all_steps():
            raise CheckpointError(f"{path}: checkpoint of epoch {epoch} named in {self.progress_path} is missing")
        state, damage = self._restore(self._state, epoch, target)
        if damage is not None:
            raise CheckpointError(f"{path}: damaged training state ({damage}); start the run's launch.train "
                                  "command again: it moves the damaged epoch aside and resumes from an older one")
        return state

    def restore_best(self, target, epoch: Optional[int] = None):
        """The selected epoch's parameters (default: the newest best checkpoint). A missing or
        damaged one cannot be replaced (one is kept): ``CheckpointError`` says how to rebuild it."""
        steps = self._best.all_steps()
        rebuild = (f"rebuild it: move {self.run_dir} aside and start the run's launch.train command again "
                   "(it trains from scratch)")
        if not steps:
            raise CheckpointError(f"{self.run_dir / 'best'}: no best checkpoint; has the run finished an epoch? "
                                  f"If it has, {rebuild}")
        epoch = max(steps) if epoch is None else epoch
        path = self.run_dir / "best" / str(epoch)
        if epoch not in steps:
            raise CheckpointError(f"{path}: the best checkpoint (epoch {epoch}) named in {self.progress_path} "
                                  f"is missing; {rebuild}")
        params, damage = self._restore(self._best, epoch, target)
        if damage is not None:
            raise CheckpointError(f"{path}: damaged checkpoint of the selected epoch ({damage}); {rebuild}")
        return params

    def drop_state(self) -> int:
        """:func:`drop_resume_state` of this finished run (process 0 only); returns the bytes freed."""
        if not self.primary:
            return 0
        freed = drop_resume_state(self.run_dir)
        self._state.reload()
        return freed

    # -- moving aside ---------------------------------------------------------------------
    def set_aside(self, manager: ocp.CheckpointManager, step: int, reason: str) -> Optional[pathlib.Path]:
        """Move checkpoint ``step`` of ``manager`` to ``set_aside/<kind>-<step>.<reason>-<time>``,
        out of Orbax's sight but kept for inspection (only process 0 moves; returns where to)."""
        if not self.primary:
            return None
        source = pathlib.Path(manager.directory) / str(step)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = self.run_dir / SET_ASIDE
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{source.parent.name}-{step}.{reason}-{stamp}"
        count = 1
        while target.exists():
            count += 1
            target = folder / f"{source.parent.name}-{step}.{reason}-{stamp}-{count}"
        os.replace(source, target)
        manager.reload()
        return target

    def _set_aside_after(self, epoch: int) -> None:
        for manager in (self._state, self._best):
            for step in [s for s in manager.all_steps() if s > epoch]:
                moved = self.set_aside(manager, step, f"after-epoch-{epoch}")
                log.warning("%s: newer than the epoch the run resumes from (%d); moved to %s",
                            pathlib.Path(manager.directory) / str(step), epoch, moved)

    def close(self) -> None:
        """Close the Orbax managers (idempotent); every path that stops using them, an error
        included, should call it so no Orbax thread outlives the run."""
        if self._closed:
            return
        with interrupts.held():
            self._state.close()
            self._best.close()
            self._closed = True


class RunLock:
    """Exclusive hold on a run directory while a process trains it, so two identical commands do
    not write the same checkpoints. ``fcntl.flock`` on an open descriptor: the operating system
    drops the lock when the process ends however it ends (kill -9 included), so a crashed run
    never leaves its directory locked. The file (``.lock``, never removed: removing it would let
    two processes lock two different files) records the holder's pid and host for the message."""

    def __init__(self, run_dir: str | pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder(fd)
            os.close(fd)
            raise RunBusyError(f"{self.run_dir}: another process is training this run ({holder}); wait for it to "
                               "finish, or stop it and start the command again to resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def holder(fd: int) -> str:
        """The holder as its lock file describes it (``pid 123 on host since ...``)."""
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if "pid" not in info:
            return "pid unknown: it is starting"
        return f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')}"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
