"""Neural media encoders for whole splits: Whisper, wav2vec2 / data2vec-audio, VideoMAE, CLIP.

    encoder = media_encoder("A", spec, dtype=jnp.float32)    # spec: {"family", "model", "pooling"}
    matrix = encoder.compute(["a.flac", "b.flac"])           # (2, encoder.dim) float32

Each family wraps one of the pure-function encoders of this package behind the interface
``emojax.features.featurizer.Featurizer`` uses for a modality: ``dim``, ``namespace`` (the feature-cache
namespace: a digest of the family, the model, the weights hash of the loaded parameters, the
preprocessing settings, the pooling and the compute dtype) and a batched
``compute(paths) -> (n, dim)``. A file that cannot be read (``MediaError``) gives a NaN row, a
logged ``skipping ...`` warning and an entry in ``errors`` (path -> reason), like the classic
encoders; the featurizer then treats the modality as missing for that sample.

Preprocessing is transformers' own for the checkpoint, read from the model folder
(``preprocessor_config.json``; defaults sized from the model's config when the folder has none):

=========  ================================  =====================================================
family     input                             preprocessing
=========  ================================  =====================================================
whisper    mono audio at the extractor rate  ``WhisperFeatureExtractor``: log-mel, padded / cut to
                                             its window (30 s for the released models)
wav2vec2   mono audio at the extractor rate  ``Wav2Vec2FeatureExtractor``: per-utterance
           (data2vec-audio too, by the       normalisation, zero-padded to the clip's length
           checkpoint's ``model_type``)      bucket (1, 2, 4, 8, 16 or 30 s; longer clips cut)
videomae   ``num_frames`` frames (the        ``VideoMAEImageProcessor`` (resize, centre crop,
           config's) spread over the clip    rescale, normalise)
clip       ``CLIP_FRAMES`` frames spread     ``CLIPImageProcessor`` per frame
           over the clip
=========  ================================  =====================================================

Pooling (``encoders.X.pooling``; ``default`` is the suite's choice):

* whisper: ``default`` = ``mean`` = mean over the encoder frames that cover real audio
  (:func:`emojax.encoders.whisper.whisper_pool`); Whisper has no class position.
* wav2vec2: ``default`` = ``first`` = the first frame; ``mean`` = mean over the valid frames.
* videomae: ``default`` = ``first`` = the first token; ``mean`` = the token mean, followed by the
  checkpoint's ``fc_norm`` when it has one (transformers' video classifier).
* clip: ``default`` = ``first`` = each frame's pooled class token (``post_layernorm``), averaged
  over the frames (:func:`emojax.encoders.clip_vision.clip_video_features`); ``mean`` = the mean
  of every token of every frame's last hidden state.

Files are decoded and preprocessed on a pool of ``workers`` threads (0: every core; the
Featurizer sets it from ``cache.media_workers``) while the encoder runs the batches, the
references handed back in input order (``emojax.data.media.map_references``), so the batches,
and with them the features, are the same whatever the pool size. A family splits its input into
``decode_group`` (the files' samples or frames; the segments of one recording read in one pass,
video frames shrunk to the processor's resize as they are decoded) and ``prepare`` /
``tuning_prepare`` (the model input of one decoded file). Each file is decoded up to the
encoder's ``max_seconds`` (the run's ``dataset.max_seconds``, given to :func:`media_encoder`).

Compiled shapes stay fixed: every call runs ``BATCH_SIZE`` rows (a short batch repeats its last
input), Whisper and the video encoders have one input shape, wav2vec2 one per length bucket, and
each sample is padded to its own bucket, so its feature does not depend on the other files
computed with it.

Fine-tuning (``mode=trainable`` / ``lora``, :mod:`emojax.training.finetune`) uses the same families
through pure forward passes (``whisper_forward``, ``wav2vec2_forward``, ``videomae_forward``,
``clip_forward``: encoder input in, pooled feature out, dropout and an rng when training) and
per-family ``tuning_item`` / ``collate`` (one file's preprocessed input, stored once; video
frames as ``uint8``, normalised inside the step), so the in-step features equal the frozen ones
before any update.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.data.types import DEFAULT_MAX_SECONDS
from emojax.data.media import (MediaError, duration_cap, map_references, read_audios,
                               read_video_references)
from emojax.encoders import hub
from emojax.encoders.families import DEFAULT_POOLING, MEDIA_FAMILIES
from emojax.encoders.bert import params_hash
from emojax.encoders.clip_vision import clip_video_features, clip_vision_apply, load_clip_vision
from emojax.encoders.videomae import load_videomae, videomae_apply, videomae_pool
from emojax.encoders.wav2vec2 import load_wav2vec2, load_wav2vec2_feature_extractor, wav2vec2_apply, wav2vec2_pool
from emojax.encoders.whisper import (load_whisper, load_whisper_feature_extractor, whisper_apply, whisper_pool,
                                     whisper_preprocess)
from emojax.files import digest
from emojax.progress import progress_bar

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
BATCH_SIZE = 8  # rows of every compiled call
CLIP_FRAMES = 8  # frames CLIP encodes per video (one image each)
WAV2VEC2_BUCKETS_S = (1, 2, 4, 8, 16, 30)  # padded lengths of wav2vec2 inputs, seconds; longer clips are cut

FAMILIES = MEDIA_FAMILIES  # the registry (emojax.encoders.families), by the name this module uses


def resolve_pooling(family: str, pooling: str) -> str:
    """The pooling a family runs for ``encoders.X.pooling`` (``default``: the suite's choice)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown media encoder family {family!r}; choose from {', '.join(FAMILIES)}")
    allowed = FAMILIES[family][1]
    if pooling not in allowed:
        raise ValueError(f"pooling {pooling!r} is not supported by {family}; choose from {', '.join(allowed)}")
    return DEFAULT_POOLING[family] if pooling == "default" else pooling


def _settings(processor) -> dict:
    """A feature extractor's / image processor's settings, JSON-ready (arrays as lists)."""
    def plain(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return repr(value)

    return {k: plain(v) for k, v in processor.to_dict().items() if not k.startswith("_")}


# -- forward passes (module level: encoders of one architecture share compilations) ----------
# Each family's pooled features as one pure function of (params, inputs); the frozen feature path
# jit-compiles it with deterministic=True, fine-tuning (emojax.training.finetune) calls it inside the train
# step with dropout.

def whisper_forward(params, inputs, *, config, dtype, pooling="mean", deterministic=True, rng=None):
    """``inputs``: ``mel`` ``(batch, n_mels, frames)``, ``mel_mask`` ``(batch, frames)``."""
    hidden = whisper_apply(params, inputs["mel"], config=config, dtype=dtype, deterministic=deterministic, rng=rng)
    return whisper_pool(hidden, inputs["mel_mask"])


def wav2vec2_forward(params, inputs, *, config, dtype, pooling, masked, deterministic=True, rng=None):
    """``inputs``: ``audio`` ``(batch, samples)`` (the extractor's output), ``mask`` ``(batch, samples)``."""
    mask = inputs["mask"]
    hidden = wav2vec2_apply(params, inputs["audio"], mask if masked else None, config=config, dtype=dtype,
                            deterministic=deterministic, rng=rng)
    return wav2vec2_pool(hidden, mask, config=config, pooling=pooling)


def videomae_forward(params, inputs, *, config, dtype, pooling, deterministic=True, rng=None):
    """``inputs``: ``pixels`` ``(batch, frames, channels, height, width)``, normalised."""
    hidden = videomae_apply(params, inputs["pixels"], config=config, dtype=dtype, deterministic=deterministic, rng=rng)
    if pooling == "first":
        return hidden[:, 0]
    return videomae_pool(params, hidden, config=dataclasses.replace(config, use_mean_pooling=True))


def clip_forward(params, inputs, *, config, dtype, pooling, deterministic=True, rng=None):
    """``inputs``: ``pixels`` ``(batch, frames, channels, height, width)``, normalised."""
    frames = inputs["pixels"]
    if pooling == "first":
        return clip_video_features(params, frames, config=config, pooling="mean", dtype=dtype,
                                   deterministic=deterministic, rng=rng)
    batch = frames.shape[0]
    hidden, _ = clip_vision_apply(params, frames.reshape((-1,) + frames.shape[2:]), config=config, dtype=dtype,
                                  deterministic=deterministic, rng=rng)
    return hidden.reshape(batch, -1, hidden.shape[-1]).mean(axis=1)


@functools.partial(jax.jit, static_argnames=("forward", "settings"))
def _frozen_features(params, inputs, *, forward, settings):
    """``forward(params, inputs, **settings)`` jit-compiled (``settings``: a sorted tuple of items)."""
    return forward(params, inputs, **dict(settings))


# -- the encoders ------------------------------------------------------------------------------

class _MediaEncoder:
    """Shared batching, skipping and hashing; a family supplies ``load``, ``bucket`` and ``run``."""

    family: str = ""
    modality: str = ""
    # threads that decode and preprocess media (cache.media_workers; 0: every core)
    workers: int = 0
    # whether decode_group gets every reference into one file at once (video: one pass per recording)
    by_file: bool = False

    def __init__(self, spec, dtype=jnp.float32, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS):
        self.spec = spec
        # seconds of each clip decoded (emojax.data.media.duration_cap; None: all of it)
        self.max_seconds = duration_cap(max_seconds)
        self.model = str(spec["model"])
        self.pooling = resolve_pooling(self.family, str(spec.get("pooling", "default")))
        self.dtype = dtype
        self.folder = hub.resolve_model(self.model)
        params, self.config = self._load_model()
        self.batch_size = BATCH_SIZE
        self.set_params(params)
        # path -> why it could not be read (see emojax.inference.predict_table); cleared by the reader.
        self.errors: dict[str, str] = {}

    # a family's parts
    def _load_model(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def preprocessing(self) -> dict:
        """What decides the model input besides the file (part of the cache namespace)."""
        raise NotImplementedError

    def decode_group(self, paths: list[str]) -> list:
        """The decoded content (samples, frames) of each of ``paths``, or its ``MediaError``."""
        raise NotImplementedError

    def prepare(self, decoded) -> Any:
        """The model input of one decoded file (runs on a worker thread)."""
        return decoded

    def tuning_prepare(self, decoded) -> dict[str, np.ndarray]:
        """The stored fine-tuning input of one decoded file (runs on a worker thread)."""
        raise NotImplementedError

    def _one(self, path: str):
        decoded = self.decode_group([str(path)])[0]
        if isinstance(decoded, Exception):
            raise decoded
        return decoded

    def load(self, path: str):
        """The decoded, preprocessed input of one file (raises ``MediaError``)."""
        return self.prepare(self._one(path))

    def inputs(self, paths: Sequence[str], *, tuning: bool = False, workers: Optional[int] = None):
        """:meth:`load` (``tuning``: :meth:`tuning_item`) of every path, or its ``MediaError``, in
        order, decoded and preprocessed on a pool of ``workers`` threads (default :attr:`workers`)."""
        return map_references([str(p) for p in paths], self.decode_group,
                              self.tuning_prepare if tuning else self.prepare,
                              workers=self.workers if workers is None else workers, by_file=self.by_file)

    def bucket(self, item) -> Any:
        """Inputs with the same bucket are batched together (one compiled shape per bucket)."""
        return None

    def run(self, items: Sequence, bucket) -> np.ndarray:
        """Features ``(len(items), dim)`` of exactly ``batch_size`` items."""
        raise NotImplementedError

    # fine-tuning (emojax.training.finetune): per-sample stored inputs, batched, and the pure forward pass
    forward: Any = None  # the family's pure forward pass (whisper_forward, ...), as a staticmethod

    def settings(self) -> dict:
        """The static arguments of :attr:`forward` besides config, dtype and dropout."""
        return {"pooling": self.pooling}

    def tuning_item(self, path: str) -> dict[str, np.ndarray]:
        """The stored fine-tuning input of one file (raises ``MediaError``)."""
        return self.tuning_prepare(self._one(path))

    def blank_item(self) -> dict[str, np.ndarray]:
        """A stand-in input for a missing or unreadable file (its feature is masked out)."""
        raise NotImplementedError

    def group(self, item) -> Any:
        """Stored inputs of one group are evaluated together (wav2vec2: the length bucket)."""
        return None

    def collate(self, items: Sequence[dict]) -> dict[str, np.ndarray]:
        """A batch of stored inputs."""
        return {name: np.stack([item[name] for item in items]) for name in items[0]}

    def tuning_inputs(self, inputs: dict) -> dict:
        """Collated stored inputs -> :attr:`forward`'s inputs (inside the step)."""
        return inputs

    def tuning_features(self, params, inputs: dict, *, config=None, deterministic: bool = True,
                        rng: Optional[jax.Array] = None):
        """Pooled features ``(batch, dim)`` of collated stored inputs (pure; differentiable)."""
        return type(self).forward(params, self.tuning_inputs(inputs), config=config or self.config,
                                  dtype=self.dtype, deterministic=deterministic, rng=rng, **self.settings())

    def frozen(self, inputs: dict) -> jax.Array:
        """:attr:`forward` jit-compiled without dropout on the loaded weights."""
        settings = {"config": self.config, "dtype": self.dtype, **self.settings()}
        return _frozen_features(self.params, inputs, forward=type(self).forward,
                                settings=tuple(sorted(settings.items())))

    def set_params(self, params) -> None:
        """Compute with ``params`` (e.g. fine-tuned weights) from now on; the weights hash and the
        cache namespace follow them."""
        self.params = params
        self.weights_hash = params_hash(self.params, repr(self.config))
        self.namespace = digest(self.family, FEATURE_VERSION, self.model, self.weights_hash, self.preprocessing(),
                                self.pooling, str(jnp.dtype(self.dtype)))[:24]

    # shared
    def compute(self, paths: Sequence[str], progress: bool = False) -> np.ndarray:
        """Features ``(len(paths), dim)`` float32; rows of unreadable files are NaN.

        Inputs are loaded ahead on the worker pool while the batches run, and consumed in order,
        so each batch holds the same inputs as in a serial loop.
        """
        paths = [str(p) for p in paths]
        out = np.full((len(paths), self.dim), np.nan, np.float32)
        pending: dict[Any, list[tuple[int, Any]]] = {}

        def flush(key):
            group = pending.pop(key)
            items = [item for _, item in group]
            items += [items[-1]] * (self.batch_size - len(items))  # fixed rows: repeat the last input
            values = np.asarray(self.run(items, key), np.float32)
            for row, (index, _) in enumerate(group):
                out[index] = values[row]

        for index, item in enumerate(progress_bar(self.inputs(paths), total=len(paths), desc=f"{self.family} features",
                                                  enabled=progress, leave=False)):
            if isinstance(item, MediaError):
                log.warning("skipping %s input: %s", self.modality, item)
                self.errors[paths[index]] = str(item)
                continue
            key = self.bucket(item)
            pending.setdefault(key, []).append((index, item))
            if len(pending[key]) == self.batch_size:
                flush(key)
        for key in list(pending):
            flush(key)
        return out


def whisper_clip_input(decoded: np.ndarray, extractor) -> tuple[np.ndarray, np.ndarray]:
    """``(mel, mask)`` of one clip: the extractor works clip by clip (each padded to its window),
    so one clip's log-mel equals its row of a batch's. A module-level function, so that it goes to
    the media pool's worker processes by name (transformers' numpy log-mel holds the GIL: on
    threads two workers were slower than one)."""
    mel, mask = whisper_preprocess([decoded], extractor, sampling_rate=int(extractor.sampling_rate))
    return mel[0], mask[0]


def whisper_tuning_input(decoded: np.ndarray, extractor) -> dict[str, np.ndarray]:
    """The stored fine-tuning input of one clip (:func:`whisper_clip_input`, as arrays of the step)."""
    mel, mask = whisper_clip_input(decoded, extractor)
    return {"mel": mel.astype(np.float32), "mel_mask": mask.astype(np.int32)}


class WhisperFeatures(_MediaEncoder):
    """Whisper encoder; pooled over the frames of real audio. Clips are decoded and turned into
    log-mel inputs on the media pool's worker processes (:meth:`inputs`)."""

    family, modality = "whisper", "A"

    def _load_model(self):
        params, config = load_whisper(str(self.folder))
        self.extractor = load_whisper_feature_extractor(str(self.folder), config=config)
        if self.extractor.nb_max_frames > config.max_mel_frames:
            raise hub.WeightError(f"{self.folder}: the feature extractor makes {self.extractor.nb_max_frames} mel "
                                  f"frames but the encoder takes at most {config.max_mel_frames}; fix "
                                  "preprocessor_config.json (chunk_length)")
        return params, config

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def preprocessing(self) -> dict:
        return {"extractor": _settings(self.extractor)}

    def decode_group(self, paths):
        return read_audios(paths, int(self.extractor.sampling_rate), max_seconds=self.max_seconds)

    def prepare(self, decoded):
        """``(mel, mask)`` of one clip (:func:`whisper_clip_input`)."""
        return whisper_clip_input(decoded, self.extractor)

    def inputs(self, paths: Sequence[str], *, tuning: bool = False, workers: Optional[int] = None):
        """As :meth:`_MediaEncoder.inputs`, on worker processes: only the paths go out and the
        log-mel inputs come back (the extractor travels with each task)."""
        decode = functools.partial(read_audios, sample_rate=int(self.extractor.sampling_rate),
                                   max_seconds=self.max_seconds)
        finish = functools.partial(whisper_tuning_input if tuning else whisper_clip_input, extractor=self.extractor)
        return map_references([str(p) for p in paths], decode, finish,
                              workers=self.workers if workers is None else workers, by_file=False, processes=True)

    def run(self, items, bucket):
        mel = np.stack([item[0] for item in items])
        mask = np.stack([item[1] for item in items])
        return self.frozen({"mel": jnp.asarray(mel), "mel_mask": jnp.asarray(mask)})

    forward = staticmethod(whisper_forward)

    def settings(self):
        return {}

    def tuning_prepare(self, decoded):
        return whisper_tuning_input(decoded, self.extractor)

    def blank_item(self):
        frames = int(self.extractor.nb_max_frames)
        return {"mel": np.zeros((int(self.extractor.feature_size), frames), np.float32),
                "mel_mask": np.ones(frames, np.int32)}


class Wav2Vec2Features(_MediaEncoder):
    """wav2vec2 or data2vec-audio (by the checkpoint's ``model_type``); inputs padded per length bucket.

    Layer-norm checkpoints get the sample mask, as transformers does; group-norm ones
    (wav2vec2-base) run unmasked as transformers advises, the mask then only selecting the frames
    that ``mean`` pooling averages.
    """

    family, modality = "wav2vec2", "A"

    def _load_model(self):
        params, config = load_wav2vec2(str(self.folder))
        self.extractor = load_wav2vec2_feature_extractor(str(self.folder))
        self.masked = config.feat_extract_norm == "layer"
        rate = int(self.extractor.sampling_rate)
        self.buckets = tuple(max(int(s * rate), config.receptive_field) for s in WAV2VEC2_BUCKETS_S)
        return params, config

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def preprocessing(self) -> dict:
        return {"extractor": _settings(self.extractor), "buckets": self.buckets, "masked": self.masked}

    def decode_group(self, paths):
        return [wave if isinstance(wave, Exception) else wave[: self.buckets[-1]]
                for wave in read_audios(paths, int(self.extractor.sampling_rate), max_seconds=self.max_seconds)]

    def bucket(self, item) -> int:
        return next(b for b in self.buckets if b >= len(item))

    def preprocess(self, items, bucket) -> tuple[np.ndarray, np.ndarray]:
        """``(input_values, attention_mask)`` ``(len(items), bucket)``: the extractor's output
        padded to ``bucket`` samples."""
        waves = [np.asarray(w, np.float32) for w in items]
        out = self.extractor(waves, sampling_rate=int(self.extractor.sampling_rate), padding="max_length",
                             max_length=int(bucket), truncation=True, return_attention_mask=True, return_tensors="np")
        return np.asarray(out["input_values"], np.float32), np.asarray(out["attention_mask"], np.int32)

    def run(self, items, bucket):
        audio, mask = self.preprocess(items, bucket)
        return self.frozen({"audio": jnp.asarray(audio), "mask": jnp.asarray(mask)})

    forward = staticmethod(wav2vec2_forward)

    def settings(self):
        return {"pooling": self.pooling, "masked": self.masked}

    def tuning_prepare(self, decoded):
        """The clip normalised by the extractor, unpadded (padding comes per batch)."""
        wave = np.asarray(decoded, np.float32)
        out = self.extractor(wave, sampling_rate=int(self.extractor.sampling_rate), return_tensors="np")
        return {"audio": np.asarray(out["input_values"], np.float32).reshape(-1)}

    def blank_item(self):
        return {"audio": np.zeros(self.buckets[0], np.float32)}

    def group(self, item):
        return self.bucket(item["audio"])

    def collate(self, items):
        """Clips padded (the extractor's padding value) to the bucket of the longest one."""
        width = self.bucket(max((item["audio"] for item in items), key=len))
        audio = np.full((len(items), width), float(self.extractor.padding_value), np.float32)
        mask = np.zeros((len(items), width), np.int32)
        for row, item in enumerate(items):
            clip = item["audio"][:width]
            audio[row, :len(clip)] = clip
            mask[row, :len(clip)] = 1
        return {"audio": audio, "mask": mask}


def _image_processor(cls, folder, height: int, width: int):
    """The checkpoint's image processor (``preprocessor_config.json``), or ``cls`` sized from the
    model's config: resize the shortest edge, centre-crop to ``height`` x ``width``."""
    if (folder / "preprocessor_config.json").exists():
        return cls.from_pretrained(str(folder))
    return cls(size={"shortest_edge": min(height, width)}, crop_size={"height": height, "width": width})


def _frame_resizer(processor):
    """The processor's own resize of one RGB frame ``(H, W, 3)`` (its size, its resampling), or
    ``None`` when it does not resize.

    Applied to each frame as it is decoded (``read_video_frames(transform=...)``), it leaves the
    frames exactly as the processor would have resized them, so the processor then runs with
    ``do_resize=False`` and gives the same pixels, while a clip holds frames of the model's scale
    instead of full-size ones. The processor resizes frame by frame, so doing it earlier changes
    nothing but when it happens.
    """
    if not processor.do_resize:
        return None
    # transformers takes seconds to import, so it is imported on use.
    from transformers.image_utils import ChannelDimension

    def resize(frame: np.ndarray) -> np.ndarray:
        # Channels first: the PIL-backed processors of transformers 5 (no torchvision) ignore a
        # channels-last input format in resize; both versions honour channels first.
        out = processor.resize(np.moveaxis(frame, -1, 0), size=processor.size, resample=processor.resample,
                               input_data_format=ChannelDimension.FIRST)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1))

    return resize


def _read_frames_group(paths: list[str], num_frames: int, processor, max_seconds: Optional[float]) -> list:
    return read_video_references(paths, num_frames, transform=_frame_resizer(processor), max_seconds=max_seconds)


def _unnormalised(processor, images) -> np.ndarray:
    """The processor's cropped frames (already resized by :func:`_frame_resizer`), ``uint8``,
    channels first (no rescale / normalise)."""
    pixels = processor(images, return_tensors="np", do_resize=False, do_rescale=False,
                       do_normalize=False)["pixel_values"]
    return np.asarray(pixels).astype(np.uint8)


def _normalise(processor, frames):
    """``uint8`` frames ``(..., channels, height, width)`` -> the processor's float32 pixel values
    (rescale, then normalise per channel, as its own settings say)."""
    x = frames.astype(jnp.float32)
    if processor.do_rescale:
        x = x * jnp.float32(processor.rescale_factor)
    if processor.do_normalize:
        mean = jnp.asarray(processor.image_mean, jnp.float32).reshape(-1, 1, 1)
        std = jnp.asarray(processor.image_std, jnp.float32).reshape(-1, 1, 1)
        x = (x - mean) / std
    return x


class VideoMAEFeatures(_MediaEncoder):
    """VideoMAE over the config's ``num_frames`` frames of each clip."""

    family, modality = "videomae", "V"

    def _load_model(self):
        # transformers takes seconds to import, so it is imported on use.
        from transformers import VideoMAEImageProcessor

        params, config = load_videomae(str(self.folder))
        self.processor = _image_processor(VideoMAEImageProcessor, self.folder, *config.image_size)
        return params, config

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def preprocessing(self) -> dict:
        return {"processor": _settings(self.processor), "num_frames": self.config.num_frames}

    by_file = True

    def decode_group(self, paths):
        return _read_frames_group(paths, self.config.num_frames, self.processor, self.max_seconds)

    def prepare(self, decoded):
        pixels = self.processor([list(decoded)], return_tensors="np", do_resize=False)["pixel_values"][0]
        return np.asarray(pixels, np.float32)  # (frames, channels, height, width)

    def run(self, items, bucket):
        return self.frozen({"pixels": jnp.asarray(np.stack(items))})

    forward = staticmethod(videomae_forward)

    def tuning_prepare(self, decoded):
        """The frames resized and cropped, ``uint8`` (rescaled and normalised inside the step)."""
        return {"frames": _unnormalised(self.processor, [list(decoded)])[0]}

    def blank_item(self):
        return {"frames": np.zeros((self.config.num_frames, self.config.num_channels) + tuple(self.config.image_size),
                                   np.uint8)}

    def tuning_inputs(self, inputs):
        return {"pixels": _normalise(self.processor, inputs["frames"])}


class CLIPFeatures(_MediaEncoder):
    """CLIP vision tower over ``CLIP_FRAMES`` frames of each clip, pooled over time."""

    family, modality = "clip", "V"

    def _load_model(self):
        # transformers takes seconds to import, so it is imported on use.
        from transformers import CLIPImageProcessor

        params, config = load_clip_vision(str(self.folder))
        self.processor = _image_processor(CLIPImageProcessor, self.folder, config.image_size, config.image_size)
        self.num_frames = CLIP_FRAMES
        return params, config

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def preprocessing(self) -> dict:
        return {"processor": _settings(self.processor), "num_frames": self.num_frames}

    by_file = True

    def decode_group(self, paths):
        return _read_frames_group(paths, self.num_frames, self.processor, self.max_seconds)

    def prepare(self, decoded):
        pixels = self.processor(images=list(decoded), return_tensors="np", do_resize=False)["pixel_values"]
        return np.asarray(pixels, np.float32)  # (frames, channels, height, width)

    def run(self, items, bucket):
        return self.frozen({"pixels": jnp.asarray(np.stack(items))})

    forward = staticmethod(clip_forward)

    def tuning_prepare(self, decoded):
        """The frames resized and cropped, ``uint8`` (rescaled and normalised inside the step)."""
        return {"frames": _unnormalised(self.processor, list(decoded))}

    def blank_item(self):
        size = self.config.image_size
        return {"frames": np.zeros((self.num_frames, self.config.num_channels, size, size), np.uint8)}

    def tuning_inputs(self, inputs):
        return {"pixels": _normalise(self.processor, inputs["frames"])}


ENCODERS = {"whisper": WhisperFeatures, "wav2vec2": Wav2Vec2Features, "videomae": VideoMAEFeatures,
            "clip": CLIPFeatures}


def media_encoder(modality: str, spec, dtype=jnp.float32, *,
                  max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> _MediaEncoder:
    """The neural encoder ``spec`` (``{"family", "model", "pooling"}``) names for ``modality``,
    decoding at most ``max_seconds`` of each clip (0 or ``None``: all of it)."""
    family = str(spec["family"])
    if family not in ENCODERS or FAMILIES[family][0] != modality:
        choices = [f for f, (m, _) in FAMILIES.items() if m == modality]
        raise ValueError(f"encoders.{modality}.family: {family!r} is not a neural {modality} encoder; "
                         f"choose from {', '.join(choices)}")
    return ENCODERS[family](spec, dtype, max_seconds=max_seconds)


__all__ = ["BATCH_SIZE", "CLIP_FRAMES", "DEFAULT_POOLING", "ENCODERS", "FAMILIES", "CLIPFeatures",
           "VideoMAEFeatures", "Wav2Vec2Features", "WhisperFeatures", "media_encoder", "resolve_pooling"]
