"""Loading the PyTorch suite's trained heads (fusion layer and classifier) into emojax parameters.

The suite saves a run's head as ``model.safetensors`` with ``state_dict`` names: the fusion layer's
under ``fusion_layer.`` (e.g. ``fusion_layer.shared_fusion.shared_projector.multihead_attn.
in_proj_weight``) and the classifier's under ``classifier.``. The functions here translate those
names into paths of the matching emojax parameter tree, change the layout where needed (PyTorch
``Linear`` weights are ``(out, in)``, Flax kernels ``(in, out)``), check every shape, and fail
with a :class:`~emojax.encoders.hub.WeightError` naming the tensor when one has no place, or the
parameter when one is left unfilled.

* :func:`import_suite_fusion` -- fusion-level names (as a fusion layer's own ``state_dict``).
* :func:`import_suite_classifier` -- classifier-level names (``weight``, ``experts.0.weight``...).
* :func:`import_suite_head` -- a whole ``model.safetensors`` (or its dict), split by prefix.

The emojax layer must be built like the suite's (same modalities in the same order, sizes, depth,
``use_cross_attn``...). The suite's placeholders (``placeholders.{m}``, ``(1, D_m)``) come back as
a separate ``{m: (D_m,)}`` dict, the ``placeholders`` of :class:`emojax.model.model.EmotionModel`; those of the
disentanglement fusion's inner halves are never used by the suite and are skipped.

Not importable: the suite's ``TensorFusionLayer`` (its learned ``augmentation`` scalar; emojax
appends a constant 1) and ``MultiHeadFusionMoE`` (its experts are arbitrary modules).
"""
from __future__ import annotations

import pathlib
import re
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file

from emojax.encoders.hub import WeightError

# Inner placeholders of the disentanglement fusion's halves: the suite fills every modality before
# they are reached, so they never take part.
_UNUSED = re.compile(r"^(private_fusion|shared_fusion)\.placeholders\.")

# Module-name rewrites, suite -> emojax, applied in order to the whole name.
_REWRITES = [
    (r"(^|\.)(private_fusion|shared_fusion)\.", r"\1"),
    (r"(^|\.)named_private_projectors\.(\w+)\.", r"\1private_projector_\2."),
    (r"(^|\.)named_cross_projectors\.(\w+)\.", r"\1cross_projector_\2."),
    (r"(^|\.)cross_reconstruction_predictor\.(\w+)\.", r"\1predictor_\2."),
    (r"(^|\.)named_attns\.(\w+)\.", r"\1attn_\2."),
    (r"(^|\.)fc\.", r"\1projector."),
    (r"^low_rank_weights\.(\w+)$", r"factor_\1"),
    (r"(^|\.)router\.0\.", r"\1router.router."),
    (r"(^|\.)noise\.0\.", r"\1noise."),
]
_ATTENTION = re.compile(r"multihead_attn\.(?:out_proj\.(weight|bias)|((?:in|q|k|v)_proj_(?:weight|bias)))$")


def _dotted(path) -> str:
    return ".".join(path)


