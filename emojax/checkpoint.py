"""Run checkpoints with Orbax: the last training state (for resuming) and the best parameters.

Layout inside a run directory::

    state/<epoch>/   full TrainState of the last finished epoch (params, optimizer, step, RNG,
                     loss state), Orbax, ``keep_epochs`` kept
    best/<epoch>/    parameters of the epoch selected on dev, Orbax, one kept
    progress.json    history, best epoch and early-stopping state, written after the checkpoint

``progress.json`` is replaced atomically after the Orbax save has finished, so a run killed at
any moment resumes from a consistent epoch.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Optional

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from another config; the message names the path."""


def write_json_atomic(path: str | pathlib.Path, payload: Any) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=float)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunCheckpoints:
    """Save / restore the training state and the best parameters of one run."""

    def __init__(self, run_dir: str | pathlib.Path, keep_epochs: int = 2, primary: bool = True):
        """``primary``: whether this process writes ``progress.json`` (process 0 of a multi-host
        run; the Orbax checkpoints are written by all processes together)."""
        self.run_dir = pathlib.Path(run_dir).absolute()
        self.primary = primary
        options = ocp.CheckpointManagerOptions(max_to_keep=keep_epochs, create=True)
        self._state = ocp.CheckpointManager(self.run_dir / "state", options=options)
        self._best = ocp.CheckpointManager(self.run_dir / "best",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
        self.progress_path = self.run_dir / "progress.json"

    # -- progress -------------------------------------------------------------------------
    def progress(self) -> Optional[dict]:
        if not self.progress_path.exists():
            return None
        try:
            return json.loads(self.progress_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.progress_path}: unreadable progress file ({err}); "
                                  "delete the run directory to start afresh") from err

    def save_epoch(self, epoch: int, state, progress: dict, *, best_params=None) -> None:
        """Checkpoint ``state`` after ``epoch`` (and ``best_params`` when this epoch is the best)."""
        # One save at a time: in a multi-host run each save ends at a barrier named by its step.
        self._state.save(epoch, args=ocp.args.StandardSave(state))
        self._state.wait_until_finished()
        if best_params is not None:
            self._best.save(epoch, args=ocp.args.StandardSave(best_params))
            self._best.wait_until_finished()
        if self.primary:
            write_json_atomic(self.progress_path, progress)

    def restore_state(self, epoch: int, target):
        if epoch not in self._state.all_steps():
            raise CheckpointError(f"{self.run_dir / 'state' / str(epoch)}: checkpoint of epoch {epoch} named in "
                                  f"{self.progress_path} is missing")
        try:
            return self._state.restore(epoch, args=ocp.args.StandardRestore(target))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.run_dir / 'state' / str(epoch)}: does not match this config's "
                                  f"model ({err})") from err

    def restore_best(self, target, epoch: Optional[int] = None):
        steps = self._best.all_steps()
        if not steps:
            raise CheckpointError(f"{self.run_dir / 'best'}: no best checkpoint; has the run finished an epoch?")
        epoch = max(steps) if epoch is None else epoch
        try:
            return self._best.restore(epoch, args=ocp.args.StandardRestore(target))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.run_dir / 'best' / str(epoch)}: does not match this config's "
                                  f"model ({err})") from err

    def close(self) -> None:
        self._state.close()
        self._best.close()
