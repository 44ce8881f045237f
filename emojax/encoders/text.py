"""A frozen text encoder: transformers' tokenizer + the pure-function BERT (or ModernBERT) + pooling.

    encoder = TextEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", pooling="mean")
    encoder.add_special_tokens(["<s0>", "<s1>"])         # speaker tokens, mean-initialised rows
    features = encoder.encode(["<s0>: I can't believe it!", "<s1>: Fine."])   # (2, hidden) float32

Pooling: ``mask`` = hidden state at the last mask token of each text (the prompt ends with
``Now <sK> feels [MASK]``), ``mean`` = mean over valid tokens, ``cls`` = first token.
Texts longer than ``max_length`` tokens are truncated from the left, so the end (the current
utterance and the prompt) is kept.

``from_pretrained`` picks the encoder by the checkpoint's ``config.json`` ``model_type``:
``modernbert`` runs :func:`emojax.encoders.modernbert.modernbert_apply`, anything else BERT /
RoBERTa (:func:`emojax.encoders.bert.bert_apply`). Speaker tokens, pooling and hashing work the
same for both.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import hub
from emojax.encoders.bert import BertConfig, bert_apply, bert_layers, grow_embeddings, load_bert, params_hash
from emojax.encoders.modernbert import (ModernBertConfig, load_modernbert, modernbert_apply, modernbert_embed,
                                       modernbert_layers)
from emojax.files import copy_folder_files_atomic
from emojax.progress import progress_bar

POOLINGS = ("mask", "mean", "cls")
# Sequence lengths a batch is padded to: one compilation per bucket actually used.
_BUCKETS = (16, 32, 64, 128, 256, 512)


def load_tokenizer(folder: str | os.PathLike, **kwargs):
    """transformers' tokenizer for a folder: ``AutoTokenizer``, else the class its
    ``tokenizer_config.json`` names.

    transformers 5 maps some model types (``modernbert``) to the ``tokenizers``-library backend
    alone, which needs a ``tokenizer.json``; a folder holding only a ``vocab.txt`` and naming its
    class (``BertTokenizer``) still loads through that class, as it did with transformers 4.
    """
    import transformers  # transformers takes seconds to import

    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as err:
        path = pathlib.Path(folder) / "tokenizer_config.json"
        try:
            name = json.loads(path.read_text()).get("tokenizer_class") if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            name = None
        named = getattr(transformers, name, None) if isinstance(name, str) else None
        if named is None or not hasattr(named, "from_pretrained"):
            raise err
        return named.from_pretrained(str(folder), **kwargs)


def pool_positions(input_ids, *, pooling: str, mask_token_id: Optional[int] = None):
    """The position each row pools at, ``(batch,)`` int32: 0 for ``cls``, the last
    ``mask_token_id`` for ``mask`` (0 for a row without one: check beforehand); None for ``mean``."""
    if pooling == "cls":
        return jnp.zeros(input_ids.shape[:1], jnp.int32)
    if pooling == "mask":
        if mask_token_id is None:
            raise ValueError("mask pooling needs the tokenizer's mask_token_id")
        positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
        return jnp.maximum(jnp.max(jnp.where(input_ids == mask_token_id, positions, -1), axis=1), 0)
    if pooling == "mean":
        return None
    raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


def pool_hidden(hidden, attention_mask, input_ids, *, pooling: str, mask_token_id: Optional[int] = None):
    """``hidden`` ``(batch, seq, dim)`` -> ``(batch, dim)`` by ``pooling`` (see the module docstring).

    ``attention_mask`` and ``input_ids`` are ``(batch, seq)``; ``mask`` pooling takes the last
    position whose id is ``mask_token_id`` (position 0 for a row without one: check beforehand).
    """
    if pooling == "mean":
        weights = attention_mask.astype(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    at = pool_positions(input_ids, pooling=pooling, mask_token_id=mask_token_id)
    return jnp.take_along_axis(hidden, at[:, None, None], axis=1)[:, 0]


def encode_pooled(params, input_ids, attention_mask, *, config, dtype, pooling: str,
                  mask_token_id: Optional[int] = None, deterministic: bool = True, rng=None):
    """The pooled feature ``(batch, dim)`` of BERT / RoBERTa / ModernBERT. BERT with ``cls`` or
    ``mask`` pooling computes its last layer at the pooled positions only
    (``bert_apply(pool_positions=...)``); the others pool the full last hidden state."""
    if isinstance(config, ModernBertConfig):
        hidden = modernbert_apply(params, input_ids, attention_mask, config=config, dtype=dtype,
                                  deterministic=deterministic, rng=rng)
        return pool_hidden(hidden, attention_mask, input_ids, pooling=pooling, mask_token_id=mask_token_id)
    at = pool_positions(input_ids, pooling=pooling, mask_token_id=mask_token_id)
    out = bert_apply(params, input_ids, attention_mask, config=config, dtype=dtype, deterministic=deterministic,
                     rng=rng, pool_positions=at)
    return out if at is not None else pool_hidden(out, attention_mask, input_ids, pooling=pooling)


def bucket_widths(max_length: int) -> tuple[int, ...]:
    """The sequence widths text batches are padded to (a batch: the narrowest that holds its
    longest row): the buckets below ``max_length``, then ``max_length``."""
    return tuple(b for b in _BUCKETS if b < int(max_length)) + (int(max_length),)


def layer_input(params, input_ids, attention_mask, *, config, start: int, dtype):
    """The input of layer ``start`` ``(batch, seq, hidden)`` float32: the embeddings and layers
    ``0 .. start - 1`` of BERT / RoBERTa / ModernBERT, without dropout (frozen layers)."""
    if isinstance(config, ModernBertConfig):
        hidden = modernbert_embed(params, input_ids, config=config)
        return modernbert_layers(params["layers"][:start], hidden, attention_mask, config=config, dtype=dtype)
    return bert_apply(params, input_ids, attention_mask, config=config, dtype=dtype, layers=slice(0, start))


def encode_pooled_from(layers, hidden, attention_mask, input_ids, *, config, start: int, dtype, pooling: str,
                       mask_token_id: Optional[int] = None, final_norm=None, deterministic: bool = True, rng=None):
    """The pooled feature ``(batch, dim)`` that :func:`encode_pooled` computes, from ``hidden``
    ``(batch, seq, hidden)``, the input of layer ``start`` (:func:`layer_input`), by the layers
    ``start ..`` (``layers``: their parameters, in order; ModernBERT: and its ``final_norm``).
    ``input_ids`` ``(batch, seq)`` say where mask pooling looks; BERT computes its last layer at
    the pooled positions only, as there."""
    if isinstance(config, ModernBertConfig):
        out = modernbert_layers(layers, hidden, attention_mask, config=config, start=start, dtype=dtype,
                                deterministic=deterministic, rng=rng, final_norm=final_norm)
        return pool_hidden(out, attention_mask, input_ids, pooling=pooling, mask_token_id=mask_token_id)
    at = pool_positions(input_ids, pooling=pooling, mask_token_id=mask_token_id)
    out = bert_layers(layers, hidden, attention_mask, config=config, start=start, dtype=dtype,
                      deterministic=deterministic, rng=rng, pool_positions=at)
    return out if at is not None else pool_hidden(out, attention_mask, input_ids, pooling=pooling)


@functools.partial(jax.jit, static_argnames=("config", "dtype", "pooling", "mask_token_id"))
def _pooled_features(params, input_ids, attention_mask, *, config, dtype, pooling, mask_token_id):
    """Jitted forward + pooling; encoders of the same architecture share its compilations."""
    return encode_pooled(params, input_ids, attention_mask, config=config, dtype=dtype, pooling=pooling,
                         mask_token_id=mask_token_id)


class TextEncoder:
    """Tokenizer + BERT/RoBERTa/ModernBERT parameters + pooling, for frozen feature extraction.

    Attributes: ``params`` (pytree, float32), ``config`` (:class:`BertConfig` or
    :class:`~emojax.encoders.modernbert.ModernBertConfig`), ``tokenizer``
    (a transformers tokenizer truncating from the left), ``pooling``, ``max_length``, ``dtype``
    (matmul dtype of the forward pass).
    """

    def __init__(self, name: str, tokenizer, params, config: BertConfig | ModernBertConfig, *, pooling: str = "mean",
                 max_length: int = 128, dtype=jnp.float32):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if pooling == "mask" and tokenizer.mask_token is None:
            raise ValueError(f"{name}: the tokenizer has no mask token, so pooling='mask' is impossible; "
                             "use 'mean' or 'cls'")
        if int(max_length) < 2:
            raise ValueError(f"max_length={max_length}: needs room for at least the special tokens")
        rows = params["embeddings"]["word"].shape[0]
        if len(tokenizer) > rows:
            raise ValueError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the embedding matrix only "
                             f"{rows} rows; add tokens through TextEncoder.add_special_tokens")
        self.name = name
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = "left"
        self._hash: Optional[str] = None
        self.params = params
        self.config = config
        self.pooling = pooling
        self.max_length = min(int(max_length), config.max_length)
        self.dtype = dtype

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value) -> None:
        """New weights (grown embeddings, a fine-tuned encoder): :attr:`weights_hash` follows them."""
        self._params = value
        self._hash = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, pooling: str = "mean", max_length: int = 128,
                        dtype=jnp.float32, preprocessing: Optional[str | os.PathLike] = None) -> "TextEncoder":
        """Encoder of a BERT / RoBERTa / ModernBERT checkpoint (local folder or hub id) with its
        tokenizer; the family is the ``model_type`` of its ``config.json``.

        ``preprocessing``: a folder written by :meth:`save_preprocessing`; the tokens added
        there are added again, in the same order, so token ids and embedding rows match.
        """
        folder = hub.resolve_model(name_or_path)
        if hub.load_config(folder).get("model_type") == "modernbert":
            params, config = load_modernbert(str(folder))
        else:
            params, config = load_bert(str(folder))
        try:
            tokenizer = load_tokenizer(folder, truncation_side="left")
        except (OSError, ValueError) as err:
            raise hub.WeightError(f"{folder}: no usable tokenizer files ({err})") from None
        encoder = cls(str(name_or_path), tokenizer, params, config, pooling=pooling, max_length=max_length,
                      dtype=dtype)
        if preprocessing is not None:
            encoder._replay_added_tokens(pathlib.Path(preprocessing))
        return encoder

    def _replay_added_tokens(self, folder: pathlib.Path) -> None:
        saved = load_tokenizer(folder)
        known = self.tokenizer.get_vocab()
        extra = sorted(((i, t) for t, i in saved.get_added_vocab().items() if t not in known))
        self.add_special_tokens([t for _, t in extra])
        ids = self.tokenizer.convert_tokens_to_ids([t for _, t in extra])
        if ids != [i for i, _ in extra]:
            raise ValueError(f"{folder}: the saved tokenizer's added tokens get other ids on {self.name} "
                             f"({ids} instead of {[i for i, _ in extra]}); was it saved for another model?")

    # -- vocabulary -----------------------------------------------------------------------
    @property
    def sep_token(self) -> str:
        return self.tokenizer.sep_token

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @property
    def dim(self) -> int:
        """Feature size (the encoder's hidden size)."""
        return self.config.hidden_size

    def add_special_tokens(self, tokens: Sequence[str]) -> int:
        """Add ``tokens`` (e.g. ``<s0>``, ``<s1>``) as special tokens and give each an embedding row.

        New rows hold the mean of the existing word embeddings (:func:`grow_embeddings`). Tokens
        the tokenizer already knows keep their ids and rows. Returns how many were added.
        """
        tokens = [str(t) for t in tokens]
        known = set(self.tokenizer.get_vocab())
        # The second argument keeps the tokens added before (earlier speakers) special too; it is
        # given by position because transformers 5 renamed it (replace_additional_special_tokens
        # -> replace_extra_special_tokens), and both versions still take "additional_special_tokens".
        added = self.tokenizer.add_special_tokens({"additional_special_tokens": tokens}, False)
        new_ids = sorted({i for t, i in zip(tokens, self.tokenizer.convert_tokens_to_ids(tokens)) if t not in known})
        if not new_ids:
            return added
        word = self.params["embeddings"]["word"]
        rows = word.shape[0]
        params = grow_embeddings(self.params, max(new_ids[-1] + 1 - rows, 0))
        inside = [i for i in new_ids if i < rows]
        if inside:
            # The matrix had spare rows past the tokenizer's vocabulary (padded vocabularies):
            # the new ids land on those, which get the same mean initialisation.
            grown = params["embeddings"]["word"].at[jnp.asarray(inside)].set(word.mean(axis=0))
            params = dict(params, embeddings=dict(params["embeddings"], word=grown))
        self.params = params
        return added

    @property
    def weights_hash(self) -> str:
        """SHA-256 hex digest of what decides the features: the parameters (added rows included),
        the architecture and the tokenizer's vocabulary with its added tokens.

        The model's name or path is left out on purpose, so a hub id and a local copy of the same
        checkpoint share cached features; callers that want it add it to their own key.
        """
        if self._hash is None:
            vocab = sorted(self.tokenizer.get_vocab().items())
            self._hash = params_hash(self.params, repr(self.config), repr(vocab), self.tokenizer.truncation_side)
        return self._hash

    def save_preprocessing(self, folder: str | os.PathLike) -> None:
        """Save the tokenizer (with its added tokens) to ``folder``; pass that folder as
        ``from_pretrained(..., preprocessing=folder)`` to tokenize and embed identically.

        The tokenizer is saved aside first (in the system's temporary folder), then each file is
        written into ``folder`` atomically and only where it changed: a restart on a full disk
        neither writes there nor leaves a truncated tokenizer."""
        folder = pathlib.Path(folder)
        # A fast tokenizer keeps the truncation of its last call and would save it: cleared, the
        # saved files are the same whether or not this process tokenized (each call sets its own).
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        with tempfile.TemporaryDirectory(prefix="emojax-tokenizer-") as aside:
            self.tokenizer.save_pretrained(aside)
            copy_folder_files_atomic(aside, folder)

    # -- encoding -------------------------------------------------------------------------
    def _forward(self, params, input_ids, attention_mask):
        return _pooled_features(params, input_ids, attention_mask, config=self.config, dtype=self.dtype,
                                pooling=self.pooling, mask_token_id=self.tokenizer.mask_token_id)

    def tokenize(self, texts: Sequence[str]) -> dict:
        """Token ids per text (lists, no padding), truncated from the left to ``max_length``."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.config.pad_token_id

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`tokenize`'s ids, checked to hold the mask token when pooling there."""
        texts = list(texts)
        ids = self.tokenize(texts)["input_ids"]
        if self.pooling == "mask":
            mask_id = self.tokenizer.mask_token_id
            for i, row in enumerate(ids):
                if mask_id not in row:
                    raise ValueError(f"text {i} has no {self.tokenizer.mask_token} token to pool at "
                                     f"(pooling='mask'): {texts[i][:80]!r}; build it with a prompt")
        return ids

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Pooled features ``(len(texts), dim)`` float32, in the order of ``texts``."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.token_ids(texts)
        order = np.argsort([len(r) for r in ids], kind="stable")
        out = np.zeros((len(ids), self.dim), np.float32)
        # Fixed batch rows and a few sequence buckets: at most a handful of compilations.
        rows = min(int(batch_size), 1 << (len(ids) - 1).bit_length())
        pad = self.pad_token_id
        bar = progress_bar(total=len(ids), desc=f"encoding text ({pathlib.PurePath(self.name).name})",
                           enabled=progress, leave=False)
        for start in range(0, len(order), rows):
            chunk = order[start:start + rows]
            longest = max(len(ids[i]) for i in chunk)
            width = min(next((b for b in _BUCKETS if b >= longest), longest), self.max_length)
            input_ids = np.full((rows, width), pad, np.int32)
            attention = np.zeros((rows, width), np.int32)
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = ids[i]
                attention[row, :len(ids[i])] = 1
            attention[len(chunk):, 0] = 1  # filler rows: one valid token keeps their softmax finite
            pooled = self._forward(self.params, jnp.asarray(input_ids), jnp.asarray(attention))
            out[chunk] = np.asarray(pooled, np.float32)[:len(chunk)]
            bar.update(len(chunk))
        bar.close()
        return out
