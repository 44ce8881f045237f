"""Epoch order and batches: which rows of a split each training step sees.

The order is a pure function of seed and epoch, so a resumed run replays the epochs an
uninterrupted run would have seen, batch for batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from emojax.features import FeatureSet


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of an epoch: a pure function of seed and epoch, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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
    """The training batches of an epoch; each also carries ``index``, its rows in ``data``."""
    order = epoch_order(seed, epoch, len(data))
    # The last short batch is dropped in training (one compiled shape); every sample is still
    # seen across epochs because the order changes.
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield {**batch_of(data, index), "index": index}
