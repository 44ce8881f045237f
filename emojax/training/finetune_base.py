"""What every fine-tuned encoder shares: the :class:`Tuner` base (modes, adapters, the fixed
scaling of its pooled features) and the rows of encoder inputs a tuner reads
(:class:`ArrayRows` in memory, :class:`StoredRows` memory-mapped from a checked store).

The tuners build on it: :mod:`emojax.training.finetune_media` (Whisper, wav2vec2, VideoMAE, CLIP,
inputs stored on disk) and :mod:`emojax.training.finetune_text` (BERT / RoBERTa / ModernBERT, top
layers from stored hidden states); :mod:`emojax.training.finetune` holds a run's tuners.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import secrets
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import lora as lora_lib
from emojax.features.featurizer import padded_batches
from emojax.files import file_sha256

log = logging.getLogger(__name__)

TUNING_MODES = ("trainable", "lora")
INPUTS_VERSION = 1
# (path, size, mtime_ns) of stored input files whose sha256 matched in this process: a store is
# hashed once per process, not once per split or run that opens it.
_VERIFIED_FILES: set[tuple[str, int, int]] = set()


class StoredInputsError(ValueError):
    """A stored input set fails its checks (missing index, wrong size, checksum mismatch); the
    message names the file."""


# ---------------------------------------------------------------------------------------------
# Encoder inputs of a split
# ---------------------------------------------------------------------------------------------
class ArrayRows:
    """Fixed-shape inputs held in memory (text token ids): ``{name: (n, ...) array}``."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, index) -> dict[str, np.ndarray]:
        return {k: v[np.asarray(index)] for k, v in self.arrays.items()}

    def groups(self) -> list[np.ndarray]:
        """Row groups that evaluation batches separately (one here)."""
        return [np.arange(len(self))]


