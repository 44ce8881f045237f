"""An encoder's parameter pytree written back as the PyTorch-named tensors of its checkpoint: the
inverse of a family's ``params_from_state`` loader, for fine-tuned weights.

The inverse is derived from the loader itself instead of being written once more per family: the
loader runs on a *probe* checkpoint whose tensors hold their own element numbers (int32; a tensor
is numbered when the loader asks for it), so each parameter leaf comes out holding, element by
element, where it was read from (transposes, reshapes and flattened convolution kernels are all
just permutations). Scattering the tuned leaf values to those places gives the tensors back; a
tensor read twice, or left partly unwritten, is an error, so the inverse is checked by
construction. Two parameters are computed by loaders rather than read, and are written under the
names the loaders also accept: Whisper's sinusoidal positions (when the checkpoint has none) as
``encoder.embed_positions.weight``, and wav2vec2's weight-normalised positional convolution
folded into one ``weight`` as ``weight_g`` / ``weight_v``.

    tensors = state_dict_from_params(tuned_params, config, source_state)   # {name: float32 array}

Without a source checkpoint (``source_state=None``: its folder is gone) the probe hands the loader
every tensor it asks for, at the shape it asks for, under the family's first name prefix: the
tensors of a checkpoint holding exactly what the loader reads. This works for loaders that name
the shape of every tensor they take and ask for no optional ones (BERT / RoBERTa).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from emojax.encoders import core, hub


class ExportError(ValueError):
    """The parameters cannot be written back as the checkpoint's tensors (the message says why)."""


class _Probe(hub.StateReader):
    """Hands out element numbers in place of tensors (shapes: the checkpoint's, or the shape the
    loader asks for, e.g. a word-embedding matrix grown by added tokens)."""

    def __init__(self, shapes: Optional[Mapping[str, tuple]], source: str, prefixes: Sequence[str]):
        super().__init__({}, source, prefixes)
        self.open = shapes is None  # no source checkpoint: every tensor asked for exists
        self.shapes = {} if shapes is None else dict(shapes)
        self.taken: dict[str, tuple[int, tuple]] = {}  # name -> (first element number, shape)
        self.total = 0

    def has(self, name: str) -> bool:
        return any(p + name in self.shapes for p in self.prefixes)

    def take(self, name: str, shape=None) -> np.ndarray:
        if self.open and not self.has(name):
            if shape is None:
                raise ExportError(f"{self.source}: the loader reads {name!r} without naming its shape; without "
                                  "the source checkpoint it cannot be written back")
            self.shapes[self.prefixes[0] + name] = tuple(shape)
        for prefix in self.prefixes:
            full = prefix + name
            if full in self.shapes:
                shape = tuple(self.shapes[full]) if shape is None else tuple(shape)
                if full in self.taken:
                    raise ExportError(f"{self.source}: tensor {full!r} is read twice by the loader; its "
                                      "parameters cannot be written back unambiguously")
                size = int(np.prod(shape, dtype=np.int64))
                if self.total + size >= 2 ** 31:
                    raise ExportError(f"{self.source}: more than 2**31 encoder weights; too large to number")
                self.taken[full] = (self.total, shape)
                self.total += size
                return (np.arange(size, dtype=np.int32) + self.taken[full][0]).reshape(shape)
        return super().take(name, shape)  # raises the loader's own missing-tensor error

    def unused(self, ignore=()):
        return []


def _loader(config):
    """The family's loader and tensor prefixes (every family registers itself with
    :mod:`emojax.encoders.core` when its module is imported, as it is for its config to exist)."""
    family = core.family_of(config)
    if family is None:
        raise ExportError(f"writing the weights of a {type(config).__name__} encoder is not supported; "
                          f"known: {', '.join(core.known_families())}")
    return family.params_from_state, family.prefixes


