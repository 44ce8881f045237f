"""A run config from named parts: ``compose("dataset=MELD--E,encoders=T+A+V,loss=focal,fusion=DF-1.0+attn")``.

A run starts from ``configs/default.py``; each part (``PARTS``: ``dataset``, ``encoders``, ...)
then sets its fields from one preset of its module in this folder (the module's ``PRESETS``
dict). A part not named takes its default preset (``parts`` in ``configs/default.py``); an
optional part (one without a default, such as ``context``) not named, or named with a preset
that sets nothing (``context=none``), leaves the config and its hash as they are. ``fusion`` and
``loss`` presets combine as ``base+extra+...`` (``DF-1.0+attn``, ``focal+spcl``). A ``recipe``
(``configs/recipes.py``) names parts and field settings at once: parts named beside it replace
the recipe's, and its fields are set after every part.

The result is checked with ``emojax.config.validate`` by whoever runs it (the launchers, the
sweeps), after the command line's ``--config.<field>=<value>`` overrides.
"""
from __future__ import annotations

import copy
from typing import Mapping, NamedTuple, Optional

import ml_collections

from configs import context, datasets, default, dropout, encoders, experts, fusion, losses, modes, recipes
from emojax.config import ConfigError, composed_record


class Part(NamedTuple):
    """A config part: its presets (name -> plain dict); ``combine``: whether ``base+extra+...``
    merges several of them; ``into``: for a part not assembled by :func:`compose` field by
    field, the dotted field its preset is merged into (``None``: the config itself); ``aliases``:
    other spellings of its presets (``{"weight": "weighted"}``), composed as the preset itself."""

    presets: Mapping[str, dict]
    combine: bool = False
    into: Optional[str] = None
    aliases: Mapping[str, str] = {}


PARTS: dict[str, Part] = {
    "dataset": Part(datasets.PRESETS),
    "encoders": Part(encoders.PRESETS),
    "fusion": Part(fusion.PRESETS, combine=True),
    "loss": Part(losses.PRESETS, combine=True, aliases=losses.ALIASES),
    "experts": Part(experts.PRESETS),
    "mode": Part(modes.PRESETS),
    "dropout": Part(dropout.PRESETS),
    # A new part is one line (and its module imported above). Without a default in
    # configs/default.py a part is optional: configs that do not name it, or name a preset of it
    # that sets nothing (context=none), keep their fields and their hash.
    "context": Part(context.PRESETS, into="model.context"),
    # Not a part of the config itself: other parts and fields at once (expand_recipe).
    "recipe": Part(recipes.PRESETS),
}

# The parts compose() assembles field by field; every other part's preset is merged as it is.
_ASSEMBLED = ("dataset", "encoders", "fusion", "loss", "experts", "mode", "dropout")


def presets(part: str) -> Mapping[str, dict]:
    """The ``PRESETS`` of a config part (``dataset``, ``fusion``, ...)."""
    if part not in PARTS:
        raise ConfigError(f"unknown config part {part!r}; known parts: {', '.join(PARTS)}")
    return PARTS[part].presets


def parse_parts(arg: Optional[str]) -> dict[str, str]:
    """``"dataset=MELD--E,loss=focal"`` -> ``{"dataset": "MELD--E", "loss": "focal"}``."""
    chosen: dict[str, str] = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"config part {item!r} is not of the form key=value "
                              f"(keys: {', '.join(PARTS)})")
        if key not in PARTS:
            raise ConfigError(f"unknown config part {key!r} in {arg!r}; known parts: {', '.join(PARTS)}")
        if key in chosen:
            raise ConfigError(f"config part {key!r} is given twice in {arg!r}")
        chosen[key] = value
    return chosen


def canonical(part: str, value: str) -> str:
    """``value`` with each preset named by its own name, not an alias (``weight+spcl`` ->
    ``weighted+spcl``): two spellings of one config compose to one config, and one run."""
    aliases = PARTS[part].aliases if part in PARTS else {}
    return "+".join(aliases.get(name, name) for name in value.split("+"))


def resolve(part: str, value: str) -> dict:
    """A copy of a preset, or for a combining part (``fusion``, ``loss``) of ``base+extra+...``:
    the base with each extra merged on top (an extra is a preset, or an overlay ``+name``)."""
    table = presets(part)
    value = canonical(part, value)
    if value in table:
        return copy.deepcopy(table[value])
    if PARTS[part].combine and "+" in value:
        base, *extras = value.split("+")
        if base not in table:
            raise ConfigError(f"unknown {part} {base!r} (in {part}={value}); choices: {', '.join(sorted(table))}")
        merged = copy.deepcopy(table[base])
        for extra in extras:
            key = extra if extra in table else f"+{extra}"
            if key not in table:
                raise ConfigError(f"unknown {part} part {extra!r} (in {part}={value}); "
                                  f"choices: {', '.join(sorted(table))}")
            _merge(merged, copy.deepcopy(table[key]))
        return merged
    raise ConfigError(f"unknown {part} {value!r}; choices: {', '.join(sorted(table))}")


