"""The encoder families a run config may name, per modality, and the poolings each accepts.

Plain data and one check, without JAX: the registry that the config's ``encoders`` section is
checked against (:func:`emojax.config.validate`, before any work) and that the media encoders
(:mod:`emojax.encoders.media_encoders`) are built from.
"""
from __future__ import annotations

from typing import Optional

TEXT_FAMILIES = ("bert", "modernbert")
CLASSIC_FAMILIES = {"A": "classic-audio", "V": "classic-video"}
# Neural media families: family -> (modality, poolings accepted in encoders.X.pooling); "default"
# resolves per family (DEFAULT_POOLING).
MEDIA_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "whisper": ("A", ("default", "mean")),
    "wav2vec2": ("A", ("default", "first", "mean")),
    "videomae": ("V", ("default", "first", "mean")),
    "clip": ("V", ("default", "first", "mean")),
}
DEFAULT_POOLING = {"whisper": "mean", "wav2vec2": "first", "videomae": "first", "clip": "first"}
TEXT_POOLINGS = ("mask", "mean", "cls")


def families(modality: str) -> tuple[str, ...]:
    """The families ``encoders.{modality}.family`` may name."""
    if modality == "T":
        return TEXT_FAMILIES
    return (CLASSIC_FAMILIES[modality], *(f for f, (m, _) in MEDIA_FAMILIES.items() if m == modality))


def encoder_problem(modality: str, spec) -> Optional[str]:
    """What is wrong with ``encoders.{modality}`` (its family, its pooling), naming the key, or
    ``None``."""
    family = spec.get("family")
    if family not in families(modality):
        return f"encoders.{modality}.family: {family!r} is not one of {', '.join(families(modality))}"
    pooling = spec.get("pooling", "default")
    if modality == "T":
        if pooling not in TEXT_POOLINGS:
            return f"encoders.T.pooling: {pooling!r} is not one of {', '.join(TEXT_POOLINGS)}"
        if pooling == "mask" and not spec.get("prompt", False):
            return ("encoders.T.pooling: 'mask' pools at the prompt's mask token; set encoders.T.prompt=True or "
                    "choose pooling mean/cls")
        return None
    allowed = MEDIA_FAMILIES[family][1] if family in MEDIA_FAMILIES else ("default",)
    if pooling not in allowed:
        return (f"encoders.{modality}.pooling: {pooling!r} is not supported by family {family!r}; "
                f"choose from {', '.join(allowed)}")
    return None
