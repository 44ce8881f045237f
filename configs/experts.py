"""Classifier parts (``experts=...``): a linear classifier or a mixture of N linear experts."""

PRESETS = {
    "1xE": {"name": "linear", "experts": 1},
}
