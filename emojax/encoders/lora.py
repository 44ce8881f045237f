"""Low-rank adapters (LoRA) for the encoders' dense projections, as pure functions.

An adapter on a projection with weight ``W`` (``(in, out)``) holds ``A`` (``(in, rank)``) and
``B`` (``(rank, out)``); the projection then uses ``W + (alpha / rank) * A @ B``. ``B`` starts at
zero, so an encoder with fresh adapters computes exactly what the base encoder computes, and only
the adapters (plus the head) receive gradients in ``mode=lora``.

The adapters act on the weights, not on the activations, so every encoder family's forward pass
is used unchanged::

    adapters = init_lora(params, rng, rank=64, targets=("query", "key", "value", "dense"))
    effective = apply_lora(params, adapters, alpha=128.0, rank=64)      # a params pytree
    hidden = bert_apply(effective, ids, mask, config=config)
    merged = merge_lora(params, adapters, alpha=128.0, rank=64)         # for export

Adapter dropout (``dropout`` > 0, training only) drops input features of the adapter path: one
mask over ``A``'s rows per step, scaled by ``1 / (1 - dropout)``, shared by the batch (the
activation-level dropout of PEFT draws one per token, which a weight-level adapter cannot).

Targets are matched against the name of the module that owns a 2-D weight ``w`` (``query``,
``attention_out``, ``mlp_in``, ...): the aliases below, or regular expressions that must match
the whole name.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp

Params = Any

# Module-name groups. The projections have three namings: the transformer block shared by Whisper,
# wav2vec2 / data2vec-audio, VideoMAE and CLIP (emojax.encoders.core: query, key, value, attn_out,
# fc1, fc2), BERT / RoBERTa (query, key, value, attention_out, intermediate, output) and ModernBERT
# (qkv, attn_out, mlp_in, mlp_out). "dense" follows the PEFT habit of naming the output projections.
ALIASES = {
    "attention": ("query", "key", "value", "attention_out", "qkv", "attn_out"),
    "mlp": ("intermediate", "output", "mlp_in", "mlp_out", "fc1", "fc2"),
    "dense": ("attention_out", "intermediate", "output", "attn_out", "mlp_in", "mlp_out", "fc1", "fc2"),
}


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """``"query,key,value,dense"`` or a sequence of names -> the module-name patterns."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not names:
        raise ValueError("lora targets: empty; name modules such as query,key,value,dense")
    out: list[str] = []
    for name in names:
        out.extend(ALIASES.get(name, (name,)))
    return tuple(dict.fromkeys(out))


def _key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _module_path(path) -> Optional[str]:
    """``"layers.0.query"`` for the leaf ``params["layers"][0]["query"]["w"]``; None for other leaves."""
    names = [_key_name(p) for p in path]
    if len(names) < 2 or names[-1] != "w":
        return None
    return ".".join(names[:-1])


def target_modules(params: Params, targets: str | Sequence[str]) -> list[str]:
    """The module paths (``"layers.0.query"``) whose 2-D weight gets an adapter."""
    patterns = [re.compile(p) for p in parse_targets(targets)]
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        module = _module_path(path)
        if module is None or getattr(leaf, "ndim", 0) != 2:
            continue
        if any(p.fullmatch(module.rsplit(".", 1)[-1]) for p in patterns):
            found.append(module)
    return found


def init_lora(params: Params, rng: jax.Array, *, rank: int, targets: str | Sequence[str]) -> dict:
    """Adapters ``{module_path: {"a": (in, rank), "b": (rank, out)}}`` for every targeted
    projection; ``a`` uniform in ``±1/sqrt(in)`` (PEFT's Kaiming-uniform bound), ``b`` zero."""
    if int(rank) < 1:
        raise ValueError(f"lora rank: must be at least 1, got {rank}")
    modules = target_modules(params, targets)
    if not modules:
        raise ValueError(f"lora targets {targets!r}: no projection of this encoder matches; its modules are "
                         f"{sorted({m.rsplit('.', 1)[-1] for m in _all_modules(params)})}")
    weights = {m: w for m, w in _weights(params)}
    adapters = {}
    for key, module in zip(jax.random.split(rng, len(modules)), modules):
        n_in, n_out = weights[module].shape
        bound = 1.0 / float(n_in) ** 0.5
        adapters[module] = {"a": jax.random.uniform(key, (n_in, int(rank)), jnp.float32, -bound, bound),
                            "b": jnp.zeros((int(rank), n_out), jnp.float32)}
    return adapters


def _weights(params: Params) -> Iterable[tuple[str, Any]]:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        module = _module_path(path)
        if module is not None and getattr(leaf, "ndim", 0) == 2:
            yield module, leaf


def _all_modules(params: Params) -> list[str]:
    return [m for m, _ in _weights(params)]


def apply_lora(params: Params, adapters: dict, *, alpha: float, rank: int, dropout: float = 0.0,
               rng: Optional[jax.Array] = None, deterministic: bool = True) -> Params:
    """``params`` with every adapted weight replaced by ``W + (alpha / rank) A B`` (differentiable
    in ``adapters``; the base weights are constants of the caller's choosing)."""
    scale = float(alpha) / float(rank)
    unknown = set(adapters) - set(_all_modules(params))
    if unknown:
        raise ValueError(f"lora adapters for {sorted(unknown)[:3]}: no such projection in the encoder")
    use_dropout = not deterministic and float(dropout) > 0.0
    if use_dropout and rng is None:
        raise ValueError("lora dropout needs an rng when deterministic=False")
    keys = dict(zip(sorted(adapters), jax.random.split(rng, len(adapters)))) if use_dropout else {}

    def update(path, leaf):
        module = _module_path(path)
        if module is None or module not in adapters:
            return leaf
        a, b = adapters[module]["a"], adapters[module]["b"]
        if use_dropout:
            keep = jax.random.bernoulli(keys[module], 1.0 - float(dropout), (a.shape[0], 1))
            a = jnp.where(keep, a / (1.0 - float(dropout)), 0.0)
        return leaf + scale * (a @ b).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(update, params)


def merge_lora(params: Params, adapters: dict, *, alpha: float, rank: int) -> Params:
    """The base weights with the adapters folded in: a plain encoder pytree for export."""
    return jax.device_get(apply_lora(params, adapters, alpha=alpha, rank=rank))


def count_parameters(tree: Params) -> int:
    return int(sum(getattr(x, "size", 0) for x in jax.tree_util.tree_leaves(tree)))
