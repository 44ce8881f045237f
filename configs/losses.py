"""Loss parts (``loss=...``): the classification loss and extra losses with their weights."""

PRESETS = {
    "ce": {"classification": "ce"},
    "weight": {"classification": "weighted"},
    "focal": {"classification": "focal"},
}
