"""The fine-tuned text encoder (BERT / RoBERTa / ModernBERT): its inputs padded per length
bucket, and the partial fine-tuning of ``finetune.tune_layers``.

**Length buckets.** A split's text inputs are its token ids, one unpadded row per sample
(:class:`TokenRows`). A batch is padded to the narrowest bucket width that holds its longest row
(16, 32, 64, 128, ... up to ``encoders.T.max_length``, :func:`emojax.encoders.text.bucket_widths`),
not to ``max_length``: MELD utterances average 13 tokens. Training batches are drawn bucket by
bucket (:func:`emojax.training.batches.epoch_batches`), evaluation batches are formed within
each bucket; the attention mask makes the features independent of the padding.

**Partial fine-tuning.** With ``finetune.tune_layers=K`` (``0 < K < L``, the encoder's layer
count) only the top ``K`` layers train (all their weights with ``mode=trainable``, adapters on
them with ``mode=lora``; ModernBERT's final norm with them); the embeddings and the bottom
``L - K`` layers keep the base weights. Their output, the input of layer ``L - K``, is computed
once per split, at every real position of every sample (``(length, hidden)`` float32, no
padding), and stored beside the feature cache (``{cache}/_inputs/{key}``), with the integrity
rules of the fine-tuning input store (:class:`emojax.training.finetune_base.StoredRows`: ``index.json`` with
each ``.bin`` file's size and sha256, built in a temporary folder and renamed into place, a
damaged store reported by file name and built again). Its key covers the encoder's weights hash
(speaker-token rows and vocabulary included), the layer split, the compute dtype, the text path
and the token ids themselves. A train step then runs the top ``K`` layers forward and backward
from the stored states (BERT's last layer at the pooled position only), so its cost no longer
grows with the frozen layers. ``K = 0`` (the default) or ``K = L`` fine-tunes the whole encoder,
embeddings included, from the token ids.

The trainable part is ``{"layers": {"n": layer}}`` for the tuned layer numbers ``n`` (and
``"final_norm"`` for ModernBERT); LoRA adapters carry the whole encoder's module names
(``layers.5.query``). :meth:`TextTuner.merged` puts the tuned layers back into the base encoder,
so export (``launch.tool extract-encoders``) and the estimator see a whole encoder and run the
bottom layers themselves on new text. The bottom layers run without dropout (they are frozen),
so a partially tuned run's training differs from a full one there; the features it computes at
evaluation are the whole encoder's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.config import ConfigError
from emojax.encoders import lora as lora_lib
from emojax.encoders.modernbert import ModernBertConfig
from emojax.encoders.text import bucket_widths, encode_pooled, encode_pooled_from, layer_input
from emojax.files import building_folder, digest, publish_folder
from emojax.training.finetune_base import StoredInputsError, StoredRows, Tuner, discard_store
from emojax.progress import progress_bar

log = logging.getLogger(__name__)

HIDDEN_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Token rows padded per bucket
# ---------------------------------------------------------------------------------------------
class TokenRows:
    """Token ids of a split, one unpadded row per sample; a batch is padded (on the right, with
    ``pad_id``) to the narrowest of ``widths`` that holds its longest row.

    ``buckets`` ``(n,)``: each row's bucket (index into ``widths``), which training batches and
    evaluation groups follow.
    """

    def __init__(self, ids: Sequence[Sequence[int]], pad_id: int, widths: Sequence[int]):
        self.ids = [np.asarray(row, np.int32) for row in ids]
        self.lengths = np.asarray([len(row) for row in self.ids], np.int64)
        self.widths = tuple(int(w) for w in widths)
        self.pad_id = int(pad_id)
        if len(self.ids) and self.lengths.max() > self.widths[-1]:
            row = int(self.lengths.argmax())
            raise ValueError(f"text row {row} has {self.lengths[row]} tokens, more than the widest bucket "
                             f"({self.widths[-1]}); tokenize with truncation to max_length")
        self.buckets = np.searchsorted(np.asarray(self.widths), self.lengths).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def width(self, index) -> int:
        """The padded width of a batch of the rows ``index``."""
        return self.widths[int(self.buckets[np.asarray(index)].max())]

    def batch(self, index) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}`` ``(len(index), width)`` int32."""
        index = np.asarray(index)
        width = self.width(index)
        input_ids = np.full((len(index), width), self.pad_id, np.int32)
        attention = np.zeros((len(index), width), np.int32)
        for row, i in enumerate(index):
            input_ids[row, :self.lengths[i]] = self.ids[i]
            attention[row, :self.lengths[i]] = 1
        return {"input_ids": input_ids, "attention_mask": attention}

    def groups(self) -> list[np.ndarray]:
        """The rows of each bucket: evaluation pads every batch to its own bucket."""
        return [np.flatnonzero(self.buckets == b) for b in np.unique(self.buckets)]


