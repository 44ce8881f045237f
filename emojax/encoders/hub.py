"""Finding and reading Hugging Face checkpoints without PyTorch.

``resolve_model`` turns a local folder or a hub id into a folder; ``load_state_dict`` reads
``model.safetensors`` (PyTorch names), a sharded ``model.safetensors.index.json``, or
``flax_model.msgpack`` (Flax names, converted to the PyTorch names) into one flat dict of NumPy
arrays, so every encoder family maps a single naming into its parameter pytree.
``StateReader`` hands tensors out by name and shape, with errors that name both.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Iterable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "flax_model.msgpack")


class WeightError(ValueError):
    """A checkpoint file or tensor is missing or has the wrong shape; the message names it."""


def resolve_model(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A local folder as is; a hub id through the local hub cache, downloading when online."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.suffix or name.startswith((".", "/", "~")):
        raise WeightError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "flax_model.msgpack", "merges.txt", "vocab.*"]
    try:
        return pathlib.Path(snapshot_download(name, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    try:
        return pathlib.Path(snapshot_download(name, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise WeightError(
            f"{name}: not a local folder, not in the Hugging Face cache, and the hub could not be reached "
            f"({type(err).__name__}). Download it where there is network (huggingface-cli download {name}) "
            "or pass the path of a local copy") from None


def load_config(folder: str | os.PathLike) -> dict:
    path = pathlib.Path(folder) / "config.json"
    if not path.exists():
        raise WeightError(f"{path}: missing; a Hugging Face model folder needs its config.json")
    return json.loads(path.read_text())


def _flax_to_torch_names(flat: dict[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax parameter names and layouts -> the PyTorch ones transformers saves."""
    out = {}
    for key, value in flat.items():
        *path, leaf = [str(k) for k in key]
        value = np.asarray(value)
        if leaf == "kernel":
            leaf = "weight"
            if value.ndim == 2:
                value = value.T  # Dense: (in, out) -> (out, in)
            elif value.ndim == 3:
                value = value.transpose(2, 1, 0)  # Conv1D: (width, in, out) -> (out, in, width)
            elif value.ndim == 5:
                value = value.transpose(4, 3, 0, 1, 2)  # Conv3D
            elif value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)  # Conv2D
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        out[".".join(path + [leaf])] = np.ascontiguousarray(value)
    return out


def load_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder under their PyTorch names (float arrays as float32)."""
    folder = pathlib.Path(folder)
    single, index, msgpack = (folder / name for name in WEIGHT_FILES)
    if single.exists():
        state = _read_safetensors(single)
    elif index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            if not (folder / shard).exists():
                raise WeightError(f"{folder / shard}: shard named in {index} is missing")
            state.update(_read_safetensors(folder / shard))
    elif msgpack.exists():
        from flax import serialization
        from flax.traverse_util import flatten_dict

        tree = serialization.msgpack_restore(msgpack.read_bytes())
        state = _flax_to_torch_names(flatten_dict(tree))
    else:
        raise WeightError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in state.items()}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        if "bfloat16" in str(err).lower() or "bf16" in str(err).lower():
            return _read_safetensors_bf16(path)
        raise WeightError(f"{path}: unreadable SafeTensors file ({err})") from err


def _read_safetensors_bf16(path: pathlib.Path) -> dict[str, np.ndarray]:
    """NumPy has no bfloat16: read such tensors through ml_dtypes and widen them to float32."""
    import ml_dtypes
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    base = 8 + length
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
              "F64": np.float64, "U8": np.uint8, "BOOL": np.bool_}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(raw[base + start:base + end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        out[name] = array.astype(np.float32) if info["dtype"] in ("BF16", "F16") else array.copy()
    return out


class StateReader:
    """Hands out checkpoint tensors by name and expected shape, tracking what was used.

    ``prefixes`` are tried in order in front of each name (hub checkpoints of task models keep
    the encoder under ``bert.`` / ``roberta.`` and similar).
    """

    def __init__(self, state: dict[str, np.ndarray], source: str, prefixes: Sequence[str] = ("",)):
        self.state = state
        self.source = source
        self.prefixes = tuple(prefixes)
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return any(p + name in self.state for p in self.prefixes)

    def take(self, name: str, shape: Optional[Iterable[int]] = None) -> np.ndarray:
        for prefix in self.prefixes:
            full = prefix + name
            if full in self.state:
                value = self.state[full]
                if shape is not None and tuple(value.shape) != tuple(shape):
                    raise WeightError(f"{self.source}: tensor {full!r} has shape {tuple(value.shape)}, "
                                      f"the model expects {tuple(shape)}")
                self.used.add(full)
                return value
        raise WeightError(f"{self.source}: tensor {name!r} is missing"
                          + (f" (expected shape {tuple(shape)})" if shape is not None else ""))

    def unused(self, ignore: Sequence[str] = ()) -> list[str]:
        """Tensors nobody took (logged once); names containing any of ``ignore`` are not listed."""
        left = sorted(k for k in self.state if k not in self.used and not any(s in k for s in ignore))
        if left:
            shown = ", ".join(left[:8]) + (f" ... ({len(left)} in all)" if len(left) > 8 else "")
            log.info("%s: unused tensors: %s", self.source, shown)
        return left
