"""Each modality alone (T, A, V) on MELD--E and IEMOCAP--E, seeds 0, 42, 114: 18 runs.

As the suite's ``experiments/baseline/unimodal.toml``; the classification loss is the
inverse-frequency weighted cross entropy (``weight``), as in the multimodal baseline, so the two
tables compare.
"""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E", "IEMOCAP--E")
ENCODERS = ("T", "A", "V")
LOSS = "weight"


def get_sweep():
    return [spec(f"dataset={dataset},encoders={encoders},loss={LOSS}", seed)
            for dataset in DATASETS for encoders in ENCODERS for seed in SEEDS]
