"""Encoders trained with the head: ``mode=trainable`` (every encoder weight) and ``mode=lora``
(low-rank adapters, :mod:`emojax.encoders.lora`), for text, audio and video.

``finetune.tune`` picks the modalities whose encoder is fine-tuned: ``all`` (default: every
encoder with weights, i.e. BERT / RoBERTa / ModernBERT, Whisper, wav2vec2 / data2vec-audio,
VideoMAE, CLIP; classic librosa / OpenCV encoders have none) or a list such as ``T`` or ``T+A``.
The other modalities keep their frozen, cached features.

:class:`Tuning` holds, per tuned modality, a tuner: the encoder's base parameters (with the
speaker-token rows for text), architecture, pooling, and how to feed it. Its trainable part is a
pytree kept in ``TrainState.encoder[modality]``: the whole encoder (``trainable``) or the adapters
(``lora``). Inside the step the pooled feature is computed from the sample's encoder input and
scaled by the training split's statistics of the *initial* encoder's features, so the head sees
inputs on the scale it sees in ``frozen`` mode; the same fixed scaling is used for evaluation and
inference.

Encoder inputs travel with the feature sets (``FeatureSet.inputs[modality]``): text token ids
(in memory), and, for media, the preprocessed model input of every file (Whisper log-mel frames,
normalised wav2vec2 waveforms, video frames resized and cropped as ``uint8``; the rescaling and
normalisation of frames runs inside the step). Media inputs are prepared once per split and
stored on disk beside the feature cache (``{cache}/_inputs/{key}``, memory-mapped; the key is a
digest of the encoder family, its preprocessing and the files' identities), so an epoch reads
them instead of decoding every file again. A missing or unreadable file is logged, its modality
is absent for that sample, and a blank input of the right shape stands in for it (its feature is
masked out). ``index.json`` records each ``.bin`` file's size and sha256, checked when the store is
opened: a store with a missing index, a truncated file or changed bytes (which would otherwise
fail on every rerun, or train on garbage) is reported, naming the file, and prepared again. A
store is written into a temporary folder and renamed into place, so a crash never leaves half of
one.

Batches are collated to one shape per family (Whisper: its window; video: the config's frames),
except wav2vec2: a training batch is padded to the length bucket of its longest clip (one
compiled step per bucket), and evaluation groups clips by bucket so that each one is padded to
its own bucket, exactly as the frozen feature path and the estimator compute it.

The text tuner lives in :mod:`emojax.training.finetune_text`: token ids padded per length bucket, and
``finetune.tune_layers=K``, which trains the top ``K`` layers from stored hidden states of the
frozen ones. ``tune_layers`` applies to the text families only; a Whisper, wav2vec2, VideoMAE or
CLIP encoder of the same run is fine-tuned whole (their hidden states, hundreds to thousands of
positions of each clip, would take far more disk than their inputs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import tempfile
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.features.cache import file_identity
from emojax.config import tuned_modalities
from emojax.data import media
from emojax.data.media import MediaError, map_references
from emojax.encoders import lora as lora_lib
from emojax.features.featurizer import padded_batches
from emojax.files import digest, file_sha256
from emojax.progress import progress_bar

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


def _discard_store(folder: pathlib.Path) -> None:
    """Remove a damaged store: renamed away first (atomic), so no reader ever sees it half deleted."""
    aside = folder.with_name(f".{folder.name}-discarded-{secrets.token_hex(4)}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


def _tuning_items(encoder, paths: Sequence[Optional[str]], workers: Optional[int]):
    """``encoder.tuning_item`` of every path (``None`` for a path that is ``None``), or its
    ``MediaError``, in order; decoded and preprocessed on the encoder's media pool when it has one
    (``encoder.inputs``: one pass per recording, every core), else through the same pool one
    file per task."""
    given = [str(p) for p in paths if p]
    if hasattr(encoder, "inputs"):
        results = encoder.inputs(given, tuning=True, workers=workers)
    else:
        def decode(group):
            out = []
            for path in group:
                try:
                    out.append(encoder.tuning_item(path))
                except MediaError as err:
                    out.append(err)
            return out

        results = map_references(given, decode, workers=getattr(encoder, "workers", 0) if workers is None else workers,
                                 by_file=False)
    try:
        for path in paths:
            yield next(results) if path else None
    finally:
        results.close()


def store_inputs(root: pathlib.Path, encoder, paths: Sequence[Optional[str]], *, desc: str,
                 progress: bool = True, workers: Optional[int] = None) -> StoredRows:
    """The preprocessed inputs of ``paths`` for the media ``encoder`` (read from ``root`` when
    stored before and intact; otherwise prepared, with a progress bar, and stored atomically).

    Files are decoded and preprocessed on ``workers`` threads (default: the encoder's
    ``workers``, i.e. ``cache.media_workers``; 0: every core) and written in order, so the
    store's bytes do not depend on the pool size.

    A stored set that fails its checks (see :class:`StoredRows`) is reported, naming the file,
    removed and prepared again, so a damaged store never needs removing by hand.
    """
    identities = [file_identity(p) if p else None for p in paths]
    key = digest("inputs", INPUTS_VERSION, encoder.family, encoder.preprocessing(), identities,
                  media.duration_cap())[:32]
    folder = pathlib.Path(root) / key
    if folder.exists():
        try:
            rows = StoredRows(folder, encoder.collate)
            if len(rows) == len(paths):
                return rows
            problem = f"{folder / 'index.json'} holds {len(rows)} rows for {len(paths)} inputs"
        except StoredInputsError as err:
            problem = str(err)
        log.warning("%s: stored %s inputs fail their check: %s; preparing them again", desc, encoder.modality,
                    problem)
        _discard_store(folder)
    pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    loaded = _tuning_items(encoder, paths, workers)  # a generator: starts with the first item asked for
    try:
        handles, digests, dtypes, offsets, rows, present, groups = {}, {}, {}, {}, [], [], []
        skipped = 0
        for item in progress_bar(loaded, total=len(paths), desc=desc, enabled=progress, leave=False):
            ok = item is not None and not isinstance(item, MediaError)
            if isinstance(item, MediaError):
                log.warning("skipping %s input: %s", encoder.modality, item)
                skipped += 1
                item = None
            if item is None:
                item = encoder.blank_item()
            row = {}
            for name, value in item.items():
                value = np.ascontiguousarray(value)
                if name not in handles:
                    handles[name] = open(tmp / f"{name}.bin", "wb")
                    digests[name] = hashlib.sha256()
                    dtypes[name], offsets[name] = value.dtype.str, 0
                value = np.ascontiguousarray(value.astype(np.dtype(dtypes[name]), copy=False))
                data = value.tobytes()
                handles[name].write(data)
                digests[name].update(data)
                row[name] = [offsets[name], list(value.shape)]
                offsets[name] += int(value.size)
            rows.append(row)
            present.append(ok)
            groups.append(encoder.group(item))
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        if skipped:
            log.warning("%s: %d %s file(s) unreadable, treated as missing", desc, skipped, encoder.modality)
        files = {name: {"bytes": offsets[name] * np.dtype(dtypes[name]).itemsize, "sha256": digests[name].hexdigest()}
                 for name in handles}
        with open(tmp / "index.json", "w") as handle:
            json.dump({"names": list(handles), "dtypes": dtypes, "rows": rows, "present": present,
                       "groups": groups, "files": files}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.rename(tmp, folder)
            ours = True
        except OSError:  # another process stored the same inputs first
            shutil.rmtree(tmp, ignore_errors=True)
            ours = False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        loaded.close()  # stop the decoding threads now, not when a traceback is dropped
    # Our own files were hashed as they were written; another process's store is checked in full.
    return StoredRows(folder, encoder.collate, verify=not ours)


# ---------------------------------------------------------------------------------------------
# One fine-tuned encoder
# ---------------------------------------------------------------------------------------------
class _Tuner:
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


class MediaTuner(_Tuner):
    """Whisper, wav2vec2 / data2vec-audio, VideoMAE or CLIP (inputs stored on disk)."""

    def __init__(self, cfg, modality: str, encoder, stats: dict):
        """``encoder``: the Featurizer's media encoder (``emojax.encoders.media_encoders``)."""
        self.modality = modality
        self.encoder = encoder
        self.family = encoder.family
        if int(cfg.finetune.get("tune_layers", 0) or 0):
            log.warning("finetune.tune_layers applies to the text encoder; the %s encoder (%s) is fine-tuned whole",
                        modality, self.family)
        super().__init__(cfg, encoder.params, stats)
        self.config = dataclasses.replace(encoder.config, remat=self.remat)

    def _pooled(self, params, inputs, rng, deterministic):
        return self.encoder.tuning_features(params, inputs, config=self.config, deterministic=deterministic, rng=rng)

    def input_rows(self, split, root=None, progress=False) -> StoredRows:
        if root is None:
            raise ValueError("media inputs need a folder to be stored in")
        paths = [getattr(s, "audio" if self.modality == "A" else "video") for s in split.samples]
        return store_inputs(root, self.encoder, paths, desc=f"{self.modality} inputs ({split.name})",
                            progress=progress)

    def install(self, trainable) -> None:
        """The featurizer's media encoder computes with the tuned weights from now on."""
        self.encoder.set_params(self.merged(trainable))