class HiddenRows(TokenRows):
    """:class:`TokenRows` with each sample's stored input of the first tuned layer
    (``hidden``: ``(length, hidden)`` float32, read from a :class:`~emojax.training.finetune_base.StoredRows`)."""

    def __init__(self, stored: StoredRows, ids: Sequence[Sequence[int]], pad_id: int, widths: Sequence[int]):
        super().__init__(ids, pad_id, widths)
        self.stored = stored
        self.dim = int(stored.rows[0]["hidden"][1][1]) if len(stored) else 0

    def batch(self, index) -> dict[str, np.ndarray]:
        """:meth:`TokenRows.batch` and ``hidden`` ``(len(index), width, dim)`` float32 (zeros on padding)."""
        index = np.asarray(index)
        out = super().batch(index)
        hidden = np.zeros((len(index), out["input_ids"].shape[1], self.dim), np.float32)
        for row, i in enumerate(index):
            hidden[row, :self.lengths[i]] = self.stored.item(int(i))["hidden"]
        out["hidden"] = hidden
        return out


# ---------------------------------------------------------------------------------------------
# The stored hidden states of the frozen layers
# ---------------------------------------------------------------------------------------------
def _stored_problem(folder: pathlib.Path, ids: Sequence[Sequence[int]]) -> tuple[Optional[StoredRows], str]:
    """``(rows, "")`` for an intact store of ``ids``' hidden states, else ``(None, why)``."""
    try:
        rows = StoredRows(folder, None)
    except StoredInputsError as err:
        return None, str(err)
    if len(rows) != len(ids):
        return None, f"{folder / 'index.json'} holds {len(rows)} rows for {len(ids)} texts"
    for i, row in enumerate(ids):
        shape = rows.rows[i].get("hidden", [0, [None]])[1]
        if shape[0] != len(row):
            return None, f"{folder / 'index.json'}: row {i} holds {shape[0]} positions for {len(row)} tokens"
    return rows, ""


