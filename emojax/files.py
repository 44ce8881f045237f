"""Fingerprints of values and files, and writes that a crash never leaves half done.

* :func:`digest` is the sha256 key of JSON-serialisable parts. Feature caches, stored fine-tuning
  inputs and encoder namespaces are named by it on users' disks, so its bytes must never change:
  a changed key would silently recompute every cache.
* :func:`file_sha256` hashes a file block by block (a video need not fit in memory).
* :func:`write_bytes_atomic` and its text / JSON forms write a temporary file in the target's
  folder, flush it to disk and ``os.replace`` it over the target: a reader sees the old file or
  the new one, never a part.
* :func:`write_bytes_if_changed` leaves a file that already holds the bytes alone, and
  :func:`copy_folder_files_atomic` copies a folder's files that way (a run's files rewritten at
  every start).
* :func:`building_folder` and :func:`publish_folder` do the same for a whole folder: it is built
  in a temporary sibling and renamed into place when complete.
* :func:`folder_problem` says why a folder a user names (workdir, cache, outputs) cannot be used,
  and :func:`write_problem` why it cannot be written, before any work starts.

Standard library only, so that light launchers (a sweep's ``--dry_run``) can use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import secrets
import shutil
import tempfile
from typing import Any, Iterator, Optional

HASH_BLOCK = 8 << 20  # bytes read at a time by file_sha256


def digest(*parts: Any) -> str:
    """sha256 hex of the canonical JSON of ``parts`` (keys sorted, ``str`` for what JSON lacks)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike, *, block: int = HASH_BLOCK) -> str:
    """sha256 hex of the bytes of the file ``path``, read ``block`` bytes at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            sha.update(chunk)
    return sha.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one step (its folder is created if missing).

    The bytes go to a hidden temporary file in the same folder (same file system, so the rename is
    atomic), are flushed to disk, then renamed over ``path``. The file gets the permissions a plain
    ``open`` would give it (the umask's); on any error the temporary file is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """:func:`write_bytes_atomic` unless ``path`` already holds exactly ``data``; returns whether
    it wrote. Files a run rewrites at every start (its config, meta, tokenizer) are then left
    untouched when unchanged, so a restart on a full disk cannot damage them."""
    path = pathlib.Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass  # unreadable: replace it
    write_bytes_atomic(path, data)
    return True


def copy_folder_files_atomic(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy every file of the folder ``source`` (recursively) into ``target``, each with
    :func:`write_bytes_if_changed`: a reader of ``target`` sees each file old or new, never a part,
    and unchanged files are not rewritten. Returns the relative names written."""
    source, target = pathlib.Path(source), pathlib.Path(target)
    written = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            name = path.relative_to(source)
            if write_bytes_if_changed(target / name, path.read_bytes()):
                written.append(str(name))
    return written


def read_json_object(path: str | os.PathLike) -> Optional[dict]:
    """The JSON object in the file ``path``, or ``None`` when it is missing, unreadable, not JSON,
    or not an object (a run's record files, read where an absent one is a valid answer)."""
    try:
        payload = json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8 (newlines written as they are)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: Optional[int] = 2,
                      sort_keys: bool = True, default=float) -> None:
    """:func:`write_text_atomic` of ``json.dumps(payload, ...)``; by default indented by 2, keys
    sorted, and NumPy / JAX scalars written as floats."""
    write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default))


def write_json_if_changed(path: str | os.PathLike, payload: Any) -> bool:
    """:func:`write_bytes_if_changed` of the JSON :func:`write_json_atomic` writes by default."""
    return write_bytes_if_changed(path, json.dumps(payload, indent=2, sort_keys=True, default=float).encode())


@contextlib.contextmanager
def building_folder(final: str | os.PathLike, *, prefix: Optional[str] = None) -> Iterator[pathlib.Path]:
    """A new empty folder beside ``final`` to build it in, for :func:`publish_folder`.

    Named ``{prefix}{pid}-{random}`` (``prefix`` by default ``.{final name}.partial-``), in
    ``final``'s folder (created if missing), so the rename into place is atomic and two processes
    never share one. Removed on leaving the block unless it was published, so an interrupted build
    leaves nothing behind."""
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    name = f".{final.name}.partial-" if prefix is None else prefix
    work = final.parent / f"{name}{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        yield work
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def publish_folder(work: str | os.PathLike, final: str | os.PathLike, *, sync: bool = False) -> bool:
    """Rename the finished folder ``work`` to ``final`` (absent or an empty folder): readers see no
    folder or a complete one. With ``sync`` every file in ``work`` is flushed to disk first.

    Returns ``True`` when moved, ``False`` when ``final`` exists and holds something (another
    process published first; ``work`` stays for the caller to drop); any other failure raises."""
    work, final = pathlib.Path(work), pathlib.Path(final)
    if sync:
        for path in work.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
    try:
        os.rename(work, final)
    except OSError:
        if not final.exists():
            raise
        return False
    return True


__all__ = ["digest", "file_sha256", "write_bytes_atomic", "write_bytes_if_changed", "copy_folder_files_atomic",
           "read_json_object", "write_text_atomic", "write_json_atomic", "write_json_if_changed",
           "building_folder", "publish_folder", "HASH_BLOCK"]


# A user's folders, checked before any work starts (kept free of JAX and Orbax for the light launchers).
def folder_problem(path: str | pathlib.Path) -> Optional[str]:
    """Why ``path`` cannot be used as a folder (it, or a folder above it, is a file), or ``None``
    when it is a folder or can be created. Checked before any work, so a mistyped path fails at
    once rather than after the features are computed."""
    path = pathlib.Path(path)
    if path.exists():
        return None if path.is_dir() else f"{path} is a file, not a folder"
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} (above {path}) is a file, not a folder"
    return None


def write_problem(path: str | pathlib.Path) -> Optional[str]:
    """Why files cannot be written in the folder ``path`` (or, when it does not exist yet, in the
    nearest existing folder above it, where it would be created), or ``None`` when they can. A
    small file is created there and removed, so a read-only mount or missing permission is found
    before any work, not after it."""
    path = pathlib.Path(path).absolute()
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if folder is None or not folder.is_dir():
        return folder_problem(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".emojax-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{folder} cannot be written ({err.strerror or err})"
    return None
