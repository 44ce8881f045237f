"""A sweep small enough to try (and to test): the generated demo dataset, seed 0.

T, A, V and T+A+V (concat fusion) with focal loss, then a MAKD student: T+A+V with ``focal+dist``,
distilled from the T run. The student keeps the concat fusion of the T+A+V run, so the table
shows what distillation adds (and the sweep stays quick: ``makd`` uses ``DF-1.0+attn``, whose
compilation alone takes longer than this whole sweep on a CPU). 5 runs.
"""
from emojax.sweep import spec

SEEDS = (0,)


def get_sweep():
    specs = []
    for seed in SEEDS:
        runs = {m: spec(f"dataset=demo,encoders={m},loss=focal", seed) for m in ("T", "A", "V", "T+A+V")}
        specs += list(runs.values())
        specs.append(spec("dataset=demo,encoders=T+A+V,loss=focal+dist", seed, teacher=runs["T"]["name"]))
    return specs