def store_hidden_states(root: str | os.PathLike, key: str, ids: Sequence[Sequence[int]],
                        compute: Callable[[np.ndarray, np.ndarray], np.ndarray], widths: Sequence[int], *,
                        pad_id: int, batch_size: int = 64, desc: str = "hidden states",
                        progress: bool = True) -> StoredRows:
    """The hidden states ``compute(input_ids, attention_mask) -> (batch, width, dim)`` of every
    row of ``ids`` at its real positions, read from ``root/key`` when stored there before and
    intact, else computed (rows sorted by length, padded per bucket of ``widths``, with a
    progress bar) and stored atomically. A store that fails its checks is reported, naming the
    file, and built again."""
    folder = pathlib.Path(root) / key
    if folder.exists():
        rows, problem = _stored_problem(folder, ids)
        if rows is not None:
            return rows
        log.warning("%s: the stored hidden states fail their check: %s; computing them again", desc, problem)
        discard_store(folder)
    token_rows = TokenRows(ids, pad_id, widths)
    n = len(token_rows)
    order = np.argsort(token_rows.lengths, kind="stable")
    rows: list = [None] * n
    with building_folder(folder) as work:
        sha, offset, dim = hashlib.sha256(), 0, None
        with open(work / "hidden.bin", "wb") as handle, \
                progress_bar(total=n, desc=desc, enabled=progress, leave=False) as bar:
            size = min(int(batch_size), 1 << max(n - 1, 0).bit_length())
            for start in range(0, n, size):
                chunk = order[start:start + size]
                # Fixed batch rows: filler rows (one valid token) keep one compiled shape per bucket.
                filled = np.concatenate([chunk, np.full(size - len(chunk), chunk[-1])])
                inputs = token_rows.batch(filled)
                hidden = np.asarray(compute(inputs["input_ids"], inputs["attention_mask"]), np.float32)
                dim = hidden.shape[-1]
                for row, i in enumerate(chunk):
                    value = np.ascontiguousarray(hidden[row, :token_rows.lengths[i]])
                    data = value.tobytes()
                    handle.write(data)
                    sha.update(data)
                    rows[i] = {"hidden": [offset, list(value.shape)]}
                    offset += int(value.size)
                bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        index = {"names": ["hidden"], "dtypes": {"hidden": np.dtype(np.float32).str}, "rows": rows,
                 "present": [True] * n, "groups": [int(b) for b in token_rows.buckets],
                 "files": {"hidden": {"bytes": offset * 4, "sha256": sha.hexdigest()}},
                 "version": HIDDEN_VERSION, "dim": dim}
        with open(work / "index.json", "w") as handle:
            json.dump(index, handle)
            handle.flush()
            os.fsync(handle.fileno())
        ours = publish_folder(work, folder)
    # Our own file was hashed as it was written; another process's store is checked in full.
    return StoredRows(folder, None, verify=not ours)


# ---------------------------------------------------------------------------------------------
# Layer split of the parameters
# ---------------------------------------------------------------------------------------------
def top_layers(params, start: int) -> dict:
    """The part of an encoder's parameters from layer ``start`` on: ``{"layers": {"n": layer}}``
    (and ModernBERT's ``final_norm``); module paths keep the whole encoder's layer numbers."""
    out = {"layers": {str(n): params["layers"][n] for n in range(start, len(params["layers"]))}}
    if "final_norm" in params:
        out["final_norm"] = params["final_norm"]
    return out


def with_top_layers(params, top: dict) -> dict:
    """``params`` (a whole encoder) with the layers (and final norm) of ``top`` put in."""
    layers = [top["layers"].get(str(n), layer) for n, layer in enumerate(params["layers"])]
    out = dict(params, layers=layers)
    if "final_norm" in top:
        out["final_norm"] = top["final_norm"]
    return out


