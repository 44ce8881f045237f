"""MAKD: modality-aware distillation from a text teacher, MELD--E and IEMOCAP--E, seeds 0, 42, 114.

First the text teachers (``encoders=T``, focal loss; 6 runs), then the T+A+V students
(``DF-1.0+attn``, ``focal+dist``; 6 runs), each distilled from the teacher of its dataset and
seed (the suite's ``experiments/makd.toml``).
"""
from emojax.sweep import SEEDS, spec

DATASETS = ("MELD--E", "IEMOCAP--E")
STUDENT = "encoders=T+A+V,fusion=DF-1.0+attn,loss=focal+dist"


def teacher(dataset: str, seed: int) -> dict:
    """The text teacher of ``dataset`` and ``seed`` (shared by makd and makd-ablation)."""
    return spec(f"dataset={dataset},encoders=T,loss=focal", seed)


def get_sweep():
    teachers = {(d, s): teacher(d, s) for d in DATASETS for s in SEEDS}
    students = [spec(f"dataset={d},{STUDENT}", s, teacher=t["name"]) for (d, s), t in teachers.items()]
    return list(teachers.values()) + students