def _candidates(name: str, *, modalities: Optional[Sequence[str]]) -> list[tuple[tuple[str, ...], bool]]:
    """Possible ``(emojax path, transpose?)`` for a fusion-level suite name, most likely first."""
    rest = name
    for pattern, replacement in _REWRITES:
        rest = re.sub(pattern, replacement, rest)
    match = re.match(r"^experts\.(\d+)\.(weight|bias)$", rest)
    if match:  # ConcatFusionMoE: one expert per modality (dims order), then the concatenation expert
        if modalities is None:
            raise WeightError(f"suite tensor {name!r}: mixture experts are placed by modality order; pass "
                              "modalities=(...) in the suite's order")
        index = int(match[1])
        expert = f"expert_{modalities[index]}" if index < len(modalities) else "expert_concat"
        rest = f"experts.{expert}.{match[2]}"
    attention = _ATTENTION.search(rest)
    if attention:
        leaf = f"out_proj_{attention[1]}" if attention[1] else attention[2]
        head = rest[:attention.start()].strip(".")
        return [(tuple(head.split(".") if head else ()) + ("multihead_attn", leaf), False)]
    norm = re.search(r"norm\.0\.(weight|bias)$", rest)
    if norm:
        leaf = "scale" if norm[1] == "weight" else "bias"
        return [(tuple((rest[:norm.start()] + "norm").split(".")) + (leaf,), False)]
    layer = re.search(r"(?:^|\.)proj\.(\d+)\.(weight|bias)$", rest)
    if layer:
        # The suite's Projector keeps its layers in a Sequential named ``proj``; an emojax
        # Projector names them ``linear_k`` directly, and a self-attention projector holds one
        # Projector named ``proj``.
        head = rest[:layer.start()]
        linear = f"linear_{int(layer[1]) // 3}"
        leaf = ("kernel", True) if layer[2] == "weight" else ("bias", False)
        base = tuple(head.split(".")) if head else ()
        return [(base + ("proj", linear, leaf[0]), leaf[1]), (base + (linear, leaf[0]), leaf[1])]
    if rest.endswith(".weight"):
        return [(tuple(rest[:-len(".weight")].split(".")) + ("kernel",), True)]
    return [(tuple(rest.split(".")), False)]


def _flat(params) -> dict:
    return {k: np.array(v) for k, v in flatten_dict(jax.device_get(dict(params))).items()}


def _place(flat: dict, filled: dict, name: str, value: np.ndarray, candidates, source: str) -> None:
    for path, transpose in candidates:
        if path in flat:
            value = value.T if transpose else value
            if flat[path].shape != value.shape:
                raise WeightError(f"{source}: tensor {name!r} has shape {tuple(value.shape)} (after layout change), "
                                  f"emojax's {_dotted(path)} expects {tuple(flat[path].shape)}; build the emojax "
                                  "layer with the suite run's sizes")
            flat[path] = value.astype(flat[path].dtype)
            filled[path] = True
            return
    tried = ", ".join(_dotted(p) for p, _ in candidates)
    raise WeightError(f"{source}: tensor {name!r} has no place in the emojax parameters (looked for {tried}); "
                      "is the emojax layer configured like the suite's?")


def _finish(flat: dict, filled: dict, source: str, what: str):
    missing = [_dotted(p) for p in flat if p not in filled]
    if missing:
        raise WeightError(f"{source}: no suite tensor for emojax {what} parameter(s) {', '.join(sorted(missing)[:5])}"
                          + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
                          + "; the checkpoint and the emojax layer disagree")
    return unflatten_dict(flat)


def import_suite_fusion(state: Mapping[str, np.ndarray], fusion_params, *, source: str = "suite checkpoint",
                        modalities: Optional[Sequence[str]] = None):
    """Fill ``fusion_params`` (a template tree of the matching emojax fusion, e.g. from
    ``module.init``) from the suite's fusion-level ``state`` (names without ``fusion_layer.``).

    Returns ``(params, placeholders)``, ``placeholders`` modality -> ``(D_m,)`` float32 (empty when
    the suite layer has none). ``modalities`` (the suite's order) is needed only for mixture
    experts.
    """
    flat, filled, placeholders = _flat(fusion_params), {}, {}
    for name, value in state.items():
        if _UNUSED.match(name):
            continue
        value = np.asarray(value, np.float32)
        if name.startswith("placeholders."):
            placeholders[name.split(".", 1)[1]] = value.reshape(-1)
            continue
        _place(flat, filled, name, value, _candidates(name, modalities=modalities), source)
    return _finish(flat, filled, source, "fusion"), placeholders


