"""Finding and reading Hugging Face checkpoints without PyTorch.

    folder = resolve_model("sentence-transformers/all-MiniLM-L6-v2")   # or a local folder
    state = load_state_dict(folder)           # {"encoder.layer.0.attention.self.query.weight": array, ...}
    reader = StateReader(state, str(folder), prefixes=("", "bert."))
    kernel = reader.take("encoder.layer.0.attention.self.query.weight", (384, 384))

``load_state_dict`` reads ``model.safetensors`` (PyTorch names, or Flax names when the file was
written by a Flax model), a sharded ``model.safetensors.index.json``, ``flax_model.msgpack`` or a
sharded ``flax_model.msgpack.index.json``, and always returns the PyTorch names and layouts, so every
encoder family maps a single naming into its parameter pytree. Floating tensors come back float32.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Iterable, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
MSGPACK = "flax_model.msgpack"
MSGPACK_INDEX = "flax_model.msgpack.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, MSGPACK, MSGPACK_INDEX)
# What a hub snapshot needs for an encoder: config, tokenizer / preprocessor files, weights.
HUB_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "flax_model.msgpack*", "vocab.*", "merges.txt")


class WeightError(ValueError):
    """A checkpoint folder, file or tensor is missing or malformed; the message names it."""


# -- locating a checkpoint ---------------------------------------------------------------------

def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def _has_weights(folder: pathlib.Path) -> bool:
    return any((folder / name).exists() for name in WEIGHT_FILES)


def resolve_model(name_or_path: str | os.PathLike, *, revision: Optional[str] = None,
                  cache_dir: Optional[str | os.PathLike] = None) -> pathlib.Path:
    """The folder of a checkpoint: a local folder as is, else a hub id through the hub cache.

    A hub id is looked up in the local Hugging Face cache first; when it is not there (or the
    cached snapshot has no weights) it is downloaded, unless ``HF_HUB_OFFLINE`` is set.
    Raises :class:`WeightError` naming the id when it can be neither found nor downloaded.
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise WeightError(f"{name}: is a file; pass the folder holding config.json and the weights")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise WeightError(f"{name}: no such model folder, and not a Hugging Face hub id "
                          "('name' or 'namespace/name'); check the path") from None
    kwargs = dict(revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_PATTERNS))
    try:
        folder = pathlib.Path(snapshot_download(name, local_files_only=True, **kwargs))
        if _has_weights(folder):
            return folder
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    if _offline():
        raise WeightError(f"{name}: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                          f"is set so the hub cannot be reached. Download it where there is network "
                          f"(hf download {name}) or pass the path of a local copy")
    try:
        return pathlib.Path(snapshot_download(name, **kwargs))
    except GatedRepoError:
        raise WeightError(f"{name}: the hub repository is gated; accept its terms on the hub and log in "
                          "(hf auth login), or pass a local copy") from None
    except RepositoryNotFoundError:
        raise WeightError(f"{name}: no such repository on the Hugging Face hub (or it is private); "
                          "check the id or pass a local folder") from None
    except RevisionNotFoundError:
        raise WeightError(f"{name}: revision {revision!r} does not exist on the hub") from None
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise WeightError(
            f"{name}: not a local folder, not in the Hugging Face cache, and the hub could not be reached "
            f"({type(err).__name__}). Download it where there is network (hf download {name}) "
            "or pass the path of a local copy") from None


