"""A feature cache for frozen encoders: SafeTensors shards of many samples each.

Layout under the cache root::

    .emojax-feature-cache                               marker: what the folder is, its format version
    {namespace}/shard-{time}-{pid}-{random}.safetensors
    _inputs/{key}/index.json, *.bin                     fine-tuning runs' stored encoder inputs

A namespace is one encoder with one preprocessing and pooling setting (its key is a hash of
the weights and settings, built by the caller). Each shard holds a ``features`` tensor
``(n, dim)`` and, in the SafeTensors metadata, the ``n`` sample keys and a sha256 per row (of
the key and the row's bytes). Shards are written to a temporary file and renamed into place, and
every writer writes new shards under unique names, so concurrent runs filling the same cache never
corrupt it. Rows that are not finite are never stored (a NaN feature would otherwise be served on
every rerun).

A damaged shard must never be served, since a model would silently train on wrong features:

* on open, shards are scanned; a truncated one or one with a bad header (size mismatch) is
  reported and moved aside (``*.safetensors.corrupt``), so its entries are recomputed;
* the first time a shard's rows are read, every row is checked against its sha256, which catches
  what keeps the header intact (rows reordered, bytes overwritten); a mismatch is reported naming
  the shard, which is moved aside, and its entries are recomputed;
* a shard written before checksums were stored cannot be verified: it is removed (once, with a
  log line) and its entries recomputed rather than trusted.

:meth:`FeatureCache.get_or_compute` computes missing rows in batches and stores each batch as one
shard as soon as it is done, so an interrupted pass keeps every finished batch. Reads go through
memory mapping; a host-memory LRU tier keeps recently read rows.

Clearing (:meth:`FeatureCache.plan_clear`, :meth:`FeatureCache.clear`, ``launch.tool cache
--clear``) deletes only what this module and the fine-tuning input store wrote and can show they
wrote, since a mistyped folder must never lose a user's files:

* the root must hold the marker :data:`MARKER`, written (only if absent) when a cache is opened
  on an empty folder. A folder without it counts as a cache of an earlier version only when
  everything in it is something the cache writes (namespace folders of 24 hex digits holding only
  shard files, aside copies and write temporaries; ``_inputs`` holding only input sets and their
  temporary folders); the marker is then written. Anything else is refused by name
  (:class:`NotACacheError`) and left as it is;
* inside a namespace folder only files named as shards (``shard-{time}-{pid}-{random}.safetensors``
  and their ``.corrupt`` aside copies) are deleted; any other file is reported and kept, and the
  folder is removed only once empty (``rmdir``, which never removes a folder that holds
  something). A writer whose new namespace folder is removed before its temporary file exists
  makes the folder again (:meth:`FeatureCache.put_many`);
* an input set is a folder of 32 hex digits holding ``index.json`` and ``*.bin`` files only; it
  is renamed aside first (readers see it whole or not at all), then those files are deleted.
  ``_inputs`` itself is kept, since a run may be about to build a set in it;
* temporary files and folders of writers (``.*.tmp``, ``.{key}-*``, ``.{key}.partial-{pid}-*``)
  are kept while younger than :data:`TEMP_GRACE_S` or while the process they name runs on this
  host; older ones are left by a writer that died and are deleted like the rest.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import struct
import time
from typing import Callable, Optional, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from emojax.data.media import split_ref
from emojax.files import file_sha256, write_bytes_atomic, write_json_atomic
from emojax.progress import progress_bar

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
INPUTS_DIR = "_inputs"  # fine-tuning runs' stored encoder inputs, beside the namespaces
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
ROW_DIGESTS = "row_sha256"  # shard metadata: JSON list, the sha256 of each row (see row_digest)
CORRUPT_SUFFIX = ".corrupt"  # a shard that failed its checks is renamed to {name}.safetensors.corrupt
WRITE_BATCH_ROWS = 256  # rows computed and stored as one shard by get_or_compute

# What the cache writes, by name: clearing deletes nothing else (see the module docstring).
MARKER = ".emojax-feature-cache"  # at the root: {"what": MARKER_WHAT, "format": MARKER_FORMAT}
MARKER_WHAT = "emojax feature cache"
MARKER_FORMAT = 1
TEMP_GRACE_S = 3600.0  # a writer's temporary file or folder younger than this is a write in progress
_NAMESPACE_NAME = re.compile(r"[0-9a-f]{24}")  # the featurizers' namespaces: 24 hex digits of a digest
_SHARD_NAME = re.compile(r"shard-\d+-\d+-[0-9a-f]{8}\.safetensors")
_ASIDE_NAME = re.compile(r"shard-\d+-\d+-[0-9a-f]{8}\.safetensors\.corrupt")
# write_bytes_atomic's temporary (earlier versions: without the random part); the group is the writer's pid
_SHARD_TEMP_NAME = re.compile(r"\.shard-\d+-(\d+)-[0-9a-f]{8}\.safetensors(?:\.[0-9a-f]{8})?\.tmp")
_MARKER_TEMP_NAME = re.compile(re.escape(f".{MARKER}.") + r"[0-9a-f]{8}\.tmp")
_WRITE_CHECK_NAME = re.compile(r"\.emojax-write-check-[a-z0-9_]{8}")  # emojax.files.write_problem's probe, short-lived
_INPUT_SET_NAME = re.compile(r"[0-9a-f]{32}")  # emojax.training.finetune / finetune_text: digest(...)[:32]
_INPUT_FILE_NAME = re.compile(r"index\.json|[A-Za-z0-9_]+\.bin")
# an input set being built (tempfile.mkdtemp; emojax.files.building_folder, whose group is the
# writer's pid) or being removed (finetune._discard_store, and clear below)
_INPUT_TEMP_NAME = re.compile(r"\.[0-9a-f]{32}(?:-[a-z0-9_]{8}|\.partial-(\d+)-[0-9a-f]{8}|-discarded-[0-9a-f]{8})")


_IDENTITY_MEMO: dict[tuple, str] = {}


def file_identity(path: str | os.PathLike) -> str:
    """``path`` + size + sha256 of the content: a changed file gets a new identity.

    A media reference to a segment of a recording (``"dialogue.avi#t=6.29,8.24"``,
    :func:`emojax.data.media.segment_ref`) gets the file's identity plus its segment, so two
    utterances of one recording never share a cache entry. Memoised per process on
    ``(path, size, mtime_ns)``, so a file is hashed once per run.
    """
    file, segment = split_ref(os.fspath(path))
    stat = os.stat(file)
    memo_key = (os.path.abspath(file), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _IDENTITY_MEMO:
        _IDENTITY_MEMO[memo_key] = f"{os.path.basename(file)}:{stat.st_size}:{file_sha256(file)}"
    identity = _IDENTITY_MEMO[memo_key]
    return identity if segment is None else f"{identity}#t={segment[0]:.4f},{segment[1]:.4f}"


def row_digest(key: str, row: np.ndarray) -> str:
    """sha256 of a row's key, dtype and bytes: stored per row so that reordered rows or overwritten
    bytes (which leave the SafeTensors header valid) are caught before a row is served."""
    row = np.ascontiguousarray(row)
    digest = hashlib.sha256(key.encode())
    digest.update(b"\0" + row.dtype.str.encode() + b"\0")
    digest.update(row.tobytes())
    return digest.hexdigest()


def check_shard(path: pathlib.Path) -> Optional[str]:
    """``None`` when the shard's header parses and its size matches the tensors; else the reason."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "shorter than a SafeTensors header"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"header length {header_len} exceeds the file size {size}"
            header = json.loads(handle.read(header_len))
        end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            return f"size {size} bytes, but the header describes {8 + header_len + end}"
        features = header.get("features")
        keys = json.loads(header.get("__metadata__", {}).get("keys", "null"))
        if features is None or keys is None or len(keys) != features["shape"][0]:
            return "no features tensor or key list, or they disagree in length"
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({err})"


