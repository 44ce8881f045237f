"""Encoder parts: which modalities a run uses and the encoder behind each one.

The part name is the modality set (``T``, ``A``, ``V``, ``T+A``, ``T+V``, ``A+V``, ``T+A+V``).
Every modality has a default encoder; override any field, e.g.
``--config.encoders.T.model=roberta-large``.

Families (``encoders.X.family``; ``model`` is a hub id or a local Hugging Face folder):

* T: ``bert`` (BERT / RoBERTa, and ModernBERT detected by the checkpoint's ``model_type``),
  ``modernbert`` (ModernBERT only);
* A: ``classic-audio`` (librosa statistics), ``whisper``, ``wav2vec2`` (wav2vec2 and
  data2vec-audio, by ``model_type``);
* V: ``classic-video`` (OpenCV statistics), ``videomae``, ``clip`` (CLIP vision tower per frame).

``encoders.A.pooling`` / ``encoders.V.pooling``: ``default`` (the suite's choice: the first
position, mean over valid frames for Whisper) or ``mean``; wav2vec2 / VideoMAE / CLIP also take
``first``. See ``emojax.encoders.media_encoders``.
"""

TEXT = {"family": "bert", "model": "sentence-transformers/all-MiniLM-L6-v2"}
AUDIO = {"family": "classic-audio", "model": "librosa"}
VIDEO = {"family": "classic-video", "model": "opencv"}

_BY_MODALITY = {"T": TEXT, "A": AUDIO, "V": VIDEO}


def _part(modalities: str) -> dict:
    return {m: dict(_BY_MODALITY[m]) for m in modalities.split("+")}


PRESETS = {name: _part(name) for name in ("T", "A", "V", "T+A", "T+V", "A+V", "T+A+V")}
