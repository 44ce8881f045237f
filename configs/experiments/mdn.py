"""MDN: the disentanglement fusion (alpha 1.0, cross-attention output) on T+A+V, with focal and
weighted cross entropy, on MELD--E and IEMOCAP--E, seeds 0, 42, 114: 12 runs
(the suite's ``experiments/mdn.toml``)."""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E", "IEMOCAP--E")
LOSSES = ("focal", "weight")
FUSION = "DF-1.0+attn"


def get_sweep():
    return [spec(f"dataset={dataset},encoders=T+A+V,fusion={FUSION},loss={loss}", seed)
            for dataset in DATASETS for loss in LOSSES for seed in SEEDS]