# ---------------------------------------------------------------------------------------------
# The run's tuned encoders
# ---------------------------------------------------------------------------------------------
class Tuning:
    """The fine-tuned encoders of a run (see the module docstring)."""

    def __init__(self, cfg, featurizer, stats: dict):
        self.modalities = tuned_modalities(cfg)
        if not self.modalities:
            raise ValueError(f"mode: {cfg.mode!r}: no encoder of this run can be fine-tuned")
        self.tuners: dict[str, _Tuner] = {}
        for modality in self.modalities:
            wrapper = featurizer.encoders[modality]
            if modality == "T":
                # cycle: finetune_text builds on this module's _Tuner
                from emojax.training.finetune_text import TextTuner

                self.tuners[modality] = TextTuner(cfg, wrapper, stats)
            else:
                self.tuners[modality] = MediaTuner(cfg, modality, wrapper, stats)
        self.mode = str(cfg.mode)

    @property
    def base_args(self) -> Optional[dict]:
        """The frozen base weights per modality (lora), passed to the step as ``encoder_base``."""
        if self.mode != "lora":
            return None
        return {m: t.base_args for m, t in self.tuners.items()}

    def init(self, rng: jax.Array) -> dict:
        return {m: t.init(jax.random.fold_in(rng, i)) for i, (m, t) in enumerate(self.tuners.items())}

    def features(self, trainable: dict, base: Optional[dict], inputs: dict, present: dict, *,
                 rng: Optional[jax.Array] = None, deterministic: bool = True) -> dict:
        """``modality -> (batch, dim)`` standardised features of the tuned modalities; samples
        without the modality get zeros, as in the frozen feature sets."""
        out = {}
        for i, (m, tuner) in enumerate(self.tuners.items()):
            value = tuner.features(trainable[m], None if base is None else base[m], inputs[m],
                                   rng=None if rng is None else jax.random.fold_in(rng, i),
                                   deterministic=deterministic)
            out[m] = jnp.where(present[m][:, None], value, 0.0)
        return out

    def attach(self, data, split, root=None, progress: bool = False):
        """``data`` (a standardised :class:`~emojax.features.featurizer.FeatureSet` of ``split``) with the
        tuned encoders' inputs; a sample whose media file could not be read lacks the modality."""
        inputs = {m: t.input_rows(split, root=root, progress=progress) for m, t in self.tuners.items()}
        present = dict(data.present)
        for m, rows in inputs.items():
            if isinstance(rows, StoredRows):
                present[m] = present[m] & rows.present
        return dataclasses.replace(data, inputs=inputs, present=present)

    def refresh(self, data, trainable: dict, batch_size: int = 64):
        """``data`` (with ``inputs``) with the tuned modalities' features recomputed by the
        current encoders."""
        if data.inputs is None:
            raise ValueError("refresh: the feature set carries no encoder inputs")
        features = dict(data.features)
        for m, tuner in self.tuners.items():
            if len(data) == 0:
                continue
            values = tuner.refresh(data.inputs[m], trainable[m], batch_size)
            features[m] = np.where(data.present[m][:, None], values, 0.0).astype(np.float32)
        return dataclasses.replace(data, features=features)

    def merged(self, trainable: dict) -> dict:
        return {m: t.merged(trainable[m]) for m, t in self.tuners.items()}

    def install(self, trainable: dict) -> None:
        """Put the tuned weights (adapters merged) into the featurizer's encoders."""
        for m, tuner in self.tuners.items():
            tuner.install(trainable[m])

    def describe(self, trainable: dict) -> str:
        return "; ".join(t.describe(trainable[m]) for m, t in self.tuners.items())
