"""Fusion parts (``fusion=...``): the PyTorch suite's fusion configs, and the other layers.

Each preset is the keyword set of ``emojax.model.fusion.build_fusion``: ``name`` is the registry name,
the other keys its options. Two keys are read by the model instead: ``min_modalities`` (the
config check refuses runs with fewer) and ``project_inputs`` (a linear map of every modality to
that size before fusing; attention layers need sizes their heads divide, and the shared
projector of the disentanglement fusion needs one size for all; 0 = feed the features as they
are, as the suite does with its 768-dim encoders).

Names starting with ``+`` are overlays merged on top of a base: ``fusion=DF-1.0+attn``.
``+attn`` selects the cross-attention output of the disentanglement fusion -- as in the suite,
that is already its default (``use_cross_attn=True``), and ``+concat`` selects the depth-4 concat
projector instead. ``+per-sample`` switches every attention layer to per-sample attention; the
default ``batch_as_sequence=True`` is the suite's attention across the batch (samples attend to
their batch mates; see ``emojax/model/layers.py``).
"""

_SUITE_ATTENTION = {"batch_as_sequence": True}

# DisentanglementFusion(feature_sizes_dict, 256, 128, alpha=...)
_DF = {"name": "disentanglement", "private_dim": 256, "shared_dim": 128, "use_cross_attn": True,
       "dropout": 0.1, **_SUITE_ATTENTION, "min_modalities": 2, "project_inputs": 384}

PRESETS = {
    # VallinaFusionLayer(feature_sizes_dict, 128[, depth=5]); works for one modality as well.
    "vallina": {"name": "concat", "out_features": 128, "depth": 1},
    "deep-vallina": {"name": "concat", "out_features": 128, "depth": 5},
    "mean": {"name": "mean", "out_features": 128, "depth": 1, "project_inputs": 384},
    # The suite's disentanglement fusion ("MDN") and its two halves.
    "DF-0.1": dict(_DF, alpha=0.1),
    "DF-1.0": dict(_DF, alpha=1.0),
    "DF-2.0": dict(_DF, alpha=2.0),
    # PrivateFeatureFusion(feature_sizes_dict, 256)
    "private": dict(_DF, parts="private", min_modalities=1),
    # SharedFeatureFusion(feature_sizes_dict, 128, alpha=0.1 / 2)
    "shared-meld": dict(_DF, parts="shared", alpha=0.1),
    "shared-iemocap": dict(_DF, parts="shared", alpha=2.0),
    # The suite's other layers.
    "self-attention": {"name": "self-attention", "num_heads": 8, **_SUITE_ATTENTION, "min_modalities": 2,
                       "project_inputs": 128},
    "cross-attention": {"name": "cross-attention", "residual": False, "num_heads": 8, "dropout": 0.1,
                        **_SUITE_ATTENTION, "min_modalities": 2, "project_inputs": 128},
    "concat-projector": {"name": "concat-projector", "depth": 2, "dropout": 0.1},
    # TFN: each modality reduced to 16 features, outer product (17^M), then a depth-2 projector.
    "tensor": {"name": "tensor", "hidden": 16, "depth": 2, "dropout": 0.1, "min_modalities": 2},
    # LMF with rank 4.
    "low-rank": {"name": "low-rank", "rank": 4, "append_one": False, "min_modalities": 2},
    "moe": {"name": "moe", "noisy": False, "min_modalities": 2},
    "multihead-moe": {"name": "multihead-moe", "noisy": False, "min_modalities": 2},
    # Overlays.
    "+attn": {"use_cross_attn": True},
    "+concat": {"use_cross_attn": False},
    "+per-sample": {"batch_as_sequence": False},
    "+residual": {"residual": True},
}
