"""Fusion parts (``fusion=...``): the fusion layer after the per-modality features."""

PRESETS = {
    # Concatenation + projector (the suite's VallinaFusion); works for one modality too.
    "vallina": {"name": "concat", "depth": 1},
    "deep-vallina": {"name": "concat", "depth": 5},
    "mean": {"name": "mean", "depth": 1},
    # Tensor fusion (TFN) and low-rank multimodal fusion (LMF) need two or more modalities.
    "tensor": {"name": "tensor", "hidden": 16, "depth": 2, "min_modalities": 2},
    "low-rank": {"name": "low-rank", "rank": 4, "min_modalities": 2},
}