def state_dict_from_params(params, config, source_state: Optional[Mapping[str, Any]], *, source: str = "") -> dict:
    """The checkpoint tensors (float32, the checkpoint's names) that load as ``params`` under
    ``config``; ``source_state``: the original checkpoint's tensors (for their names and shapes),
    or None when it is gone (the names the loader asks for first; see the module docstring).
    Only the tensors the loader reads are returned; the caller keeps the others as they were."""
    params_from_state, prefixes = _loader(config)
    shapes = None if source_state is None else {k: tuple(np.shape(v)) for k, v in source_state.items()}
    probe = _Probe(shapes, source, prefixes)
    numbered = params_from_state(probe, config)
    out = {name: np.full(shape, np.nan, np.float32) for name, (_, shape) in probe.taken.items()}
    written = {name: np.zeros(shape, np.int32) for name, (_, shape) in probe.taken.items()}
    starts = sorted((start, name) for name, (start, _) in probe.taken.items())
    start_values = np.asarray([s for s, _ in starts], np.int64)
    derived: dict[str, np.ndarray] = {}

    flat_numbered = jax.tree_util.tree_flatten_with_path(numbered)[0]
    values = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    if len(values) != len(flat_numbered):
        raise ExportError(f"{source}: the parameters do not have this encoder's structure "
                          f"({len(values)} leaves, the loader makes {len(flat_numbered)})")
    for path, ids in flat_numbered:
        key = jax.tree_util.keystr(path)
        if key not in values:
            raise ExportError(f"{source}: parameter {key} missing")
        value = np.asarray(values[key], np.float32)
        ids = np.asarray(ids)
        if value.shape != ids.shape:
            raise ExportError(f"{source}: parameter {key} has shape {value.shape}, the checkpoint's is {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            derived[key] = value  # computed by the loader, not read: see _write_derived
            continue
        ids = ids.astype(np.int64).ravel()
        which = np.searchsorted(start_values, ids, side="right") - 1
        for slot in np.unique(which):
            start, name = starts[slot]
            chosen = which == slot
            positions = ids[chosen] - start
            out[name].reshape(-1)[positions] = value.reshape(-1)[chosen]
            np.add.at(written[name].reshape(-1), positions, 1)
    _write_derived(derived, out, written, probe, source)
    for name, count in written.items():
        if name in out and not (count == 1).all():
            raise ExportError(f"{source}: tensor {name!r}: {int((count == 0).sum())} element(s) not written back, "
                              f"{int((count > 1).sum())} written more than once")
    return out


def _prefix_of(probe: _Probe) -> str:
    """The name prefix the checkpoint's encoder tensors are under (``""``, ``"model."``, ...)."""
    for prefix in sorted(probe.prefixes, key=len, reverse=True):
        if prefix and any(name.startswith(prefix) for name in probe.taken):
            return prefix
    return ""


def _write_derived(derived: dict, out: dict, written: dict, probe: _Probe, source: str) -> None:
    prefix = _prefix_of(probe)
    for key, value in derived.items():
        if key == "['positions']":  # Whisper's sinusoids: the checkpoint had no position table
            name = prefix + "encoder.embed_positions.weight"
            out[name], written[name] = value, np.ones(value.shape, np.int32)
        elif key == "['pos_conv']['g']":  # wav2vec2: weight norm folded into one weight
            base = prefix + "encoder.pos_conv_embed.conv."
            if base + "weight" not in out:
                raise ExportError(f"{source}: {key} computed but {base}weight not read")
            out[base + "weight_v"], written[base + "weight_v"] = out.pop(base + "weight"), written.pop(base + "weight")
            out[base + "weight_g"] = value.reshape(1, 1, -1)
            written[base + "weight_g"] = np.ones((1, 1, value.size), np.int32)
        else:
            raise ExportError(f"{source}: parameter {key} is computed by the loader, not read from the "
                              "checkpoint, and cannot be written back")


def replaced_names(source_state: Mapping[str, Any], written: Mapping[str, Any]) -> list[str]:
    """Checkpoint tensors that ``written`` supersedes under another name (wav2vec2's folded
    ``weight`` when ``weight_g`` / ``weight_v`` are written)."""
    out = []
    for name in written:
        if name.endswith(".weight_v"):
            folded = name[: -len("_v")]
            if folded in source_state:
                out.append(folded)
    return out


__all__ = ["ExportError", "replaced_names", "state_dict_from_params"]
