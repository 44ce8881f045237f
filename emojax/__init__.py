"""emojax: functional JAX/Flax multimodal emotion recognition (text, audio, video).

The data path, each step a function you can call alone::

    emojax.data.load_dataset     -> samples
    emojax.features.Featurizer   -> per-modality features (frozen encoders, cached)
    emojax.model.EmotionModel    -> fusion + classifier -> logits
    emojax.training.fit          -> jit-compiled train/eval steps, dev selection, test scored once
    emojax.evaluation            -> probabilities, scores, a run's results; a finished run rebuilt
    emojax.metrics               -> accuracy, weighted F1, confusion matrix + PNG

The packages, imports pointing down (inference and runs -> training -> model -> encoders, data):

    data/        dataset loaders, CSV reading, media decoding, the demo dataset
    encoders/    encoder core and families, LoRA, hub access, export back to checkpoint tensors
    features/    frozen-encoder features (featurizer) and the SafeTensors feature cache
    model/       layers, fusion, classifier, dialogue context, the model, losses, suite import
    training/    state, steps, batches, data parallel, preparation, fine-tuning, the epoch loop
    runs/        Orbax checkpoints, the encoder store and run discovery, standalone copies
    inference/   the estimator of a finished run, batch prediction over tables
    sweep/       experiment sweeps: specs, plan, execution, report
"""
import importlib
from typing import Any, Callable

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public names (``{name: module}``) are
    imported from their module on first use, so that importing one light module of the package
    does not load the others with it."""
    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(importlib.import_module(package))[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return getattr_, dir_
