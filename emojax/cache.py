"""A feature cache for frozen encoders: SafeTensors shards of many samples each.

Layout under the cache root::

    {namespace}/shard-{time}-{pid}-{random}.safetensors

A namespace is one encoder with one preprocessing and pooling setting (its key is a hash of
the weights and settings, built by the caller). Each shard holds a ``features`` tensor
``(n, dim)`` and, in the SafeTensors metadata, the ``n`` sample keys. Shards are written to a
temporary file and renamed into place, and every writer writes new shards under unique names,
so concurrent runs filling the same cache never corrupt it. On open, shards are scanned; a
truncated or corrupt one (bad header, size mismatch) is reported and ignored, so its entries are
recomputed. Reads go through memory mapping; a host-memory LRU tier keeps recently read rows.
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
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
INPUTS_DIR = "_inputs"  # fine-tuning runs' stored encoder inputs, beside the namespaces
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def cache_key(*parts) -> str:
    """A sha256 hex key of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_IDENTITY_MEMO: dict[tuple, str] = {}


def file_identity(path: str | os.PathLike) -> str:
    """``path`` + size + sha256 of the content: a changed file gets a new identity.

    Memoised per process on ``(path, size, mtime_ns)``, so a file is hashed once per run.
    """
    path = os.fspath(path)
    stat = os.stat(path)
    memo_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _IDENTITY_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _IDENTITY_MEMO[memo_key] = f"{os.path.basename(path)}:{stat.st_size}:{digest.hexdigest()}"
    return _IDENTITY_MEMO[memo_key]


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

    # -- index ----------------------------------------------------------------------------
    def _scan(self, namespace: str) -> dict[str, tuple[pathlib.Path, int]]:
        index: dict[str, tuple[pathlib.Path, int]] = {}
        folder = self.root / namespace
        if folder.is_dir():
            for shard in sorted(folder.glob(f"*{_SUFFIX}")):
                problem = check_shard(shard)
                if problem:
                    log.warning("feature cache: ignoring corrupt shard %s (%s); its entries will be recomputed",
                                shard, problem)
                    continue
                with safe_open(str(shard), framework="numpy") as handle:
                    keys = json.loads(handle.metadata()["keys"])
                for row, key in enumerate(keys):
                    index[key] = (shard, row)
        self._index[namespace] = index
        return index

    def _namespace_index(self, namespace: str) -> dict[str, tuple[pathlib.Path, int]]:
        return self._index[namespace] if namespace in self._index else self._scan(namespace)

    def namespaces(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    @property
    def inputs_root(self) -> pathlib.Path:
        """Where fine-tuning runs keep their preprocessed media inputs (:mod:`emojax.finetune`)."""
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
                with safe_open(str(shard), framework="numpy") as handle:
                    tensor = handle.get_tensor("features")
                rows = tensor[np.asarray([row for _, row in wanted])]
                for (key, _), value in zip(wanted, rows):
                    found[key] = value
                    self._remember(namespace, key, value)
            except (OSError, ValueError, RuntimeError) as err:
                log.warning("feature cache: cannot read %s (%s); its entries will be recomputed", shard, err)
                for key, _ in wanted:
                    self._index[namespace].pop(key, None)
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
        """Store rows ``array[i]`` under ``keys[i]`` as one new shard (atomic)."""
        array = np.ascontiguousarray(np.asarray(array))
        if len(keys) != len(array):
            raise ValueError(f"put_many: {len(keys)} keys for {len(array)} rows")
        if not len(keys):
            return None
        folder = self.root / namespace
        folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        final = folder / name
        tmp = folder / f".{name}.tmp"
        try:
            save_file({"features": array}, str(tmp), metadata={"keys": json.dumps(list(keys))})
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        index = self._namespace_index(namespace)
        for row, key in enumerate(keys):
            index[key] = (final, row)
        return final

    def get_or_compute(self, namespace: str, keys: Sequence[str],
                       compute_fn: Callable[[list[int]], np.ndarray], *, batch_size: int = 1024,
                       progress: bool = True) -> np.ndarray:
        """Rows for all ``keys``: cached ones read; the rest computed by ``compute_fn(indices)`` in
        batches of ``batch_size``, each batch stored as it finishes."""
        found = self.get_many(namespace, keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        for start in tqdm(range(0, len(missing), batch_size), desc=f"features {namespace[:8]}",
                          disable=not progress or not missing, leave=False):
            chunk = missing[start:start + batch_size]
            values = np.asarray(compute_fn(chunk))
            self.put_many(namespace, [keys[i] for i in chunk], values)
            for i, value in zip(chunk, values):
                found[keys[i]] = value
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
