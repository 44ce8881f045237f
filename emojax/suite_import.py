"""Loading the PyTorch suite's trained fusion heads into emojax parameter trees.

The suite saves ``state_dict`` tensors such as
``shared_fusion.shared_projector.multihead_attn.in_proj_weight``; ``suite_path`` rewrites such a
name into the emojax parameter path (and says whether the tensor is a transposed ``Linear``
weight), and ``import_suite_params`` fills a parameter tree from a whole state dict, checking
every shape. A tensor it cannot place is an error naming it; so is a parameter left unfilled.
"""
from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from emojax.encoders.hub import WeightError

# Whole-name prefixes of the disentanglement fusion's parts.
_PREFIXES = [
    (r"private_fusion\.named_private_projectors\.(\w+)\.", r"private_projector_\1."),
    (r"private_fusion\.private_router\.", "private_router."),
    (r"shared_fusion\.shared_projector\.", "shared_projector."),
    (r"shared_fusion\.shared_router\.", "shared_router."),
    (r"shared_fusion\.named_cross_projectors\.(\w+)\.", r"cross_projector_\1."),
    (r"shared_fusion\.cross_reconstruction_predictor\.(\w+)\.", r"predictor_\1."),
    (r"fusion_layer\.named_attns\.(\w+)\.", r"fusion_layer.attn_\1."),
    (r"fusion_layer\.fc\.", "fusion_layer."),
    (r"^fc\.", "projector."),
]
# Tensors the suite keeps but never uses: its inner fusions get every modality already filled in.
_UNUSED = re.compile(r"^(private_fusion|shared_fusion)\.placeholders\.")


def suite_path(name: str) -> tuple[tuple[str, ...], bool]:
    """``(emojax parameter path, transpose?)`` for a suite ``state_dict`` name."""
    if name.startswith("placeholders."):
        return ("placeholders", name.split(".", 1)[1]), False
    rest = name
    for pattern, replacement in _PREFIXES:
        rest, hits = re.subn(pattern, replacement, rest, count=1)
        if hits:
            break
    rules = [
        (r"multihead_attn\.out_proj\.(weight|bias)$", lambda m: f"multihead_attn.out_proj_{m[1]}", False),
        (r"multihead_attn\.((?:in|q|k|v)_proj_(?:weight|bias))$", lambda m: f"multihead_attn.{m[1]}", False),
        (r"norm\.0\.weight$", lambda m: "norm.scale", False),
        (r"norm\.0\.bias$", lambda m: "norm.bias", False),
        (r"proj\.(\d+)\.weight$", lambda m: f"proj.linear_{int(m[1]) // 3}.kernel", True),
        (r"proj\.(\d+)\.bias$", lambda m: f"proj.linear_{int(m[1]) // 3}.bias", False),
        (r"(router|noise)(?:\.0)?\.weight$", lambda m: f"{m[1]}.kernel", True),
    ]
    for pattern, rewrite, transpose in rules:
        match = re.search(pattern, rest)
        if match:
            path = rest[:match.start()] + rewrite(match)
            # A Projector that is itself the layer (predictors, concat fusion) has no "proj" level.
            path = re.sub(r"^(predictor_\w+|fusion_layer|projector)\.proj\.", r"\1.", path)
            return tuple(path.split(".")), transpose
    raise WeightError(f"suite tensor {name!r} has no place in the emojax parameters")


def import_suite_params(state: Mapping[str, np.ndarray], fusion_params, *, source: str = "suite checkpoint"):
    """Fill ``fusion_params`` (a template tree of the matching emojax fusion) from ``state``.

    Returns ``(fusion_params, placeholders)`` where ``placeholders`` maps modality -> ``(dim,)``.
    """
    flat = {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(fusion_params)).items()}
    filled, placeholders = set(), {}
    for name, value in state.items():
        if _UNUSED.match(name):
            continue
        path, transpose = suite_path(name)
        value = np.asarray(value, np.float32)
        if path[0] == "placeholders":
            placeholders[path[1]] = value.reshape(-1)
            continue
        value = value.T if transpose else value
        if path not in flat:
            raise WeightError(f"{source}: tensor {name!r} maps to {'.'.join(path)}, which this emojax fusion "
                              "does not have (is it configured like the suite's?)")
        if flat[path].shape != value.shape:
            raise WeightError(f"{source}: tensor {name!r} has shape {value.shape} (after layout change), "
                              f"emojax's {'.'.join(path)} expects {flat[path].shape}")
        flat[path] = value
        filled.add(path)
    missing = sorted(".".join(p) for p in flat if p not in filled)
    if missing:
        raise WeightError(f"{source}: no tensor for emojax parameter(s) {', '.join(missing[:5])}"
                          + (f" ... ({len(missing)} in all)" if len(missing) > 5 else ""))
    return unflatten_dict(flat), placeholders
