"""Classifier parts (``experts=...``): the suite's ``1xE`` (linear) and ``4xE`` / ``8xE`` /
``64xE`` (a dense mixture of N linear experts under a noisy router), plus sparse top-k mixtures
(``8xE-top2``: only the two largest routing weights per sample, renormalised). Options are those
of ``emojax.model.classifier.build_classifier``."""

PRESETS = {
    "1xE": {"name": "linear", "experts": 1},
    "4xE": {"name": "moe", "experts": 4, "top_k": 0},
    "8xE": {"name": "moe", "experts": 8, "top_k": 0},
    "64xE": {"name": "moe", "experts": 64, "top_k": 0},
    "4xE-top1": {"name": "sparse-moe", "experts": 4, "top_k": 1},
    "8xE-top2": {"name": "sparse-moe", "experts": 8, "top_k": 2},
    "64xE-top2": {"name": "sparse-moe", "experts": 64, "top_k": 2},
}
