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

The tuners build on :mod:`emojax.training.finetune_base` (the shared :class:`Tuner`, input rows and
the checked store's reader): the media tuner and its input store live in
:mod:`emojax.training.finetune_media`, the text tuner in :mod:`emojax.training.finetune_text`: token
ids padded per length bucket, and
``finetune.tune_layers=K``, which trains the top ``K`` layers from stored hidden states of the
frozen ones. ``tune_layers`` applies to the text families only; a Whisper, wav2vec2, VideoMAE or
CLIP encoder of the same run is fine-tuned whole (their hidden states, hundreds to thousands of
positions of each clip, would take far more disk than their inputs).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.config import tuned_modalities
from emojax.training.finetune_base import StoredRows, Tuner
from emojax.training.finetune_media import MediaTuner
from emojax.training.finetune_text import TextTuner

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The run's tuned encoders
# ---------------------------------------------------------------------------------------------
class Tuning:
    """The fine-tuned encoders of a run (see the module docstring)."""

    def __init__(self, cfg, featurizer, stats: dict):
        self.modalities = tuned_modalities(cfg)
        if not self.modalities:
            raise ValueError(f"mode: {cfg.mode!r}: no encoder of this run can be fine-tuned")
        self.tuners: dict[str, Tuner] = {}
        for modality in self.modalities:
            wrapper = featurizer.encoders[modality]
            if modality == "T":

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
