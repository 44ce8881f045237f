"""Where a run came from: ``provenance.json`` in its directory, one entry per start.

Each time ``fit`` starts training a run (a new run, or a killed one resumed) it appends an entry
with the emojax version, the git commit of the checkout emojax was imported from and whether its
tracked files were changed (``null`` when emojax is not run from a git checkout, or git is
missing), the versions of the packages that decide what is computed (:data:`PACKAGES`, from
``importlib.metadata``), the devices and their kind, the host, the command line and the start
time; when the start ends (the run finished, or stopped by ``max_epochs``) the entry gets its end
time. A start killed on the way keeps ``"ended": null``. The file is replaced atomically at each
write (:func:`emojax.files.write_json_atomic`), so a reader sees it whole; it is a file of its own
because ``meta.json`` is rewritten only when what inference needs changes.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import pathlib
import platform
import subprocess
import sys
from typing import Any, Optional, Sequence

from emojax.files import read_json_object, write_json_atomic

PROVENANCE = "provenance.json"
# The distributions whose versions a run records: emojax itself and what decides its numbers.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy")
GIT_TIMEOUT_S = 10.0


def now() -> str:
    """The time now, in UTC, as ISO 8601 (``2025-01-31T12:00:00.123456+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def package_version(name: str) -> Optional[str]:
    """The installed version of the distribution ``name`` (``None``: not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(root: pathlib.Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Optional[str | pathlib.Path] = None) -> Optional[dict]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout whose top folder is ``root`` (by
    default the folder above the ``emojax`` package); ``dirty``: a tracked file differs from the
    commit (untracked files, such as run folders, do not count). ``None`` when ``root`` is not
    the top of a checkout (an installed emojax), or git is missing or fails: never an error."""
    root = pathlib.Path(root) if root is not None else pathlib.Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or pathlib.Path(top.strip()).resolve() != root.resolve():
        return None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def devices() -> list[dict]:
    """Every device JAX sees (all processes'): id, platform, kind (``cpu``, ``NVIDIA H100 80GB
    HBM3``, ...) and the process it belongs to."""
    import jax  # the training process has it loaded; reading a provenance file does not need it

    return [{"id": int(d.id), "platform": d.platform, "kind": d.device_kind, "process": int(d.process_index)}
            for d in jax.devices()]


def start_entry(*, argv: Optional[Sequence[str]] = None, device_list: Optional[list[dict]] = None) -> dict:
    """The entry of a start now: versions, git state, devices, host, command line, start time."""
    return {
        "started": now(),
        "ended": None,
        "finished": None,
        "emojax": package_version("emojax"),
        "git": git_state(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "devices": devices() if device_list is None else device_list,
        "host": platform.node(),
        "command": list(sys.argv if argv is None else argv),
    }


def read_provenance(run_dir: str | pathlib.Path) -> dict:
    """The run's ``provenance.json`` (``{"starts": [...]}``); an empty record when it has none.
    A file that is not such a record is refused, naming it."""
    path = pathlib.Path(run_dir) / PROVENANCE
    if not path.exists():
        return {"starts": []}
    record = read_json_object(path)
    if record is None or not isinstance(record.get("starts"), list):
        raise ValueError(f"{path}: not a provenance record (a JSON object with a list 'starts'); move it aside")
    return record


def record_start(run_dir: str | pathlib.Path, entry: Optional[dict] = None) -> dict:
    """Append a start (:func:`start_entry` unless given) to the run's ``provenance.json``;
    returns the entry."""
    entry = start_entry() if entry is None else entry
    record = read_provenance(run_dir)
    record["starts"].append(entry)
    write_json_atomic(pathlib.Path(run_dir) / PROVENANCE, record, default=str)
    return entry


def record_end(run_dir: str | pathlib.Path, *, finished: bool) -> Any:
    """Give the run's last start its end time, and whether the run finished training (``False``:
    stopped early by ``max_epochs``, to be resumed)."""
    record = read_provenance(run_dir)
    if not record["starts"]:
        raise ValueError(f"{pathlib.Path(run_dir) / PROVENANCE}: no start to end")
    record["starts"][-1].update(ended=now(), finished=bool(finished))
    write_json_atomic(pathlib.Path(run_dir) / PROVENANCE, record, default=str)
    return record["starts"][-1]
