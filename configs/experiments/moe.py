"""Mixture-of-experts classifiers: 1, 4, 8 and 64 linear experts (``1xE`` ... ``64xE``) after
low-rank fusion (LMF), on T+A and T+A+V, MELD--E, seeds 0, 42, 114: 24 runs (the suite's
``experiments/moe.toml``, frozen encoders, over three seeds)."""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E",)
ENCODERS = ("T+A", "T+A+V")
EXPERTS = ("1xE", "4xE", "8xE", "64xE")
FUSION = "low-rank"


def get_sweep():
    return [spec(f"dataset={dataset},encoders={encoders},fusion={FUSION},experts={experts}", seed)
            for dataset in DATASETS for encoders in ENCODERS for experts in EXPERTS for seed in SEEDS]
