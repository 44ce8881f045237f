"""Modality pairs and the triple (T+A, T+V, A+V, T+A+V) with concat fusion (``vallina``) on
MELD--E and IEMOCAP--E, seeds 0, 42, 114: 24 runs (the suite's
``experiments/baseline/multimodal.toml``, weighted cross entropy)."""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E", "IEMOCAP--E")
ENCODERS = ("T+A", "T+V", "A+V", "T+A+V")
LOSS = "weight"


def get_sweep():
    return [spec(f"dataset={dataset},encoders={encoders},fusion=vallina,loss={LOSS}", seed)
            for dataset in DATASETS for encoders in ENCODERS for seed in SEEDS]
