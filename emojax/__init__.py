"""emojax: functional JAX/Flax multimodal emotion recognition (text, audio, video).

The data path, each step a function you can call alone::

    emojax.data.load_dataset              -> samples
    emojax.features.featurizer.Featurizer -> per-modality features (frozen encoders, cached)
    emojax.model.model.EmotionModel       -> fusion + classifier -> logits
    emojax.training.loop.fit              -> jit-compiled train/eval steps, dev selection, test scored once
    emojax.training.evaluation            -> probabilities, scores, a run's results; a finished run rebuilt
    emojax.metrics                        -> accuracy, weighted F1, confusion matrix + PNG

The packages, bottom up; every import points down this order (tests/test_layout.py checks it):

    files, progress  atomic writes and digests; progress bars
    metrics          scores, tables and plots
    data/            one description per dataset (files, rows -> samples, media, targets), media decoding
    encoders/        encoder families and their registry, LoRA, hub access, export
    config           a run config: checked values and names, hash, directory, label
    features/ model/ frozen features and their cache; layers, fusion, classifier, context head, losses
    runs/            what a run writes and reads back: records, format and migration, checkpoints, store
    training/        a run's plan, state, steps, batches, tuners, evaluation, the epoch loop
    inference/       the estimator of a finished run, batch prediction, standalone copies
    sweep/ benchmark many runs: specs, plan, execution, report; the benchmark command
"""
__version__ = "0.1.0"
