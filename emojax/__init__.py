"""emojax: functional JAX/Flax multimodal emotion recognition (text, audio, video).

The data path, each step a function you can call alone::

    emojax.data.load_dataset  -> samples
    emojax.features.Featurizer -> per-modality features (frozen encoders, cached)
    emojax.model.EmotionModel -> fusion + classifier -> logits
    emojax.training.fit       -> jit-compiled train/eval steps, dev selection, test scored once
    emojax.evaluation         -> probabilities, scores, a run's results; a finished run rebuilt
    emojax.metrics            -> accuracy, weighted F1, confusion matrix + PNG
"""

__version__ = "0.1.0"