class NotACacheError(ValueError):
    """A folder is not a feature cache emojax wrote, so nothing in it is deleted; the message names
    the folder and what it holds."""


def is_namespace_name(name: str) -> bool:
    """Whether ``name`` is a namespace as the featurizers make them (24 hex digits of a digest)."""
    return _NAMESPACE_NAME.fullmatch(name) is not None


def _shard_file_kind(entry: os.DirEntry) -> tuple[Optional[str], Optional[str]]:
    """What a namespace folder's entry is: ``("shard" | "aside" | "temp", writer pid or None)``,
    or ``(None, None)`` for anything the cache never writes (links and folders included)."""
    if not entry.is_file(follow_symlinks=False):
        return None, None
    if _SHARD_NAME.fullmatch(entry.name):
        return "shard", None
    if _ASIDE_NAME.fullmatch(entry.name):
        return "aside", None
    temp = _SHARD_TEMP_NAME.fullmatch(entry.name)
    return ("temp", temp.group(1)) if temp else (None, None)


def _input_files_problem(folder: pathlib.Path, *, need_index: bool) -> Optional[str]:
    """``None`` when ``folder`` holds only files the fine-tuning input store writes (``index.json``
    and ``*.bin``; with ``need_index``, ``index.json`` among them), else why not."""
    names = []
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False) or not _INPUT_FILE_NAME.fullmatch(entry.name):
            return f"holds {entry.name}, which the input store never writes"
        names.append(entry.name)
    if need_index and "index.json" not in names:
        return "holds no index.json"
    return None