def _merge(into: dict, overlay: Mapping) -> dict:
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _merge_at(cfg: dict, dotted: Optional[str], preset: dict) -> None:
    """Merge ``preset`` into the field ``dotted`` of ``cfg`` (created if missing)."""
    node = cfg
    for key in (dotted.split(".") if dotted else []):
        node = node.setdefault(key, {})
    _merge(node, preset)


def expand_recipe(named: dict[str, str]) -> tuple[dict[str, str], dict]:
    """``named`` parts with a ``recipe`` among them -> ``(parts, fields)``: the recipe's parts
    with the others named beside it on top, and the recipe's field settings (dotted key -> value);
    ``(named, {})`` without a recipe."""
    named = dict(named)
    name = named.pop("recipe", None)
    if name is None:
        return named, {}
    table = presets("recipe")
    if name not in table:
        raise ConfigError(f"unknown recipe {name!r}; choices: {', '.join(sorted(table))}")
    recipe = table[name]
    return {**recipe["parts"], **named}, copy.deepcopy(dict(recipe["fields"]))


def _set_fields(cfg: dict, fields: Mapping, recipe: str) -> None:
    """Set each dotted field of a recipe in ``cfg``; one whose section is absent (a part named
    beside the recipe left it out) is skipped, one unknown in its section is an error."""
    for dotted, value in fields.items():
        *path, last = dotted.split(".")
        node = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if last not in node:
            raise ConfigError(f"recipe={recipe}: field {dotted!r} is not a field of the composed config "
                              f"(configs/recipes.py)")
        node[last] = value


def compose(arg: Optional[str] = None) -> ml_collections.ConfigDict:
    """The full run config of ``key=value,...`` parts (see the module docstring)."""
    cfg = default.get_config().to_dict()
    defaults = set(cfg["parts"])
    named = parse_parts(arg)
    recipe = named.get("recipe", "")
    named, fields = expand_recipe(named)
    chosen = {part: canonical(part, value) for part, value in {**cfg["parts"], **named}.items()}
    missing = [part for part in _ASSEMBLED if part not in chosen]
    if missing:
        raise ConfigError(f"config part {missing[0]!r} has no default preset in configs/default.py; "
                          f"name one, e.g. {missing[0]}={next(iter(presets(missing[0])))}")
    dataset = resolve("dataset", chosen["dataset"])
    specs = resolve("encoders", chosen["encoders"])
    mode = resolve("mode", chosen["mode"])
    text = dataset.pop("text")
    text.update(mode.pop("text", {}))
    if "T" in specs:
        specs["T"].update(text)
    for spec in specs.values():
        spec.setdefault("pooling", "default")
    finetune = cfg["finetune"]
    finetune["lr"] = mode.pop("encoder_lr", finetune["lr"])
    finetune["lora"] = mode.pop("lora", finetune["lora"])
    finetune.update(mode.pop("finetune", {}))  # further fine-tuning fields (tune_layers) of a preset
    cfg.update({
        "parts": chosen,
        "dataset": {"name": chosen["dataset"], **dataset},
        "modalities": chosen["encoders"],
        "encoders": specs,
        "mode": mode.pop("mode"),
        "fusion": {"preset": chosen["fusion"], **resolve("fusion", chosen["fusion"])},
        "classifier": {"preset": chosen["experts"], **resolve("experts", chosen["experts"])},
        "loss": {"preset": chosen["loss"], **cfg["loss"], **resolve("loss", chosen["loss"])},
        "modality_dropout": float(resolve("dropout", chosen["dropout"])["p"]),
    })
    for part, value in list(chosen.items()):
        if part in _ASSEMBLED:
            continue
        preset = resolve(part, value)
        if preset:
            _merge_at(cfg, PARTS[part].into, preset)
        elif part not in defaults:
            del chosen[part]  # an optional part's empty preset is the part not named: same hash
    # The parts' config, before a recipe's fields and any override: what the run's label lists
    # the changes against (emojax.config.overrides).
    cfg["composed"] = composed_record(cfg)
    _set_fields(cfg, fields, recipe)
    return ml_collections.ConfigDict(cfg)
