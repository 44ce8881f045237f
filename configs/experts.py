"""Classifier parts (``experts=...``): a linear classifier or a mixture of N linear experts under a
noisy router, as the suite's ``1xE`` / ``4xE`` / ``8xE`` / ``64xE``. Set
``--config.classifier.top_k=2`` for a sparse top-k mixture."""

PRESETS = {
    "1xE": {"name": "linear", "experts": 1},
    "4xE": {"name": "moe", "experts": 4, "top_k": 0},
    "8xE": {"name": "moe", "experts": 8, "top_k": 0},
    "64xE": {"name": "moe", "experts": 64, "top_k": 0},
}
