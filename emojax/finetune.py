"""The text encoder trained with the head: ``mode=trainable`` (every encoder weight) and
``mode=lora`` (low-rank adapters, :mod:`emojax.encoders.lora`).

:class:`TextTuning` holds what the train step needs about the text encoder: its base parameters
(with the speaker-token rows), architecture, pooling and tokens. Its trainable part is a pytree
kept in ``TrainState.encoder``: the whole encoder (``trainable``) or the adapters (``lora``).
Inside the step the pooled feature is computed from the tokens and scaled by the training
split's statistics of the *initial* encoder's features, so the head sees inputs on the scale it
sees in ``frozen`` mode; the same fixed scaling is used for evaluation and inference.

Audio and video encoders stay frozen in these modes (features from the cache).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import lora as lora_lib
from emojax.encoders.text import pool_hidden
from emojax.features import padded_batches

TUNING_MODES = ("trainable", "lora")


class TextTuning:
    """The fine-tuned text encoder of a run (see the module docstring)."""

    def __init__(self, cfg, text_features, stats: dict):
        """``text_features``: the Featurizer's text encoder (tokenizer and base parameters, speaker
        tokens added); ``stats``: the training split's feature statistics (``stats["T"]``)."""
        from emojax.encoders.modernbert import ModernBertConfig

        encoder = text_features.encoder
        self.mode = str(cfg.mode)
        if self.mode not in TUNING_MODES:
            raise ValueError(f"mode: {self.mode!r} does not fine-tune the text encoder")
        self.encoder = encoder
        self.base = jax.device_get(encoder.params)
        # The frozen base weights travel as a jit argument (never baked into the program as
        # constants); a trainable run needs none.
        self.base_args = jax.tree_util.tree_map(jnp.asarray, self.base) if cfg.mode == "lora" else None
        remat = bool(cfg.encoder.get("remat", False))
        self.config = dataclasses.replace(encoder.config, remat=remat)
        self.is_modernbert = isinstance(encoder.config, ModernBertConfig)
        self.mean = np.asarray(stats["T"]["mean"], np.float32)
        self.std = np.asarray(stats["T"]["std"], np.float32)
        spec = cfg.encoder.lora
        self.rank, self.alpha = int(spec.rank), float(spec.alpha)
        self.lora_dropout, self.targets = float(spec.dropout), str(spec.targets)
        self._forward = jax.jit(self._features)

    # -- parameters -----------------------------------------------------------------------
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

    # -- computation ----------------------------------------------------------------------
    def features(self, trainable, base, input_ids, attention_mask, *, rng: Optional[jax.Array] = None,
                 deterministic: bool = True):
        """Standardised pooled features ``(batch, dim)`` float32 (differentiable in ``trainable``;
        ``base``: :attr:`base_args`)."""
        lora_rng = enc_rng = None
        if rng is not None:
            lora_rng, enc_rng = jax.random.split(rng)
        params = self.effective(trainable, base, rng=lora_rng, deterministic=deterministic)
        return self._features_of(params, input_ids, attention_mask, enc_rng, deterministic)

    def _features_of(self, params, input_ids, attention_mask, rng, deterministic):
        from emojax.encoders.bert import bert_apply
        from emojax.encoders.modernbert import modernbert_apply

        apply = modernbert_apply if self.is_modernbert else bert_apply
        encoder = self.encoder
        hidden = apply(params, input_ids, attention_mask, config=self.config, dtype=encoder.dtype,
                       deterministic=deterministic, rng=rng)
        pooled = pool_hidden(hidden, attention_mask, input_ids, pooling=encoder.pooling,
                             mask_token_id=encoder.tokenizer.mask_token_id).astype(jnp.float32)
        return (pooled - self.mean) / self.std

    def _features(self, trainable, base, input_ids, attention_mask):
        return self.features(trainable, base, input_ids, attention_mask, deterministic=True)

    def tokens(self, texts) -> dict:
        """``{"input_ids", "attention_mask"}`` ``(n, max_length)`` int32, padded on the right,
        truncated from the left (the prompt and the mask token at the end are kept)."""
        ids = self.encoder.token_ids(texts)
        width = self.encoder.max_length
        input_ids = np.full((len(ids), width), self.encoder.pad_token_id, np.int32)
        attention = np.zeros((len(ids), width), np.int32)
        for row, sequence in enumerate(ids):
            input_ids[row, :len(sequence)] = sequence
            attention[row, :len(sequence)] = 1
        return {"input_ids": input_ids, "attention_mask": attention}

    def refresh(self, data, trainable, batch_size: int = 64):
        """``data`` (a standardised :class:`~emojax.features.FeatureSet` with ``tokens``) with its
        text features recomputed by the current encoder."""
        if data.tokens is None:
            raise ValueError("refresh: the feature set carries no tokens")
        ids, mask = data.tokens["input_ids"], data.tokens["attention_mask"]
        rows = []
        for index, padded in padded_batches(len(ids), batch_size):
            rows.append(np.asarray(self._forward(trainable, self.base_args, ids[padded], mask[padded]))[:len(index)])
        features = dict(data.features)
        features["T"] = np.concatenate(rows).astype(np.float32) if rows else data.features["T"]
        return dataclasses.replace(data, features=features)

    def describe(self, trainable) -> str:
        total = lora_lib.count_parameters(self.base)
        if self.mode == "trainable":
            return f"text encoder fine-tuned: {total:,} parameters"
        adapters = lora_lib.count_parameters(trainable)
        return (f"text encoder LoRA: {len(trainable)} adapted projections, rank {self.rank}, alpha {self.alpha:g}: "
                f"{adapters:,} trainable parameters ({100 * adapters / total:.2f}% of {total:,})")
