"""The media tuner: Whisper, wav2vec2 / data2vec-audio, VideoMAE or CLIP fine-tuned with the head.

Media inputs (Whisper log-mel frames, normalised wav2vec2 waveforms, video frames resized and
cropped as ``uint8``) are prepared once per split and stored on disk beside the feature cache
(:func:`store_inputs`; see :mod:`emojax.training.finetune` for the store's rules).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np

from emojax.features.cache import file_identity
from emojax.data.media import MediaError, map_references
from emojax.files import digest
from emojax.progress import progress_bar

from emojax.training.finetune_base import INPUTS_VERSION, StoredInputsError, StoredRows, Tuner, discard_store

log = logging.getLogger(__name__)


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
    # The encoder's duration cap is part of the key: a clip cut at another length is another input.
    key = digest("inputs", INPUTS_VERSION, encoder.family, encoder.preprocessing(), identities,
                  encoder.max_seconds)[:32]
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
        discard_store(folder)
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


class MediaTuner(Tuner):
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


