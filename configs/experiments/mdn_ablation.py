"""MDN ablation on T+A+V with focal loss, MELD--E and IEMOCAP--E, seeds 0, 42, 114: 48 runs.

* the disentanglement fusion's alpha (``DF-0.1``, ``DF-1.0``, ``DF-2.0``), each with its
  cross-attention output (``+attn``) and with the concat projector instead (``+concat``);
* its halves alone: the private features (``private``) and the shared ones with the suite's
  alpha for the dataset (``shared-meld``: 0.1, ``shared-iemocap``: 2.0).

As the suite's ``experiments/mdn-ablation.toml``, over three seeds instead of one per dataset.
"""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E", "IEMOCAP--E")
ALPHAS = ("DF-0.1", "DF-1.0", "DF-2.0")
OUTPUTS = ("+attn", "+concat")
SHARED = {"MELD--E": "shared-meld", "IEMOCAP--E": "shared-iemocap"}


def fusions(dataset: str) -> list[str]:
    return [alpha + output for alpha in ALPHAS for output in OUTPUTS] + ["private", SHARED[dataset]]


def get_sweep():
    return [spec(f"dataset={dataset},encoders=T+A+V,fusion={fusion},loss=focal", seed)
            for dataset in DATASETS for fusion in fusions(dataset) for seed in SEEDS]
