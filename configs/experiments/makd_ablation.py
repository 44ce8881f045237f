"""MAKD ablation: students with other fusion and loss combinations, distilled from the same text
teachers as ``makd`` (MELD--E and IEMOCAP--E, seeds 0, 42, 114): 6 teachers + 42 students.

* losses, with ``DF-1.0+attn``: ``focal+dist`` (MAKD itself), ``weight+dist`` and
  ``focal+frl-<dataset>+dist`` (feature reconstruction added);
* fusions, with ``focal+dist``: ``vallina`` (concat), ``private``, ``shared-<dataset>`` and
  ``DF-1.0+concat`` (no cross-attention).

As the suite's ``experiments/makd-ablation.toml``, over three seeds. The teachers' runs are those
of ``makd`` (same configs, same run directories), so a finished ``makd`` sweep reuses them.
"""
from configs.experiments.makd import DATASETS, teacher
from emojax.sweep import SEEDS, spec

FRL = {"MELD--E": "frl-meld", "IEMOCAP--E": "frl-iemocap"}
SHARED = {"MELD--E": "shared-meld", "IEMOCAP--E": "shared-iemocap"}


def students(dataset: str) -> list[str]:
    """``fusion=...,loss=...`` of the students of ``dataset``."""
    losses = ["focal+dist", "weight+dist", f"focal+{FRL[dataset]}+dist"]
    fusions = ["vallina", "private", SHARED[dataset], "DF-1.0+concat"]
    return ([f"fusion=DF-1.0+attn,loss={loss}" for loss in losses]
            + [f"fusion={fusion},loss=focal+dist" for fusion in fusions])


def get_sweep():
    specs = []
    for dataset in DATASETS:
        for seed in SEEDS:
            t = teacher(dataset, seed)
            specs.append(t)
            specs += [spec(f"dataset={dataset},encoders=T+A+V,{student}", seed, teacher=t["name"])
                      for student in students(dataset)]
    return specs
