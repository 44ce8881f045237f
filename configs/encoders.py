"""Encoder parts: which modalities a run uses and the encoder behind each one.

The part name is the modality set (``T``, ``A``, ``V``, ``T+A``, ``T+V``, ``A+V``, ``T+A+V``).
Every modality has a default encoder; override any field, e.g.
``--config.encoders.T.model=roberta-large``.
"""

TEXT = {"family": "bert", "model": "sentence-transformers/all-MiniLM-L6-v2"}
AUDIO = {"family": "classic-audio", "model": "librosa"}
VIDEO = {"family": "classic-video", "model": "opencv"}

_BY_MODALITY = {"T": TEXT, "A": AUDIO, "V": VIDEO}


def _part(modalities: str) -> dict:
    return {m: dict(_BY_MODALITY[m]) for m in modalities.split("+")}


PRESETS = {name: _part(name) for name in ("T", "A", "V", "T+A", "T+V", "A+V", "T+A+V")}