class StoredRows:
    """Per-sample media inputs stored once on disk: one flat memory-mapped file per input name,
    each sample's array at its offset with its own shape (so clips of any length fit).

    Opening checks every file against ``index.json`` (size, and with ``verify`` its sha256), so
    a damaged store raises :class:`StoredInputsError` naming the file instead of failing later in
    a reshape or feeding garbage to training.
    """

    def __init__(self, folder: pathlib.Path, collate, *, verify: bool = True):
        self.folder = pathlib.Path(folder)
        self.collate = collate
        index_path = self.folder / "index.json"
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise StoredInputsError(f"{index_path} is missing") from None
        except (OSError, ValueError) as err:
            raise StoredInputsError(f"{index_path} is unreadable ({err})") from None
        try:
            self.names = list(index["names"])
            self.present = np.asarray(index["present"], bool)
            self.group_keys = list(index["groups"])
            self.rows = index["rows"]  # per sample: {name: [offset, shape]}
            dtypes = {name: np.dtype(index["dtypes"][name]) for name in self.names}
            files = index.get("files")
            if files is None:
                raise StoredInputsError(f"{index_path} was written without file checksums, so the store "
                                        "cannot be verified")
            for name in self.names:
                self._check(self.folder / f"{name}.bin", int(files[name]["bytes"]), str(files[name]["sha256"]),
                            verify)
            self.data = {name: np.memmap(self.folder / f"{name}.bin", dtype=dtypes[name], mode="r")
                         for name in self.names}
        except StoredInputsError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise StoredInputsError(f"{index_path} does not describe a readable store ({err!r})") from None

    @staticmethod
    def _check(path: pathlib.Path, size: int, sha256: str, verify: bool) -> None:
        """Raise :class:`StoredInputsError` unless ``path`` has the recorded size (and sha256)."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise StoredInputsError(f"{path} is missing") from None
        if stat.st_size != size:
            raise StoredInputsError(f"{path} has {stat.st_size} bytes, index.json records {size} (truncated or "
                                    "overwritten)")
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if not verify or memo in _VERIFIED_FILES:
            return
        if file_sha256(path) != sha256:
            raise StoredInputsError(f"{path} does not match its sha256 in index.json (its bytes changed)")
        _VERIFIED_FILES.add(memo)

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.names:
            offset, shape = self.rows[i][name]
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = np.asarray(self.data[name][offset:offset + size]).reshape(shape)
        return out

    def batch(self, index) -> dict[str, np.ndarray]:
        return self.collate([self.item(int(i)) for i in np.asarray(index)])

    def groups(self) -> list[np.ndarray]:
        keys = {}
        for i, key in enumerate(self.group_keys):
            keys.setdefault(json.dumps(key), []).append(i)
        return [np.asarray(v) for v in keys.values()]


def discard_store(folder: pathlib.Path) -> None:
    """Remove a damaged store: renamed away first (atomic), so no reader ever sees it half deleted."""
    aside = folder.with_name(f".{folder.name}-discarded-{secrets.token_hex(4)}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# One fine-tuned encoder
# ---------------------------------------------------------------------------------------------
class Tuner:
    """What every tuned encoder shares: modes, adapters, scaling; a family supplies
    :meth:`_pooled`, :meth:`input_rows`, :meth:`install` and :attr:`params`."""

    modality = ""

    def __init__(self, cfg, params, stats: dict):
        self.mode = str(cfg.mode)
        if self.mode not in TUNING_MODES:
            raise ValueError(f"mode: {self.mode!r} does not fine-tune encoders")
        self.base = jax.device_get(params)
        # The frozen base weights travel as a jit argument (never baked into the program as
        # constants); a trainable run needs none.
        self.base_args = jax.tree_util.tree_map(jnp.asarray, self.base) if self.mode == "lora" else None
        self.remat = bool(cfg.finetune.get("remat", False))
        self.mean = np.asarray(stats[self.modality]["mean"], np.float32)
        self.std = np.asarray(stats[self.modality]["std"], np.float32)
        spec = cfg.finetune.lora
        self.rank, self.alpha = int(spec.rank), float(spec.alpha)
        self.lora_dropout, self.targets = float(spec.dropout), str(spec.targets)
        self._forward = jax.jit(lambda trainable, base, inputs: self.features(trainable, base, inputs))

    # parameters
    def init(self, rng: jax.Array) -> Any:
        """The trainable pytree at the start: the base encoder, or fresh adapters."""
        if self.mode == "trainable":
            return jax.tree_util.tree_map(jnp.asarray, self.base)
        return lora_lib.init_lora(self.base, rng, rank=self.rank, targets=self.targets)

    def effective(self, trainable, base=None, *, rng: Optional[jax.Array] = None, deterministic: bool = True):
        """The encoder parameters the forward pass uses (``base``: :attr:`base_args`, for lora)."""
        if self.mode == "trainable":
            return trainable
        return lora_lib.apply_lora(self.base if base is None else base, trainable, alpha=self.alpha, rank=self.rank,
                                   dropout=self.lora_dropout, rng=rng, deterministic=deterministic)

    def merged(self, trainable):
        """A plain encoder pytree (adapters folded in) for export and inference."""
        if self.mode == "trainable":
            return jax.device_get(trainable)
        return lora_lib.merge_lora(self.base, trainable, alpha=self.alpha, rank=self.rank)

    # computation
    def features(self, trainable, base, inputs: dict, *, rng: Optional[jax.Array] = None,
                 deterministic: bool = True):
        """Standardised pooled features ``(batch, dim)`` float32 (differentiable in ``trainable``)."""
        lora_rng = enc_rng = None
        if rng is not None:
            lora_rng, enc_rng = jax.random.split(rng)
        params = self.effective(trainable, base, rng=lora_rng, deterministic=deterministic)
        pooled = self._pooled(params, inputs, enc_rng, deterministic).astype(jnp.float32)
        return (pooled - self.mean) / self.std

    def _pooled(self, params, inputs, rng, deterministic):
        raise NotImplementedError

    def refresh(self, rows, trainable, batch_size: int) -> np.ndarray:
        """Features ``(len(rows), dim)`` of every row by the current encoder, in padded batches
        (per row group: wav2vec2 clips of one length bucket)."""
        out = None
        for group in rows.groups():
            for index, padded in padded_batches(len(group), batch_size):
                values = np.asarray(self._forward(trainable, self.base_args, rows.batch(group[padded])))
                if out is None:
                    out = np.zeros((len(rows), values.shape[-1]), np.float32)
                out[group[index]] = values[:len(index)]
        return out

    def describe(self, trainable) -> str:
        total = lora_lib.count_parameters(self.base)
        name = f"{self.modality} encoder ({self.family})"
        if self.mode == "trainable":
            return f"{name} fine-tuned: {total:,} parameters"
        adapters = lora_lib.count_parameters(trainable)
        return (f"{name} LoRA: {len(trainable)} adapted projections, rank {self.rank}, alpha {self.alpha:g}: "
                f"{adapters:,} trainable parameters ({100 * adapters / total:.2f}% of {total:,})")


