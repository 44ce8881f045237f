"""Encoders as pure functions over parameter pytrees, loaded from Hugging Face weights.

Text: ``bert`` (BERT / RoBERTa), ``modernbert``; audio: ``whisper``, ``wav2vec2`` (and
data2vec-audio); video: ``videomae``, ``clip_vision``; classic features: ``classic``
(librosa audio statistics, OpenCV video statistics). ``hub`` resolves and reads checkpoints;
``media_encoders`` wraps the neural audio / video encoders for ``emojax.features.featurizer.Featurizer``.
"""
