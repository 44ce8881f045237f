"""Datasets: MELD, IEMOCAP and CH-SIMS as lists of samples with media paths and labels.

``load_dataset("meld", "datasets/MELD", target="emotion")`` returns a :class:`DatasetSplits`.

Each dataset is described once, by a :class:`DatasetKind` in its own module
(:data:`emojax.data.meld.MELD`, :data:`~emojax.data.iemocap.IEMOCAP`, :data:`~emojax.data.sims.SIMS`),
and registered here in :data:`DATASETS` under its ``kind``; everything else that needs to know
what a dataset is (its CSV files, targets, media paths) asks :func:`dataset_kind`. Adding a
dataset: docs/datasets.md, "Adding a dataset".
"""
from __future__ import annotations

# The descriptions' modules import pandas and the media readers inside their loaders only: every
# ``emojax.data.*`` import runs this file (emojax.config needs only emojax.data.types).
from emojax.data.iemocap import IEMOCAP
from emojax.data.meld import MELD
from emojax.data.sims import SIMS
from emojax.data.types import (MODALITIES, SPLITS, DatasetError, DatasetKind, DatasetSplits, MediaPaths, Sample,
                               Split, inverse_frequency_weights)

DATASETS: dict[str, DatasetKind] = {d.kind: d for d in (MELD, IEMOCAP, SIMS)}


def register_dataset(description: DatasetKind) -> DatasetKind:
    """Make ``description`` the dataset of ``dataset.kind = description.kind``: loading, the record
    of a run's data, the dev split check and config validation find it from then on. A kind
    already registered to another description is refused. Returns ``description``."""
    known = DATASETS.get(description.kind)
    if known is not None and known is not description:
        raise DatasetError(f"dataset kind {description.kind!r} is already registered ({known.name}); "
                           "give the new dataset another kind")
    DATASETS[description.kind] = description
    return description


def dataset_kind(kind: str) -> DatasetKind:
    """The description registered as ``kind``; :class:`DatasetError` for an unknown kind."""
    described = DATASETS.get(str(kind))
    if described is None:
        raise DatasetError(f"dataset.kind: unknown dataset kind {kind!r}; choose one of {', '.join(DATASETS)}")
    return described


def load_dataset(kind: str, path: str, *, target: str, allow_outside_paths: bool = False) -> DatasetSplits:
    """Load a dataset folder of the given ``kind`` (``meld``, ``iemocap``, ``sims``, or one registered
    with :func:`register_dataset`).

    ``allow_outside_paths``: media paths that a CSV names (IEMOCAP, CH-SIMS) may lead outside
    ``path``; by default such a path is a missing file, with a warning naming the row.
    """
    return dataset_kind(kind).load(path, target=target, allow_outside_paths=allow_outside_paths)


__all__ = ["DATASETS", "MODALITIES", "SPLITS", "DatasetError", "DatasetKind", "DatasetSplits", "MediaPaths", "Sample",
           "Split", "dataset_kind", "inverse_frequency_weights", "load_dataset", "register_dataset"]
