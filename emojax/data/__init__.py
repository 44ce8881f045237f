"""Datasets: MELD, IEMOCAP and CH-SIMS as lists of samples with media paths and labels.

``load_dataset("meld", "datasets/MELD", target="emotion")`` returns a :class:`DatasetSplits`.
"""
from __future__ import annotations

from emojax.data.types import (MODALITIES, SPLITS, DatasetError, DatasetSplits, Sample, Split,
                               inverse_frequency_weights)

LOADERS = ("meld", "iemocap", "sims")


def load_dataset(kind: str, path: str, *, target: str, allow_outside_paths: bool = False) -> DatasetSplits:
    """Load a dataset folder of the given ``kind`` (``meld``, ``iemocap``, ``sims``).

    ``allow_outside_paths``: media paths that a CSV names (IEMOCAP, CH-SIMS) may lead outside
    ``path``; by default such a path is a missing file, with a warning naming the row.
    """
    # Import cost: the loaders bring pandas, and every ``emojax.data.*`` import runs this file
    # (emojax.config needs only emojax.data.types).
    if kind == "meld":
        from emojax.data.meld import load_meld

        return load_meld(path, target=target)
    if kind == "iemocap":
        from emojax.data.iemocap import load_iemocap

        return load_iemocap(path, target=target, allow_outside_paths=allow_outside_paths)
    if kind == "sims":
        from emojax.data.sims import load_sims

        return load_sims(path, target=target, allow_outside_paths=allow_outside_paths)
    raise DatasetError(f"dataset.kind: unknown dataset kind {kind!r}; choose one of {', '.join(LOADERS)}")


__all__ = ["MODALITIES", "SPLITS", "DatasetError", "DatasetSplits", "Sample", "Split", "load_dataset",
           "inverse_frequency_weights"]