# ---------------------------------------------------------------------------------------------
# The tuner
# ---------------------------------------------------------------------------------------------
class TextTuner(Tuner):
    """BERT / RoBERTa / ModernBERT over the run's text format: token ids in memory, or, with
    ``finetune.tune_layers``, the stored input of the first tuned layer (see the module docstring)."""

    modality = "T"

    def __init__(self, cfg, text_features, stats: dict):
        """``text_features``: the Featurizer's text encoder (tokenizer and base parameters, speaker
        tokens added)."""
        self.wrapper = text_features
        self.encoder = encoder = text_features.encoder
        self.is_modernbert = isinstance(encoder.config, ModernBertConfig)
        self.family = "modernbert" if self.is_modernbert else str(getattr(encoder.config, "model_type", "bert"))
        self.num_layers = int(encoder.config.num_layers)
        tune = int(cfg.finetune.get("tune_layers", 0) or 0)
        if tune > self.num_layers:
            raise ConfigError(f"finetune.tune_layers: {tune}, but the text encoder {encoder.name} has "
                              f"{self.num_layers} layers; give at most {self.num_layers} (0: all of them)")
        # First tuned layer; 0: the whole encoder, embeddings included, from the token ids.
        self.start = self.num_layers - tune if 0 < tune < self.num_layers else 0
        self.whole = jax.device_get(encoder.params)
        super().__init__(cfg, top_layers(self.whole, self.start) if self.start else self.whole, stats)
        self.config = dataclasses.replace(encoder.config, remat=self.remat)
        self.widths = bucket_widths(encoder.max_length)
        self._bottom = None

    # parameters
    def merged(self, trainable):
        """The whole encoder's parameters: the tuned layers (adapters folded in) in the base."""
        part = super().merged(trainable)
        return with_top_layers(self.whole, part) if self.start else part

    def describe(self, trainable) -> str:
        text = super().describe(trainable)
        if not self.start:
            return text
        total = lora_lib.count_parameters(self.whole)
        tuned = lora_lib.count_parameters(self.base)
        return (f"{text}; top {self.num_layers - self.start} of {self.num_layers} layers "
                f"({tuned:,} of {total:,} weights), the layers below from stored hidden states")

    # computation
    def _pooled(self, params, inputs, rng, deterministic):
        common = dict(config=self.config, dtype=self.encoder.dtype, pooling=self.encoder.pooling,
                      mask_token_id=self.encoder.tokenizer.mask_token_id, deterministic=deterministic, rng=rng)
        if not self.start:
            return encode_pooled(params, inputs["input_ids"], inputs["attention_mask"], **common)
        layers = [params["layers"][str(n)] for n in range(self.start, self.num_layers)]
        return encode_pooled_from(layers, inputs["hidden"], inputs["attention_mask"], inputs["input_ids"],
                                  start=self.start, final_norm=params.get("final_norm"), **common)

    def hidden_key(self, ids: Sequence[Sequence[int]]) -> str:
        """The store key of the input of layer :attr:`start` for the token ids ``ids``."""
        spec = self.wrapper.spec
        text_path = {"model": str(spec.model), "context_turns": int(spec.context_turns),
                     "prompt": bool(spec.prompt), "max_length": int(self.encoder.max_length)}
        tokens = hashlib.sha256()
        for row in ids:
            tokens.update(np.asarray(row, np.int32).tobytes() + b"\xff\xff\xff\xff")
        return digest("hidden", HIDDEN_VERSION, self.family, self.encoder.weights_hash, self.start,
                      self.num_layers, str(jnp.dtype(self.encoder.dtype)), text_path,
                      list(self.wrapper.speaker_tokens), tokens.hexdigest())[:32]

    def bottom(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The input of layer :attr:`start` ``(batch, seq, hidden)`` float32 by the base weights."""
        if self._bottom is None:
            config, start, dtype = self.encoder.config, self.start, self.encoder.dtype
            params = jax.tree_util.tree_map(jnp.asarray, {"embeddings": self.whole["embeddings"],
                                                          "layers": self.whole["layers"][:start]})
            forward = jax.jit(lambda p, ids, mask: layer_input(p, ids, mask, config=config, start=start, dtype=dtype))
            self._bottom = lambda ids, mask: forward(params, ids, mask)
        return np.asarray(self._bottom(jnp.asarray(input_ids), jnp.asarray(attention_mask)))

    def input_rows(self, split, root=None, progress=False) -> TokenRows:
        ids = self.encoder.token_ids(self.wrapper.texts(split))
        pad = self.encoder.pad_token_id
        if not self.start:
            return TokenRows(ids, pad, self.widths)
        if root is None:
            raise ValueError("finetune.tune_layers: the hidden states of the frozen layers are stored beside the "
                             "feature cache; give a folder (cache.dir)")
        stored = store_hidden_states(root, self.hidden_key(ids), ids, self.bottom, self.widths, pad_id=pad,
                                     desc=f"T layers 0-{self.start - 1} ({split.name})", progress=progress)
        return HiddenRows(stored, ids, pad, self.widths)

    def install(self, trainable) -> None:
        """The featurizer's text encoder computes with the tuned weights from now on."""
        self.encoder.params = self.merged(trainable)
        self.wrapper.update_namespace()
