"""Run specs: plain dicts naming a run by its config parts, seed, teacher and overrides (:func:`spec`),
and their checks (:func:`check_specs`)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


from emojax import config as config_lib


SEEDS = (0, 42, 114)
OK = ("finished", "done")  # a run whose results.json exists: skipped as already finished, or run now


class SweepError(ValueError):
    """A sweep or one of its run specs is unknown or inconsistent; the message names it."""


def part_values(parts: str) -> list[str]:
    """``"dataset=MELD--E,loss=focal"`` -> ``["MELD--E", "focal"]``: the values of a ``key=value,...``
    string, in its order. Which keys and values exist is the composer's to say (:func:`plan`)."""
    values, keys = [], set()
    for item in filter(None, parts.split(",")):
        key, sep, value = (text.strip() for text in item.partition("="))
        if not sep or not key or not value:
            raise SweepError(f"run spec parts {parts!r}: {item!r} is not of the form key=value")
        if key in keys:
            raise SweepError(f"run spec parts {parts!r}: {key!r} is given twice")
        keys.add(key)
        values.append(value)
    return values


def spec(parts: str, seed: int, *, name: Optional[str] = None, teacher: Optional[str] = None,
         category: Optional[str] = None, **overrides) -> dict:
    """One run spec. ``name`` defaults to the part values, in the order given, and the seed
    (``dataset=MELD--E,encoders=T,loss=focal`` -> ``MELD--E/T/focal/seed=0``); ``category`` to
    ``distillation`` with a teacher, ``training`` without; ``overrides`` are dotted config fields
    given with ``__`` for the dots (``train__epochs=5``)."""
    values = part_values(parts)
    if name is None:
        name = "/".join([*values, f"seed={seed}"])
    return {"name": name, "parts": parts,
            "overrides": {"seed": int(seed), **{k.replace("__", "."): v for k, v in overrides.items()}},
            "category": category or ("distillation" if teacher else "training"), "teacher": teacher}


def check_specs(specs: Sequence[Mapping]) -> None:
    """Raise ``SweepError`` for a spec with a missing key, a repeated name, an unknown teacher,
    a category that does not match its teacher, or a cycle of teachers."""
    names = set()
    for item in specs:
        missing = {"name", "parts"} - set(item)
        if missing:
            raise SweepError(f"run spec {dict(item)!r}: missing {', '.join(sorted(missing))}")
        if item["name"] in names:
            raise SweepError(f"run spec {item['name']!r}: the name is used twice in the sweep")
        names.add(item["name"])
    for item in specs:
        teacher, category = item.get("teacher"), item.get("category") or "training"
        if category not in config_lib.CATEGORIES:
            raise SweepError(f"run spec {item['name']!r}: category {category!r} is not one of "
                             f"{config_lib.CATEGORIES}")
        if teacher is not None and teacher not in names:
            raise SweepError(f"run spec {item['name']!r}: teacher {teacher!r} is not a run of this sweep")
        if teacher == item["name"]:
            raise SweepError(f"run spec {item['name']!r}: a run cannot be its own teacher")
        if (teacher is not None) != (category == "distillation"):
            raise SweepError(f"run spec {item['name']!r}: category {category!r} "
                             + ("needs a teacher" if teacher is None else f"with teacher {teacher!r}; "
                                "a run with a teacher is a distillation run"))


