"""Fusion parts (``fusion=...``), the PyTorch suite's fusion configs and a few more.

``+attn`` is an overlay (``fusion=DF-1.0+attn``) that turns on the cross-attention output of the
disentanglement fusion. As in the suite, that output is already the default; use
``--config.fusion.use_cross_attn=False`` for the depth-4 concat projector instead.
``batch_as_sequence=True`` reproduces the suite's attention over the batch (see README).
"""

# project_inputs: each modality is first mapped to this size by a linear layer, since the shared
# projector takes every modality and the attention heads must divide the size.
_DF = {"name": "disentanglement", "private_dim": 256, "shared_dim": 128, "use_cross_attn": True,
       "batch_as_sequence": True, "min_modalities": 2, "project_inputs": 384}

PRESETS = {
    # Concatenation + projector (the suite's VallinaFusionLayer, output 128); works for one modality.
    "vallina": {"name": "concat", "depth": 1},
    "deep-vallina": {"name": "concat", "depth": 5},
    "mean": {"name": "mean", "depth": 1},
    # Tensor fusion (TFN) and low-rank multimodal fusion (LMF) need two or more modalities.
    "tensor": {"name": "tensor", "hidden": 16, "depth": 2, "min_modalities": 2},
    "low-rank": {"name": "low-rank", "rank": 4, "min_modalities": 2},
    "cross-attention": {"name": "cross-attention", "residual": False, "batch_as_sequence": True,
                        "min_modalities": 2, "project_inputs": 128},
    # The suite's disentanglement fusion and its two halves.
    "DF-0.1": dict(_DF, alpha=0.1),
    "DF-1.0": dict(_DF, alpha=1.0),
    "DF-2.0": dict(_DF, alpha=2.0),
    "private": dict(_DF, parts="private"),
    "shared-meld": dict(_DF, parts="shared", alpha=0.1),
    "shared-iemocap": dict(_DF, parts="shared", alpha=2.0),
    "+attn": {"use_cross_attn": True},
}