def import_suite_classifier(state: Mapping[str, np.ndarray], classifier_params, *,
                            source: str = "suite checkpoint"):
    """Fill ``classifier_params`` (an emojax ``linear`` / ``moe`` / ``sparse-moe`` classifier's
    template) from the suite's classifier-level ``state``: ``weight``/``bias`` (linear) or
    ``experts.{i}.weight``/``bias`` with ``router.router.weight`` and ``router.noise.0.weight``
    (mixtures)."""
    flat, filled = _flat(classifier_params), {}
    slices: dict = {}
    for name, value in state.items():
        value = np.asarray(value, np.float32)
        match = re.match(r"^experts\.(\d+)\.(weight|bias)$", name)
        if match:
            path = ("expert_kernels",) if match[2] == "weight" else ("expert_biases",)
            value = value.T if match[2] == "weight" else value
            index = int(match[1])
            if path not in flat or index >= flat[path].shape[0]:
                raise WeightError(f"{source}: tensor {name!r} has no place: the emojax classifier has "
                                  f"{flat[path].shape[0] if path in flat else 'no'} experts")
            if flat[path][index].shape != value.shape:
                raise WeightError(f"{source}: tensor {name!r} has shape {tuple(value.shape)} (after layout change), "
                                  f"emojax's {_dotted(path)}[{index}] expects {tuple(flat[path][index].shape)}")
            flat[path][index] = value
            slices.setdefault(path, set()).add(index)
            continue
        if name in ("weight", "bias"):
            candidates = [(("linear", "kernel" if name == "weight" else "bias"), name == "weight")]
        else:
            candidates = _candidates(name, modalities=None)
        _place(flat, filled, name, value, candidates, source)
    for path, seen in slices.items():
        if len(seen) == flat[path].shape[0]:
            filled[path] = True
        else:
            absent = sorted(set(range(flat[path].shape[0])) - seen)
            raise WeightError(f"{source}: no suite tensor for expert(s) {absent} of emojax {_dotted(path)}")
    return _finish(flat, filled, source, "classifier")


def load_suite_state(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a suite checkpoint: a ``model.safetensors`` file or a folder holding one."""
    path = pathlib.Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise WeightError(f"{file}: not found; give the suite run's checkpoint folder or its model.safetensors")
    try:
        return load_file(str(file))
    except Exception as err:  # noqa: BLE001 - the message names the file whatever the reader raised
        raise WeightError(f"{file}: cannot read it as SafeTensors ({err})") from None


def import_suite_head(checkpoint, *, fusion_params=None, classifier_params=None,
                      modalities: Optional[Sequence[str]] = None) -> dict:
    """Import a suite run's head: ``checkpoint`` is a path (folder or ``model.safetensors``) or a
    name -> array mapping with model-level names (``fusion_layer.*``, ``classifier.*``).

    Returns ``{"fusion": params or None, "classifier": params or None, "placeholders": {m: (D_m,)}}``.
    A tensor under another prefix (e.g. ``backbone.``) is an error naming it.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, pathlib.Path)) else "suite checkpoint"
    state = load_suite_state(checkpoint) if isinstance(checkpoint, (str, pathlib.Path)) else dict(checkpoint)
    parts: dict[str, dict] = {"fusion_layer": {}, "classifier": {}}
    for name, value in state.items():
        head, _, rest = name.partition(".")
        if head not in parts or not rest:
            raise WeightError(f"{source}: tensor {name!r} is neither a fusion_layer.* nor a classifier.* tensor; "
                              "only the head (fusion layer and classifier) can be imported")
        parts[head][rest] = value
    out = {"fusion": None, "classifier": None, "placeholders": {}}
    for key, template, tensors in (("fusion", fusion_params, parts["fusion_layer"]),
                                   ("classifier", classifier_params, parts["classifier"])):
        if tensors and template is None:
            raise WeightError(f"{source}: holds {key} tensors ({next(iter(tensors))!r}, ...) but no emojax "
                              f"{key}_params template was given")
        if template is not None and not tensors:
            raise WeightError(f"{source}: has no {key} tensors for the given {key}_params")
        if key == "fusion" and template is not None:
            out["fusion"], out["placeholders"] = import_suite_fusion(tensors, template, source=source,
                                                                     modalities=modalities)
        elif template is not None:
            out["classifier"] = import_suite_classifier(tensors, template, source=source)
    return out


# The name this module first exported.
import_suite_params = import_suite_fusion
