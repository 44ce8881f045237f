"""Loss parts (``loss=...``): the classification loss and extra losses with their weights.

Combine them with ``+``: ``loss=focal+spcl``. ``spcl`` and ``apcl`` act on the fused features.
"""

PRESETS = {
    "ce": {"classification": "ce"},
    "weight": {"classification": "weighted"},
    "focal": {"classification": "focal"},
    "spcl": {"extras": {"spcl": {"weight": 1.0, "temperature": 0.08, "pool_size": 512, "support_set_size": 64,
                                 "decoupled": False}}},
    "apcl": {"extras": {"apcl": {"weight": 1.0, "temperature": 0.08, "alpha": 0.5, "gamma": 0.99}}},
}