def _entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The entries of ``folder`` by name; none when it is gone (removed by a clear or a writer
    meanwhile)."""
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _foreign_entries(root: pathlib.Path, limit: int = 4) -> list[str]:
    """Up to ``limit`` entries of ``root`` (two levels deep) that a feature cache never writes,
    each as ``name (why)``; empty when every entry is the cache's own."""
    found: list[str] = []
    for entry in _entries(root):
        if len(found) >= limit:
            break
        name = entry.name
        if entry.is_symlink():
            found.append(f"{name} (a link)")
        elif not entry.is_dir():
            if not (name == MARKER or _MARKER_TEMP_NAME.fullmatch(name) or _WRITE_CHECK_NAME.fullmatch(name)):
                found.append(f"{name} (a file)")
        elif name == INPUTS_DIR:
            for sub in _entries(entry.path):
                temp = _INPUT_TEMP_NAME.fullmatch(sub.name)
                if sub.is_symlink() or not sub.is_dir() or not (temp or _INPUT_SET_NAME.fullmatch(sub.name)):
                    found.append(f"{name}/{sub.name} (not an input set)")
                else:
                    try:
                        problem = _input_files_problem(pathlib.Path(sub.path), need_index=not temp)
                    except FileNotFoundError:  # published or discarded by a writer meanwhile
                        continue
                    if problem:
                        found.append(f"{name}/{sub.name}/ ({problem})")
                if len(found) >= limit:
                    break
        elif not is_namespace_name(name):
            found.append(f"{name}/ (not a namespace: 24 hex digits)")
        else:
            for sub in _entries(entry.path):
                if _shard_file_kind(sub)[0] is None:
                    found.append(f"{name}/{sub.name} (not a shard)")
                    break
    return found


