"""A feature cache for frozen encoders: SafeTensors shards of many samples each.

Layout under the cache root::

    {namespace}/shard-{time}-{pid}-{random}.safetensors

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
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import struct
import time
from typing import Callable, Optional, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from emojax.data.media import split_ref
from emojax.files import file_sha256, write_bytes_atomic
from emojax.progress import progress_bar

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
INPUTS_DIR = "_inputs"  # fine-tuning runs' stored encoder inputs, beside the namespaces
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
ROW_DIGESTS = "row_sha256"  # shard metadata: JSON list, the sha256 of each row (see row_digest)
CORRUPT_SUFFIX = ".corrupt"  # a shard that failed its checks is renamed to {name}.safetensors.corrupt
WRITE_BATCH_ROWS = 256  # rows computed and stored as one shard by get_or_compute


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

    # -- index ----------------------------------------------------------------------------
    def _scan(self, namespace: str) -> dict[str, tuple[pathlib.Path, int]]:
        index: dict[str, tuple[pathlib.Path, int]] = {}
        folder = self.root / namespace
        if folder.is_dir():
            for shard in sorted(folder.glob(f"*{_SUFFIX}")):
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
        """Remove the stored fine-tuning inputs; returns how many input sets were removed."""
        root = self.inputs_root
        if not root.is_dir():
            return 0
        count = sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        shutil.rmtree(root)
        return count

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
        write_bytes_atomic(final, save({"features": array},
                                       metadata={"keys": json.dumps(keys), ROW_DIGESTS: json.dumps(digests)}))
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
    def stats(self) -> dict[str, dict]:
        """Per namespace: entries, feature dim, shards and bytes on disk."""
        out = {}
        for namespace in self.namespaces():
            index = self._scan(namespace)
            shards = list((self.root / namespace).glob(f"*{_SUFFIX}"))
            dim = 0
            if index:
                shard, _ = next(iter(index.values()))
                with safe_open(str(shard), framework="numpy") as handle:
                    dim = handle.get_slice("features").get_shape()[1]
            out[namespace] = {"entries": len(index), "dim": dim, "shards": len(shards),
                              "bytes": sum(s.stat().st_size for s in shards)}
        return out

    def clear(self, namespace: Optional[str] = None) -> int:
        """Remove one namespace (or all); returns the number of shard files removed."""
        removed = 0
        for name in ([namespace] if namespace else self.namespaces()):
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                path.unlink()
                removed += path.suffix == _SUFFIX
            folder.rmdir()
            self._index.pop(name, None)
        self._host = collections.OrderedDict((k, v) for k, v in self._host.items()
                                             if namespace is not None and k[0] != namespace)
        self._host_used = sum(v.nbytes for v in self._host.values())
        self._device.clear()
        self._device_used = 0
        return removed