def load_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint folder as a dict."""
    path = pathlib.Path(folder) / "config.json"
    if not path.exists():
        raise WeightError(f"{path}: missing; a Hugging Face model folder needs its config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightError(f"{path}: not valid JSON ({err})") from None


# -- reading tensors ---------------------------------------------------------------------------

def _as_float32(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype != np.float32 and jnp.issubdtype(value.dtype, jnp.floating):  # bfloat16 included
        return value.astype(np.float32)
    return value


def flax_to_torch_state(tree: Mapping) -> dict[str, np.ndarray]:
    """A nested (or ``.``-flattened) Flax parameter dict -> PyTorch names and layouts.

    ``kernel`` -> ``weight`` (Dense ``(in, out)`` -> ``(out, in)``; convolutions
    ``(*window, in, out)`` -> ``(out, in, *window)``), ``embedding`` / ``scale`` -> ``weight``,
    batch-norm ``mean`` / ``var`` -> ``running_mean`` / ``running_var``; other names as they are
    (weight-norm ``weight_g`` / ``weight_v`` keep the older PyTorch names). Top-level ``params`` /
    ``batch_stats`` collections are unwrapped.
    """
    collections = {"params", "batch_stats"}
    if tree and set(tree) <= collections and all(isinstance(v, Mapping) for v in tree.values()):
        flat = {}
        for collection in tree.values():  # variables of a linen module: drop the collection level
            flat.update(flatten_dict(dict(collection)))
    elif any(isinstance(v, Mapping) for v in tree.values()):
        flat = flatten_dict(dict(tree))
    else:  # already flattened with "." (Flax-format SafeTensors)
        flat = {tuple(k.split(".")): v for k, v in tree.items()}
    out = {}
    for key, value in flat.items():
        *path, leaf = [str(k) for k in key]
        if path and path[0] in collections:
            path = path[1:]
        value = np.asarray(value)
        if leaf == "kernel":
            leaf = "weight"
            if value.ndim == 2:
                value = value.T
            elif value.ndim >= 3:
                window = tuple(range(value.ndim - 2))
                value = value.transpose((value.ndim - 1, value.ndim - 2) + window)
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        elif leaf == "mean":
            leaf = "running_mean"
        elif leaf == "var":
            leaf = "running_var"
        out[".".join(path + [leaf])] = np.ascontiguousarray(value)
    return out


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise WeightError(f"{path}: unreadable SafeTensors file ({err}); download it again") from None
    if metadata.get("format") == "flax":  # written by a transformers Flax model: Flax names
        return flax_to_torch_state(state)
    if metadata.get("format") == "tf":
        raise WeightError(f"{path}: TensorFlow-format SafeTensors are not supported; use the PyTorch or Flax "
                          "weights of this model")
    return state


def _read_msgpack(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on a damaged file
        raise WeightError(f"{path}: unreadable Flax msgpack file ({type(err).__name__}: {err}); "
                          "download it again") from None
    return flax_to_torch_state(tree)


def _read_index(folder: pathlib.Path, index: pathlib.Path, read) -> dict[str, np.ndarray]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        raise WeightError(f"{index}: not a shard index (needs a 'weight_map'): {err}") from None
    state: dict[str, np.ndarray] = {}
    for shard in shards:
        if not (folder / shard).exists():
            raise WeightError(f"{folder / shard}: shard named in {index.name} is missing; download it again")
        state.update(read(folder / shard))
    return state


def load_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder under their PyTorch names; floating ones as float32.

    Looks for, in order: ``model.safetensors``, ``model.safetensors.index.json`` (shards),
    ``flax_model.msgpack``, ``flax_model.msgpack.index.json`` (shards).
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise WeightError(f"{folder}: no such model folder")
    if (folder / SAFETENSORS).exists():
        state = _read_safetensors(folder / SAFETENSORS)
    elif (folder / SAFETENSORS_INDEX).exists():
        state = _read_index(folder, folder / SAFETENSORS_INDEX, _read_safetensors)
    elif (folder / MSGPACK).exists():
        state = _read_msgpack(folder / MSGPACK)
    elif (folder / MSGPACK_INDEX).exists():
        state = _read_index(folder, folder / MSGPACK_INDEX, _read_msgpack)
    else:
        hint = ""
        if any((folder / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            hint = (" pytorch_model.bin needs PyTorch to read; convert it to model.safetensors "
                    "(e.g. the hub's 'convert to safetensors' space) or use a revision that has one.")
        raise WeightError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)}).{hint}")
    return {k: _as_float32(v) for k, v in state.items()}


class StateReader:
    """Hands out checkpoint tensors by name and expected shape, and remembers which were taken.

    ``prefixes`` are tried in order in front of each name: hub checkpoints of task models keep
    the encoder under ``bert.`` / ``roberta.`` and similar, base models under no prefix.
    """

    def __init__(self, state: Mapping[str, np.ndarray], source: str, prefixes: Sequence[str] = ("",)):
        self.state = dict(state)
        self.source = source
        self.prefixes = tuple(prefixes)
        self.used: set[str] = set()
        self._reported = False

    def has(self, name: str) -> bool:
        return any(p + name in self.state for p in self.prefixes)

    def take(self, name: str, shape: Optional[Iterable[int]] = None) -> np.ndarray:
        """The tensor ``name`` (under the first prefix that has it), checked against ``shape``."""
        for prefix in self.prefixes:
            full = prefix + name
            if full in self.state:
                value = self.state[full]
                if shape is not None and tuple(value.shape) != tuple(shape):
                    raise WeightError(f"{self.source}: tensor {full!r} has shape {tuple(value.shape)}, the model "
                                      f"expects {tuple(shape)}; the config.json does not match these weights")
                self.used.add(full)
                return value
        tried = ", ".join(repr(p + name) for p in self.prefixes)
        expected = f" (expected shape {tuple(shape)})" if shape is not None else ""
        raise WeightError(f"{self.source}: tensor {name!r} is missing{expected}; looked for {tried}. "
                          "Is this checkpoint of the right model family?")

    def dense(self, name: str, n_in: int, n_out: int, bias: bool = True) -> dict:
        """A PyTorch ``Linear`` (``{name}.weight`` ``(out, in)``, ``{name}.bias``) as ``{"w": (in, out), "b"}``."""
        p = {"w": jnp.asarray(self.take(f"{name}.weight", (n_out, n_in)).T)}
        if bias:
            p["b"] = jnp.asarray(self.take(f"{name}.bias", (n_out,)))
        return p

    def norm(self, name: str, size: int, bias: bool = True) -> dict:
        """A ``LayerNorm`` (``{name}.weight``, ``{name}.bias``) as ``{"scale", "bias"}``."""
        p = {"scale": jnp.asarray(self.take(f"{name}.weight", (size,)))}
        if bias:
            p["bias"] = jnp.asarray(self.take(f"{name}.bias", (size,)))
        return p

    def unused(self, ignore: Sequence[str] = ()) -> list[str]:
        """Tensors nobody took, except names containing any of ``ignore``; logged the first time."""
        left = sorted(k for k in self.state if k not in self.used and not any(s in k for s in ignore))
        if left and not self._reported:
            shown = ", ".join(left[:8]) + (f" ... ({len(left)} in all)" if len(left) > 8 else "")
            log.info("%s: unused tensors: %s", self.source, shown)
        self._reported = True
        return left