def cache_problem(root: str | os.PathLike) -> Optional[str]:
    """``None`` when ``root`` is a feature cache emojax wrote, else why not (one line, naming it).

    A cache holds the :data:`MARKER` file. A folder without it counts as a cache of an earlier
    version (written before the marker existed) when everything in it is something the cache
    writes; an empty folder counts as a new cache."""
    root = pathlib.Path(root)
    marker = root / MARKER
    if not root.is_dir():
        return f"{root} is not a folder"
    if os.path.lexists(marker):
        try:
            info = json.loads(marker.read_text())
            what, version = info.get("what"), int(info.get("format"))
        except (OSError, ValueError, AttributeError, TypeError) as err:
            return f"{marker} is unreadable ({err}); it is not a marker emojax wrote, so {root} is left as it is"
        if what != MARKER_WHAT:
            return f"{marker} describes {what!r}, not an {MARKER_WHAT}, so {root} is left as it is"
        if version > MARKER_FORMAT:
            return (f"{root} is a feature cache of format {version}, newer than this emojax knows ({MARKER_FORMAT}); "
                    "use the emojax that wrote it")
        return None
    foreign = _foreign_entries(root)
    if not foreign:
        return None
    found = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (f"{root} is not a feature cache emojax wrote (no {MARKER} marker; it holds {found}); nothing in it "
            "was changed; give the cache folder itself (WORKDIR/cache/features, or the run's cache.dir)")


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (when it cannot be told, it counts as running)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def _write_in_progress(path: pathlib.Path, pid: Optional[str], now: float) -> Optional[str]:
    """Why the writer's temporary file or folder ``path`` may still be in use, or ``None`` when its
    writer is gone: not running on this host (when the name records it) and nothing in it
    modified for :data:`TEMP_GRACE_S` (a writer on another host sharing the folder)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for entry in os.scandir(path):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    what = "temporary folder" if path.is_dir() else "temporary file"
    if pid is not None and _pid_running(int(pid)):
        return f"{what} of a write in progress (process {pid} is running)"
    if now - newest < TEMP_GRACE_S:
        return (f"{what} of a write that may be in progress (modified {now - newest:.0f} s ago; "
                f"kept for {TEMP_GRACE_S:.0f} s)")
    return None


@dataclasses.dataclass
class NamespaceClear:
    """One namespace's part of a :class:`ClearPlan`."""

    name: str
    folder: pathlib.Path
    shards: list[pathlib.Path]  # shard files and their .corrupt aside copies
    stale: list[pathlib.Path]  # temporary files of writers that are gone
    bytes: int


@dataclasses.dataclass
class ClearPlan:
    """What :meth:`FeatureCache.plan_clear` will delete, and what it leaves alone and why, so that
    a caller can show it before :meth:`FeatureCache.apply_clear` deletes anything."""

    root: pathlib.Path
    namespaces: list[NamespaceClear]
    input_sets: list[tuple[pathlib.Path, int]]  # (folder, bytes): stored input sets
    stale_inputs: list[tuple[pathlib.Path, int]]  # (folder, bytes): temporary input folders of writers that are gone
    kept: list[tuple[pathlib.Path, str]]  # left alone: (path, why)

    @property
    def shard_count(self) -> int:
        return sum(len(ns.shards) for ns in self.namespaces)

    @property
    def bytes(self) -> int:
        return (sum(ns.bytes for ns in self.namespaces) + sum(b for _, b in self.input_sets)
                + sum(b for _, b in self.stale_inputs))


def _tree_bytes(folder: pathlib.Path) -> int:
    return sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(folder) if e.is_file(follow_symlinks=False))


