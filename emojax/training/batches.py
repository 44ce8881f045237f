"""Epoch order and batches: which rows of a split each training step sees.

The order is a pure function of seed and epoch, so a resumed run replays the epochs an
uninterrupted run would have seen, batch for batch.

When the text encoder is fine-tuned, its rows carry length buckets (``FeatureSet.inputs["T"]
.buckets``, :class:`emojax.training.finetune_text.TokenRows`): each batch then takes rows of one bucket
(and the few left over from narrower ones), so it is padded to that bucket's width instead of
the longest text's, and the batches of all buckets are shuffled together.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from emojax.features.featurizer import FeatureSet


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of an epoch: a pure function of seed and epoch, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int,
                  buckets: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """The row indices of each training batch of an epoch (``n // batch_size`` full batches), a
    pure function of ``(seed, epoch)``.

    Without ``buckets``: consecutive slices of :func:`epoch_order`; the last short batch is
    dropped (one compiled shape), and every sample is still seen across epochs because the
    order changes. With ``buckets`` ``(n,)`` (ordered: a higher bucket holds longer rows): rows
    in epoch order are cut into batches bucket by bucket, from the narrowest; the rows left over
    in a bucket join the next one (its width holds them), fewer than ``batch_size`` rows of the
    widest are dropped, and the batches are then shuffled across buckets.
    """
    order = epoch_order(seed, epoch, n)
    if buckets is None:
        return [order[start:start + batch_size] for start in range(0, n - batch_size + 1, batch_size)]
    buckets = np.asarray(buckets)
    batches, carry = [], order[:0]
    for bucket in np.unique(buckets):
        rows = np.concatenate([carry, order[buckets[order] == bucket]])
        full = len(rows) - len(rows) % batch_size
        batches += [rows[start:start + batch_size] for start in range(0, full, batch_size)]
        carry = rows[full:]
    # A stream of its own: the order within buckets stays the plain epoch order's.
    shuffle = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
    return [batches[i] for i in shuffle]


def length_buckets(data: FeatureSet) -> Optional[np.ndarray]:
    """``(n,)`` length bucket of each row when the fine-tuned text rows have them, else None."""
    rows = (data.inputs or {}).get("T")
    return getattr(rows, "buckets", None)


def batch_of(data: FeatureSet, index: np.ndarray) -> dict:
    """The rows ``index`` of ``data`` as the steps take them: features, present, labels (and,
    for a fine-tuning run, the tuned encoders' inputs)."""
    batch = {
        "features": {m: data.features[m][index] for m in data.features},
        "present": {m: data.present[m][index] for m in data.present},
        "labels": data.labels[index],
    }
    if data.inputs is not None:
        batch["inputs"] = {m: rows.batch(index) for m, rows in data.inputs.items()}
    return batch


def train_batches(data: FeatureSet, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
    """The training batches of an epoch (:func:`epoch_batches`, by length bucket when the text
    rows have buckets); each also carries ``index``, its rows in ``data``."""
    for index in epoch_batches(seed, epoch, len(data), batch_size, length_buckets(data)):
        yield {**batch_of(data, index), "index": index}
