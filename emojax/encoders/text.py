"""A frozen text encoder: transformers' tokenizer + the pure-function BERT + pooling.

    encoder = TextEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", pooling="mean")
    features = encoder.encode(["I can't believe it!", "Fine."])   # (2, hidden) float32

Pooling: ``mask`` = hidden state at the last mask token of each text (the suite's prompt ends
with ``Now <sK> feels [MASK]``), ``mean`` = mean over valid tokens, ``cls`` = first token.
Texts longer than ``max_length`` tokens are truncated from the left, keeping the end.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from emojax.encoders import hub
from emojax.encoders.bert import BertConfig, bert_apply, grow_embeddings, load_bert, params_hash

POOLINGS = ("mask", "mean", "cls")
_BUCKETS = (16, 32, 64, 128, 256, 512)


def pool_hidden(hidden, attention_mask, input_ids, *, pooling: str, mask_token_id: int):
    """``(batch, seq, hidden)`` -> ``(batch, hidden)`` by ``pooling`` (see the module docstring)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = attention_mask.astype(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    if pooling == "mask":
        positions = jnp.arange(input_ids.shape[1])
        last = jnp.max(jnp.where(input_ids == mask_token_id, positions, -1), axis=1)
        return jnp.take_along_axis(hidden, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


class TextEncoder:
    """Tokenizer + BERT/RoBERTa parameters + pooling, for frozen feature extraction."""

    def __init__(self, name: str, tokenizer, params, config: BertConfig, *, pooling: str = "mean",
                 max_length: int = 128, dtype=jnp.float32):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.name = name
        self.tokenizer = tokenizer
        self.params = params
        self.config = config
        self.pooling = pooling
        self.max_length = min(int(max_length), config.max_positions - (config.pad_token_id + 1
                                                                        if config.model_type == "roberta" else 0))
        self.dtype = dtype
        self._hash = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, pooling: str = "mean", max_length: int = 128,
                        dtype=jnp.float32) -> "TextEncoder":
        from transformers import AutoTokenizer

        folder = hub.resolve_model(name_or_path)
        params, config = load_bert(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder), truncation_side="left")
        return cls(str(name_or_path), tokenizer, params, config, pooling=pooling, max_length=max_length,
                   dtype=dtype)

    # -- vocabulary -----------------------------------------------------------------------
    @property
    def sep_token(self) -> str:
        return self.tokenizer.sep_token

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def add_special_tokens(self, tokens: Sequence[str]) -> int:
        """Add ``tokens`` (e.g. ``<s0>``...) to the tokenizer and grow the embedding matrix to match."""
        added = self.tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)},
                                                  replace_additional_special_tokens=False)
        rows = self.params["embeddings"]["word"].shape[0]
        grow = len(self.tokenizer) - rows
        if grow > 0:
            self.params = grow_embeddings(self.params, grow)
            self._hash = None
        return added

    @property
    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = params_hash(self.params)
        return self._hash

    def save_preprocessing(self, folder: str | pathlib.Path) -> None:
        """Save the tokenizer (with any added tokens) so inference tokenizes identically."""
        self.tokenizer.save_pretrained(str(folder))

    # -- encoding -------------------------------------------------------------------------
    @functools.cached_property
    def _forward(self):
        config, dtype, pooling = self.config, self.dtype, self.pooling
        mask_id = self.tokenizer.mask_token_id if self.tokenizer.mask_token is not None else -1

        @jax.jit
        def forward(params, input_ids, attention_mask):
            hidden = bert_apply(params, input_ids, attention_mask, config=config, dtype=dtype)
            return pool_hidden(hidden, attention_mask, input_ids, pooling=pooling, mask_token_id=mask_id)

        return forward

    def tokenize(self, texts: Sequence[str]) -> dict:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Pooled features ``(len(texts), hidden)`` float32."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenize(texts)["input_ids"]
        if self.pooling == "mask":
            mask_id = self.tokenizer.mask_token_id
            for i, row in enumerate(ids):
                if mask_id not in row:
                    raise ValueError(f"text {i} has no {self.tokenizer.mask_token} token to pool at: {texts[i][:80]!r}")
        order = np.argsort([len(r) for r in ids], kind="stable")
        out = np.zeros((len(ids), self.dim), np.float32)
        pad = self.tokenizer.pad_token_id or 0
        bar = tqdm(total=len(ids), desc=f"encoding text ({self.name.split('/')[-1]})", disable=not progress,
                   leave=False)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            longest = max(len(ids[i]) for i in chunk)
            width = next((b for b in _BUCKETS if b >= longest), longest)
            width = min(width, max(self.max_length, longest))
            input_ids = np.full((batch_size, width), pad, np.int32)
            attention = np.zeros((batch_size, width), np.int32)
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = ids[i]
                attention[row, :len(ids[i])] = 1
            attention[len(chunk):, 0] = 1  # padding rows: one valid token keeps the softmax finite
            pooled = self._forward(self.params, jnp.asarray(input_ids), jnp.asarray(attention))
            out[chunk] = np.asarray(pooled, np.float32)[:len(chunk)]
            bar.update(len(chunk))
        bar.close()
        return out