class FeatureCache:
    """Features by ``(namespace, key)``; see the module docstring."""

    def __init__(self, root: str | os.PathLike, *, host_bytes: int = 8 << 30, device_bytes: int = 4 << 30):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_bytes = int(host_bytes)
        self.device_bytes = int(device_bytes)
        self._index: dict[str, dict[str, tuple[pathlib.Path, int]]] = {}
        self._host: collections.OrderedDict[tuple[str, str], np.ndarray] = collections.OrderedDict()
        self._host_used = 0
        self._device: collections.OrderedDict[tuple[str, str], object] = collections.OrderedDict()
        self._device_used = 0
        # Shards whose every row matched its checksum in this process (immutable once written,
        # so each is hashed once per process, not once per read).
        self._verified: set[pathlib.Path] = set()
        self._claim()

    def _claim(self) -> None:
        """Write the :data:`MARKER` (only if absent) when the root is empty or holds only what a
        cache writes (an earlier version's cache): clearing then knows the folder as a cache. A
        root that holds anything else gets no marker, so clearing refuses it."""
        marker = self.root / MARKER
        try:
            if os.path.lexists(marker) or cache_problem(self.root) is not None:
                return
            write_json_atomic(marker, {"what": MARKER_WHAT, "format": MARKER_FORMAT})
        except OSError as err:  # a read-only cache is still read; clearing applies the same rule
            log.debug("feature cache %s: could not write %s (%s)", self.root, marker, err)

    def problem(self) -> Optional[str]:
        """``None`` when the root is a feature cache emojax wrote (see :func:`cache_problem`)."""
        return cache_problem(self.root)

    # -- index ----------------------------------------------------------------------------
    def _scan(self, namespace: str) -> dict[str, tuple[pathlib.Path, int]]:
        index: dict[str, tuple[pathlib.Path, int]] = {}
        folder = self.root / namespace
        if folder.is_dir():
            for shard in sorted(folder.glob(f"shard-*{_SUFFIX}")):  # what put_many names, nothing else
                problem = check_shard(shard)
                digests = None
                if problem is None:
                    try:
                        with safe_open(str(shard), framework="numpy") as handle:
                            metadata = handle.metadata()
                        keys = json.loads(metadata["keys"])
                        digests = metadata.get(ROW_DIGESTS)
                        if digests is not None and len(json.loads(digests)) != len(keys):
                            problem = "its row checksums and keys disagree in length"
                    except (OSError, ValueError, KeyError, SafetensorError) as err:
                        problem = f"unreadable ({err})"
                if problem:
                    self._discard(shard, problem)
                    continue
                if digests is None:
                    self._discard_unverifiable(shard)
                    continue
                for row, key in enumerate(keys):
                    index[key] = (shard, row)
        self._index[namespace] = index
        return index

    def _discard(self, shard: pathlib.Path, problem: str) -> None:
        """Move a shard that failed its checks aside (kept for inspection, never read again), so
        that it is reported once and its entries are recomputed."""
        aside = shard.with_name(shard.name + CORRUPT_SUFFIX)
        try:
            os.replace(shard, aside)
            where = f"moved aside to {aside.name}"
        except FileNotFoundError:  # another process moved it first
            where = "already moved aside"
        except OSError as err:
            where = f"could not be moved aside ({err}), ignored"
        log.warning("feature cache: shard %s is corrupt (%s); %s, its entries will be recomputed",
                    shard, problem, where)
        self._verified.discard(shard)

    def _discard_unverifiable(self, shard: pathlib.Path) -> None:
        """Remove a shard written before row checksums were stored: its rows cannot be verified,
        so they are recomputed once rather than trusted."""
        try:
            shard.unlink()
            what = "removed"
        except FileNotFoundError:  # another process removed it first
            what = "already removed"
        except OSError as err:
            what = f"could not be removed ({err}), ignored"
        log.warning("feature cache: shard %s was written without row checksums and cannot be verified; %s, "
                    "its entries will be recomputed once", shard, what)

    def _forget_shard(self, namespace: str, shard: pathlib.Path) -> None:
        """Drop every index entry that points into ``shard`` (so those keys count as missing)."""
        index = self._index.get(namespace, {})
        for key in [k for k, (s, _) in index.items() if s == shard]:
            del index[key]

    def _read_verified(self, shard: pathlib.Path) -> tuple[Optional[np.ndarray], Optional[str]]:
        """``(features, None)`` when every row of ``shard`` matches its checksum (checked on the
        first read in this process), else ``(None, reason)``."""
        with safe_open(str(shard), framework="numpy") as handle:
            metadata = handle.metadata()
            tensor = handle.get_tensor("features")
        if shard in self._verified:
            return tensor, None
        keys = json.loads(metadata["keys"])
        digests = json.loads(metadata[ROW_DIGESTS])
        if len(keys) != len(tensor) or len(digests) != len(tensor):
            return None, f"{len(tensor)} rows, {len(keys)} keys and {len(digests)} checksums"
        bad = [row for row, (key, digest) in enumerate(zip(keys, digests)) if row_digest(key, tensor[row]) != digest]
        if bad:
            return None, (f"{len(bad)} of {len(keys)} rows do not match their sha256 (first: row {bad[0]}, "
                          f"key {keys[bad[0]]})")
        self._verified.add(shard)
        return tensor, None

    def _namespace_index(self, namespace: str) -> dict[str, tuple[pathlib.Path, int]]:
        return self._index[namespace] if namespace in self._index else self._scan(namespace)

    def namespaces(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    @property
    def inputs_root(self) -> pathlib.Path:
        """Where fine-tuning runs keep their preprocessed media inputs (:mod:`emojax.training.finetune`)."""
        return self.root / INPUTS_DIR

    def inputs_bytes(self) -> int:
        """Bytes of stored fine-tuning inputs."""
        root = self.inputs_root
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0

    def clear_inputs(self) -> int:
        """Remove the stored fine-tuning input sets emojax wrote (see :meth:`plan_clear`); returns
        how many were removed."""
        return self.apply_clear(self.plan_clear([], inputs=True))["input_sets"]

    # -- reads ----------------------------------------------------------------------------
    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``keys`` (missing keys are absent from the result)."""
        index = self._namespace_index(namespace)
        found: dict[str, np.ndarray] = {}
        by_shard: dict[pathlib.Path, list[tuple[str, int]]] = collections.defaultdict(list)
        for key in keys:
            hit = self._host.get((namespace, key))
            if hit is not None:
                self._host.move_to_end((namespace, key))
                found[key] = hit
            elif key in index:
                shard, row = index[key]
                by_shard[shard].append((key, row))
        for shard, wanted in by_shard.items():
            try:
                tensor, problem = self._read_verified(shard)
            except FileNotFoundError as err:  # moved aside by another process that found it corrupt
                log.warning("feature cache: cannot read %s (%s); its entries will be recomputed", shard, err)
                self._forget_shard(namespace, shard)
                continue
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
                tensor, problem = None, f"unreadable ({err})"
            if problem is not None:
                self._discard(shard, problem)
                self._forget_shard(namespace, shard)
                continue
            rows = tensor[np.asarray([row for _, row in wanted])]
            for (key, _), value in zip(wanted, rows):
                found[key] = value
                self._remember(namespace, key, value)
        return found

    def _remember(self, namespace: str, key: str, value: np.ndarray) -> None:
        if value.nbytes > self.host_bytes:
            return
        self._host[(namespace, key)] = value
        self._host_used += value.nbytes
        while self._host_used > self.host_bytes:
            _, old = self._host.popitem(last=False)
            self._host_used -= old.nbytes

    def device_get(self, namespace: str, keys: Sequence[str]):
        """Rows for ``keys`` as one on-device ``(n, dim)`` array, through an on-device LRU tier."""
        # Import cost: JAX is loaded here only, so the cache reads and clears without it (launch.tool cache).
        import jax
        import jax.numpy as jnp

        rows = []
        missing = [k for k in keys if (namespace, k) not in self._device]
        host = self.get_many(namespace, missing) if missing else {}
        absent = [k for k in missing if k not in host]
        if absent:
            raise KeyError(f"feature cache {self.root / namespace}: {len(absent)} key(s) not cached, e.g. {absent[0]}")
        for key in keys:
            slot = (namespace, key)
            if slot in self._device:
                self._device.move_to_end(slot)
                rows.append(self._device[slot])
                continue
            value = jax.device_put(host[key])
            rows.append(value)
            if value.nbytes <= self.device_bytes:
                self._device[slot] = value
                self._device_used += value.nbytes
                while self._device_used > self.device_bytes:
                    _, old = self._device.popitem(last=False)
                    self._device_used -= old.nbytes
        return jnp.stack(rows)

    # -- writes ---------------------------------------------------------------------------
    def put_many(self, namespace: str, keys: Sequence[str], array) -> Optional[pathlib.Path]:
        """Store rows ``array[i]`` under ``keys[i]`` as one new shard (atomic), each with its
        sha256. Rows that are not finite are skipped with a warning: stored, they would be served
        on every rerun; skipped, they are computed again when next asked for. Returns the shard,
        or ``None`` when no row was stored."""
        array = np.ascontiguousarray(np.asarray(array))
        keys = list(keys)
        if len(keys) != len(array):
            raise ValueError(f"put_many: {len(keys)} keys for {len(array)} rows")
        folder = self.root / namespace
        if len(keys):
            finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if not finite.all():
                first = keys[int(np.argmin(finite))]
                log.warning("feature cache %s: not storing %d of %d row(s) with non-finite values (first key %s); "
                            "they will be computed again when asked for", folder, int((~finite).sum()), len(keys),
                            first)
                keys = [key for key, ok in zip(keys, finite) if ok]
                array = np.ascontiguousarray(array[finite])
        if not len(keys):
            return None
        folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        final = folder / name
        digests = [row_digest(key, row) for key, row in zip(keys, array)]
        data = save({"features": array}, metadata={"keys": json.dumps(keys), ROW_DIGESTS: json.dumps(digests)})
        for attempt in range(3):
            try:
                write_bytes_atomic(final, data)
                break
            except FileNotFoundError:
                # A clear removed the namespace folder, empty, between write_bytes_atomic's mkdir
                # and its temporary file: it makes the folder again on the next try.
                if attempt == 2:
                    raise
        self._verified.add(final)  # written from these rows just now
        index = self._namespace_index(namespace)
        for row, key in enumerate(keys):
            index[key] = (final, row)
        return final

    def get_or_compute(self, namespace: str, keys: Sequence[str],
                       compute_fn: Callable[[list[int]], np.ndarray], *, batch_size: int = WRITE_BATCH_ROWS,
                       progress: bool = True, desc: Optional[str] = None,
                       keep: Optional[Callable[[np.ndarray], bool]] = None) -> np.ndarray:
        """Rows for all ``keys``: cached ones read; the rest computed by ``compute_fn(indices)`` in
        batches of ``batch_size``, each batch stored as one shard as soon as it is computed, so a
        crash during a long pass loses at most the batch in progress and a rerun computes only
        what is still missing. Rows that ``keep`` rejects (e.g. an unreadable input's NaN row)
        and non-finite rows are returned but not stored. A progress bar counts the computed rows."""
        keys = list(keys)
        found = self.get_many(namespace, keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        bar = progress_bar(total=len(missing), desc=desc or f"features {namespace[:8]}",
                           enabled=progress and bool(missing), leave=False)
        try:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                values = np.asarray(compute_fn(chunk))
                if len(values) != len(chunk):
                    raise ValueError(f"feature cache {self.root / namespace}: the compute function returned "
                                     f"{len(values)} rows for {len(chunk)} inputs")
                store = [j for j in range(len(chunk)) if keep is None or keep(values[j])]
                if store:
                    self.put_many(namespace, [keys[chunk[j]] for j in store], values[store])
                for i, value in zip(chunk, values):
                    found[keys[i]] = value
                bar.update(len(chunk))
        finally:
            bar.close()
        return np.stack([found[key] for key in keys]) if keys else np.zeros((0, 0), np.float32)

    # -- housekeeping ---------------------------------------------------------------------
    def stats(self, namespaces: Optional[Sequence[str]] = None) -> dict[str, dict]:
        """Per namespace (default: every one): entries, feature dim, shards and bytes on disk."""
        out = {}
        for namespace in self.namespaces() if namespaces is None else namespaces:
            index = self._scan(namespace)
            shards = list((self.root / namespace).glob(f"shard-*{_SUFFIX}"))
            dim = 0
            if index:
                shard, _ = next(iter(index.values()))
                with safe_open(str(shard), framework="numpy") as handle:
                    dim = handle.get_slice("features").get_shape()[1]
            out[namespace] = {"entries": len(index), "dim": dim, "shards": len(shards),
                              "bytes": sum(s.stat().st_size for s in shards)}
        return out

    def plan_clear(self, namespaces: Optional[Sequence[str]] = None, *, inputs: bool = False) -> ClearPlan:
        """What clearing ``namespaces`` (default: every one, and whatever else is at the root,
        which is reported and never deleted) and, with ``inputs``, the stored fine-tuning inputs
        would delete; nothing is deleted yet. Raises :class:`NotACacheError` for a root that is not
        a feature cache emojax wrote (see the module docstring for what counts)."""
        problem = cache_problem(self.root)
        if problem:
            raise NotACacheError(problem)
        self._claim()  # an earlier version's cache gets its marker
        now = time.time()
        plan = ClearPlan(self.root, [], [], [], [])
        if namespaces is None:
            names = []
            for entry in sorted(self.root.iterdir()):
                if entry.name in (MARKER, INPUTS_DIR) or _MARKER_TEMP_NAME.fullmatch(entry.name) or \
                        _WRITE_CHECK_NAME.fullmatch(entry.name):
                    continue  # the cache's own files at the root, never deleted
                if entry.is_dir() and not entry.is_symlink() and is_namespace_name(entry.name):
                    names.append(entry.name)
                elif entry.is_dir() and not entry.is_symlink():
                    plan.kept.append((entry, "not a namespace the feature cache makes (24 hex digits)"))
                else:
                    plan.kept.append((entry, "not a file the feature cache writes"))
        else:
            names = list(namespaces)
        for name in names:
            folder = self.root / name
            if not is_namespace_name(name) or folder.is_symlink():
                plan.kept.append((folder, "not a namespace the feature cache makes (24 hex digits)"))
                continue
            if not folder.is_dir():
                continue
            part = NamespaceClear(name, folder, [], [], 0)
            for entry in _entries(folder):
                path = pathlib.Path(entry.path)
                kind, pid = _shard_file_kind(entry)
                try:
                    if kind is None:
                        plan.kept.append((path, "not a file the feature cache writes"))
                        continue
                    why = _write_in_progress(path, pid, now) if kind == "temp" else None
                    if why:
                        plan.kept.append((path, why))
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # renamed or removed by a writer meanwhile
                    continue
                (part.stale if kind == "temp" else part.shards).append(path)
                part.bytes += size
            plan.namespaces.append(part)
        root = self.inputs_root
        if inputs and root.is_dir() and not root.is_symlink():
            for entry in sorted(root.iterdir()):
                temp = _INPUT_TEMP_NAME.fullmatch(entry.name)
                if entry.is_symlink() or not entry.is_dir() or not (temp or _INPUT_SET_NAME.fullmatch(entry.name)):
                    plan.kept.append((entry, "not an input set emojax writes"))
                    continue
                try:
                    why = _input_files_problem(entry, need_index=not temp)
                    if why is None and temp:
                        why = _write_in_progress(entry, temp.group(1), now)
                    if why:
                        plan.kept.append((entry, why))
                        continue
                    (plan.stale_inputs if temp else plan.input_sets).append((entry, _tree_bytes(entry)))
                except FileNotFoundError:  # published, discarded or removed by a writer meanwhile
                    continue
        return plan

    def apply_clear(self, plan: ClearPlan) -> dict:
        """Delete what ``plan`` lists, and nothing else: shard files one by one (a namespace
        folder is then removed only if empty), and each input set renamed aside first (readers see
        it whole or not at all), then its ``index.json`` and ``*.bin`` files. Returns the counts
        removed (``shards``, ``input_sets``) and ``failed``: ``(path, why)`` for what could not be."""
        removed = {"shards": 0, "input_sets": 0, "failed": []}
        for part in plan.namespaces:
            for path in part.shards + part.stale:
                try:
                    path.unlink()
                except FileNotFoundError:  # removed or moved aside by another process meanwhile
                    continue
                except OSError as err:
                    removed["failed"].append((path, str(err)))
                    continue
                removed["shards"] += path in part.shards
                self._verified.discard(path)
            try:
                part.folder.rmdir()
            except OSError:  # it holds something (a file left alone, a writer's new shard): it stays
                pass
            self._index.pop(part.name, None)
        for folder, stored in [(f, True) for f, _ in plan.input_sets] + [(f, False) for f, _ in plan.stale_inputs]:
            aside = folder.with_name(f".{folder.name}-discarded-{secrets.token_hex(4)}") if stored else folder
            try:
                if stored:
                    os.rename(folder, aside)
                for entry in os.scandir(aside):
                    if entry.is_file(follow_symlinks=False) and _INPUT_FILE_NAME.fullmatch(entry.name):
                        os.unlink(entry.path)
                aside.rmdir()
            except FileNotFoundError:  # discarded or removed by another process meanwhile
                continue
            except OSError as err:
                removed["failed"].append((aside, str(err)))
                continue
            removed["input_sets"] += stored
        cleared = {part.name for part in plan.namespaces}
        self._host = collections.OrderedDict((k, v) for k, v in self._host.items() if k[0] not in cleared)
        self._host_used = sum(v.nbytes for v in self._host.values())
        self._device.clear()
        self._device_used = 0
        return removed

    def clear(self, namespace: Optional[str] = None) -> int:
        """Remove one namespace's shards (or every namespace's), as :meth:`plan_clear` and
        :meth:`apply_clear` do; returns the number of shard files removed."""
        return self.apply_clear(self.plan_clear(None if namespace is None else [namespace]))["shards"]
