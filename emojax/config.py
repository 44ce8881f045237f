"""Run configs: validate, hash, label and place runs, save and load them.

A run's config is an ``ml_collections.ConfigDict``. The repository builds one from named parts
(``configs/compose.py``: ``compose("dataset=MELD--E,encoders=T+A+V,loss=focal")``, the same as
``--config=configs/train.py:...`` on the command line); a finished run's is its ``config.json``
(:func:`load_config`). Any field can be changed before the run (``--config.seed=114``, or
``cfg.seed = 114`` in a notebook); :func:`validate` checks the result before any work starts,
naming the key at fault. This module reads finished configs only: it knows no presets.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import pathlib
from typing import Any, Iterator, Optional

import ml_collections

from emojax.data import DatasetError, dataset_kind
from emojax.data.types import DEFAULT_MAX_SECONDS, MODALITIES  # noqa: F401 - the run's default duration cap
from emojax.encoders.families import encoder_problem
from emojax.files import write_bytes_if_changed
from emojax.metrics import HEADLINE_SCORES


class ConfigError(ValueError):
    """A config is unknown, mistyped or impossible; the message names the key."""


# Fields that say where or how often, not what is trained: they stay out of the hash.
_UNHASHED = ("seed", "dataset.path", "dataset.allow_outside_paths", "cache", "progress", "workdir", "train.devices",
             "finetune.remat", "report_to", "composed", "train.keep_state")
# Where a run's curves go besides its files (emojax.training.events): TensorBoard event files, a
# Weights & Biases run (the optional wandb package), or neither.
REPORT_TO = ("tensorboard", "wandb", "none")

CATEGORIES = ("training", "distillation")
# The learning-rate schedules after the warm-up (emojax.training.state.learning_rate_schedule).
SCHEDULES = ("linear", "cosine", "constant")


def modalities(cfg) -> tuple[str, ...]:
    mods = tuple(cfg.modalities.split("+"))
    return tuple(m for m in MODALITIES if m in mods)


# Encoder families with weights that trainable / lora runs can fine-tune.
TUNABLE_FAMILIES = ("bert", "modernbert", "whisper", "wav2vec2", "videomae", "clip")


def tuned_modalities(cfg) -> tuple[str, ...]:
    """The modalities whose encoder a ``trainable`` / ``lora`` run fine-tunes (``finetune.tune``:
    ``all`` = every encoder with weights, or modalities such as ``T`` / ``T+A``, also ``T,A``);
    none when frozen. The one reading of ``finetune.tune`` (:func:`validate` checks it through
    this): raises ``ConfigError`` naming it for a modality the run lacks or an encoder without
    weights."""
    if cfg.mode == "frozen":
        return ()
    tune = str(cfg.finetune.get("tune", "all")).strip()
    if tune == "all":
        return tuple(m for m in modalities(cfg) if cfg.encoders[m].get("family", "bert") in TUNABLE_FAMILIES)
    mods = cfg.modalities.split("+")
    chosen = [m.strip() for m in tune.replace(",", "+").split("+") if m.strip()]
    for m in chosen or [""]:
        if m not in mods:
            raise ConfigError(f"finetune.tune: {tune!r}: {m!r} is not a modality of this run "
                              f"({cfg.modalities}); use all or e.g. {'+'.join(mods)}")
        if cfg.encoders[m].get("family") not in TUNABLE_FAMILIES:
            raise ConfigError(f"finetune.tune: encoders.{m}.family {cfg.encoders[m].family!r} has no weights "
                              f"to fine-tune; choose from {', '.join(TUNABLE_FAMILIES)}")
    return tuple(m for m in modalities(cfg) if m in chosen)


def _finite(value) -> bool:
    """Whether ``value`` is a real, finite number (not NaN, inf, a string or a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one numeric, on/off or choice field of a run config may hold: ``kind`` ``int`` (a whole
    number), ``float`` (a finite number; whole numbers too), ``bool`` (True / False) or ``choice``
    (one of the strings ``choices``); the bounds ``low`` / ``high`` (``None``: none), each included
    unless ``open_low`` / ``open_high``; and ``note``, what a special value means (``0: no cap``)."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""
    choices: tuple[str, ...] = ()

    def allows(self, value) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if not _finite(value):  # NaN compares false with everything: checked first
            return False
        if self.low is not None and not (value > self.low if self.open_low else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def allowed(self) -> str:
        """The allowed values in words: ``a whole number of at least 1``, ``a number in [0, 1)``."""
        if self.kind == "bool":
            text = "True or False"
        elif self.kind == "choice":
            text = f"one of {', '.join(self.choices)}"
        elif self.low is not None and self.high is not None:
            what = "a whole number" if self.kind == "int" else "a number"
            text = (f"{what} in {'(' if self.open_low else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.open_high else ']'}")
        elif self.low is None:
            text = "a whole number" if self.kind == "int" else "a finite number"
        elif self.open_low and self.low == 0:
            text = "a positive whole number" if self.kind == "int" else "a positive number"
        else:
            what = "a whole number" if self.kind == "int" else "a finite number"
            text = f"{what} {'above' if self.open_low else 'of at least'} {_number(self.low)}"
        return f"{text} ({self.note})" if self.note else text

    def check(self, key: str, value) -> None:
        if not self.allows(value):
            raise ConfigError(f"{key}: must be {self.allowed()}, got {value!r}")


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _whole(low: int, high: Optional[int] = None, note: str = "") -> Rule:
    return Rule("int", low, high, note=note)


def _real(low: float, high: Optional[float] = None, *, open_low: bool = False, open_high: bool = False,
          note: str = "") -> Rule:
    return Rule("float", low, high, open_low=open_low, open_high=open_high, note=note)


_FLAG = Rule("bool")
_POSITIVE = _real(0, open_low=True)
_PROBABILITY = _real(0, 1, open_high=True)  # a dropout rate: 1 would drop everything

# Every numeric and on/off field of a run config, by dotted key (``*``: any one name, such as an
# extra loss), and what it may hold; :func:`validate` checks each field a config has before any
# work. The ranges are those the code can run: a field set here that a part or a new default adds
# must get its rule (tests/test_config.py walks every preset for one).
RULES: dict[str, Rule] = {
    # seeds from 2**32 on would repeat smaller ones (JAX keeps 32 bits of an int seed)
    "seed": _whole(0, 2**32 - 1),
    "progress": _FLAG,
    "report_to": Rule("choice", choices=REPORT_TO),
    "modality_dropout": _real(0, 0.5, open_high=True),
    "dataset.max_seconds": _real(0, note="0: no cap"),
    "dataset.generate": _FLAG,
    "dataset.allow_outside_paths": _FLAG,
    "encoders.T.max_length": _whole(2, note="tokens, the start and end tokens included"),
    "encoders.T.context_turns": _whole(-1, note="-1: the whole dialogue so far"),
    "encoders.T.prompt": _FLAG,
    "finetune.lr": _real(0, note="positive when mode trains the encoders"),
    "finetune.remat": _FLAG,
    "finetune.tune_layers": _whole(0, note="0: every layer"),
    "finetune.lora.rank": _whole(1),
    "finetune.lora.alpha": _POSITIVE,
    "finetune.lora.dropout": _PROBABILITY,
    "model.hidden_dim": _whole(1),
    "model.dropout": _PROBABILITY,
    "model.context.layers": _whole(1),
    "model.context.heads": _whole(1),
    "model.context.dim": _whole(1),
    "model.context.dropout": _PROBABILITY,
    "model.context.speakers": _whole(0, note="0: no speaker embeddings"),
    "model.context.causal": _FLAG,
    "fusion.out_features": _whole(1),
    "fusion.depth": _whole(1),
    "fusion.dropout": _PROBABILITY,
    "fusion.hidden": _whole(1),
    "fusion.rank": _whole(1),
    "fusion.num_heads": _whole(1),
    "fusion.private_dim": _whole(1),
    "fusion.shared_dim": _whole(1),
    "fusion.alpha": _real(0),
    "fusion.project_inputs": _whole(0, note="0: the features as they are"),
    "fusion.min_modalities": _whole(1, len(MODALITIES)),
    "fusion.use_cross_attn": _FLAG,
    "fusion.batch_as_sequence": _FLAG,
    "fusion.residual": _FLAG,
    "fusion.append_one": _FLAG,
    "fusion.noisy": _FLAG,
    "classifier.experts": _whole(1),
    "classifier.top_k": _whole(0, note="0: every expert"),
    "classifier.balance_weight": _real(0),
    "loss.extras.*.weight": _real(0),
    "loss.extras.*.temperature": _POSITIVE,
    "loss.extras.spcl.pool_size": _whole(1),
    "loss.extras.spcl.support_set_size": _whole(1),
    "loss.extras.spcl.decoupled": _FLAG,
    "loss.extras.apcl.alpha": _real(0),
    "loss.extras.apcl.gamma": _real(0, 1),
    "loss.extras.scl.hidden_dim": _whole(1),
    "loss.extras.frl.alpha": _real(0),
    "loss.extras.dist.beta": _real(0),
    "loss.extras.dist.gamma": _real(0),
    "train.batch_size": _whole(1),
    "train.epochs": _whole(1),
    "train.eval_batch_size": _whole(1),
    "train.keep_epochs": _whole(1),
    "train.keep_state": _FLAG,
    "train.patience": _whole(1),
    "train.lr": _POSITIVE,
    "train.weight_decay": _real(0),
    "train.warmup_ratio": _real(0, 1),
    "train.grad_accum_steps": _whole(1, note="batches per optimizer update"),
    "train.min_delta": _real(0, 1, open_high=True, note="on the select_metric's scale"),
    "loss.label_smoothing": _PROBABILITY,
    "train.clip_norm": _POSITIVE,
    "train.devices": _whole(0, note="0: every local device"),
    "cache.host_bytes": _whole(0),
    "cache.device_bytes": _whole(0),
    "cache.media_workers": _whole(0, note="0: one thread per core"),
}


def rule(key: str) -> Optional[Rule]:
    """The :data:`RULES` entry of the dotted ``key`` (``None``: not a numeric field)."""
    if key in RULES:
        return RULES[key]
    parts = key.split(".")
    for pattern, found in RULES.items():
        names = pattern.split(".")
        if len(names) == len(parts) and all(n in ("*", p) for n, p in zip(names, parts)):
            return found
    return None


def leaves(cfg) -> Iterator[tuple[str, Any]]:
    """Every field of ``cfg`` that holds a value, as ``(dotted key, value)``."""
    def walk(prefix: str, node) -> Iterator[tuple[str, Any]]:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                yield from walk(dotted + ".", value)
            else:
                yield dotted, value

    yield from walk("", _plain(cfg))


def check_values(cfg) -> None:
    """Raise ``ConfigError`` naming the first field that :data:`RULES` does not allow."""
    for key, value in leaves(cfg):
        found = rule(key)
        if found is not None:
            found.check(key, value)
    classifier = cfg.get("classifier") or {}
    experts, top_k = classifier.get("experts", 1), classifier.get("top_k", 0)
    if classifier.get("name") == "linear" and experts != 1:
        raise ConfigError(f"classifier.experts: must be 1 for the linear classifier, got {experts!r}; "
                          "choose experts=4xE or another mixture")
    if classifier.get("name") == "sparse-moe" and not 1 <= top_k <= experts:
        raise ConfigError(f"classifier.top_k: must be a whole number in [1, {experts}] (classifier.experts) for "
                          f"a sparse mixture, got {top_k!r}")
    if top_k > experts:
        raise ConfigError(f"classifier.top_k: must be a whole number in [0, {experts}] (classifier.experts), "
                          f"got {top_k!r}")
    spcl = ((cfg.get("loss") or {}).get("extras") or {}).get("spcl") or {}
    if spcl.get("support_set_size", 64) > spcl.get("pool_size", 512):
        raise ConfigError(f"loss.extras.spcl.support_set_size: must be a whole number in [1, "
                          f"{spcl.get('pool_size', 512)}] (loss.extras.spcl.pool_size), "
                          f"got {spcl.get('support_set_size')!r}")


def validate(cfg) -> None:
    """Raise ``ConfigError`` naming the key for an impossible or inconsistent config: every
    numeric field first (:func:`check_values`), then the names and their combinations; the
    ``encoders`` and ``dataset`` sections against their registries (:mod:`emojax.encoders.families`,
    :mod:`emojax.data`). The loss section and the context head are checked by the model's own
    registries: :func:`emojax.training.plan.validate_config` checks a whole run config."""
    check_values(cfg)
    if cfg.get("report_to", "tensorboard") == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to: wandb is not installed; pip install wandb (or pip install 'emojax[wandb]'), "
                          "or choose report_to=tensorboard")
    mods = cfg.modalities.split("+")
    bad = [m for m in mods if m not in MODALITIES]
    if bad or len(set(mods)) != len(mods):
        raise ConfigError(f"modalities: {cfg.modalities!r} must be distinct members of {MODALITIES} joined by '+'")
    missing = [m for m in mods if m not in cfg.encoders]
    if missing:
        raise ConfigError(f"encoders: no encoder configured for modality {missing[0]!r} "
                          f"(set encoders.{missing[0]} or choose encoders={cfg.modalities})")
    extra = [m for m in cfg.encoders if m not in mods]
    if extra:
        raise ConfigError(f"encoders.{extra[0]}: modality {extra[0]!r} is not in modalities={cfg.modalities!r}")
    for m in mods:  # each family and pooling, against the encoders' registry (plain data)
        problem = encoder_problem(m, cfg.encoders[m])
        if problem:
            raise ConfigError(problem)
    fusion_min = int(cfg.fusion.get("min_modalities", 1))
    if len(mods) < fusion_min:
        raise ConfigError(f"fusion: {cfg.fusion.preset!r} fuses at least {fusion_min} modalities, "
                          f"but encoders={cfg.modalities!r} has {len(mods)}")
    if cfg.mode not in ("frozen", "trainable", "lora"):
        raise ConfigError(f"mode: {cfg.mode!r} is not one of frozen, trainable, lora")
    if cfg.precision not in ("float32", "bfloat16"):
        raise ConfigError(f"precision: {cfg.precision!r} is not float32 or bfloat16")
    try:
        targets = dataset_kind(cfg.dataset.kind).targets
    except DatasetError as err:
        raise ConfigError(str(err)) from None
    if cfg.dataset.target not in targets:
        raise ConfigError(f"dataset.target: {cfg.dataset.target!r} is not {' or '.join(targets)} "
                          f"(the targets of dataset.kind {cfg.dataset.kind!r})")
    if cfg.train.select_metric not in HEADLINE_SCORES:  # the dev scores an epoch may be selected on
        raise ConfigError(f"train.select_metric: {cfg.train.select_metric!r} is not one of "
                          f"{', '.join(HEADLINE_SCORES)}")
    if cfg.train.get("schedule", "linear") not in SCHEDULES:
        raise ConfigError(f"train.schedule: {cfg.train.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.train.get("grad_accum_steps", 1) > 1 and context_label(cfg):
        # Dialogue batches hold different numbers of real rows: their mean gradients do not add
        # up to one batch's, so accumulating them would weigh the rows unevenly.
        raise ConfigError(f"train.grad_accum_steps: {cfg.train.grad_accum_steps} is not supported with a dialogue "
                          "context head (model.context), which trains on batches of whole dialogues; set it to 1")
    if cfg.mode != "frozen":
        # trainable / lora fine-tune the encoders finetune.tune names inside the train step
        # (emojax.training.finetune); the others stay frozen. tuned_modalities checks the names.
        if not tuned_modalities(cfg):
            raise ConfigError(f"mode: {cfg.mode!r} fine-tunes encoders with weights, but encoders={cfg.modalities!r} "
                              "has none (classic audio / video features); use mode=frozen")
        if not cfg.finetune.lr > 0:
            raise ConfigError(f"finetune.lr: must be a positive number when mode={cfg.mode!r}, got {cfg.finetune.lr!r}")
        if cfg.mode == "lora" and not str(cfg.finetune.lora.targets).strip():
            raise ConfigError("finetune.lora.targets: empty; e.g. query,key,value,dense")


def _plain(cfg) -> Any:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg


def _drop(tree: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for key in path:
        tree = tree.get(key, {})
    tree.pop(last, None)


def config_hash(cfg) -> str:
    """Stable 8-hex-digit hash of everything that changes what is trained (not seed or paths).

    Every other field is hashed as it is, defaults included: renaming a field or adding one
    changes the hash of every run, so it comes with a new run format and a migration step that
    moves the runs written before it (:mod:`emojax.runs.format`)."""
    tree = copy.deepcopy(_plain(cfg))
    for dotted in _UNHASHED:
        _drop(tree, dotted)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def loss_label(cfg) -> str:
    names = [cfg.loss.classification] + sorted(cfg.loss.extras.keys())
    if cfg.loss.get("combine", "sum") != "sum":
        names.append(cfg.loss.combine)
    return "+".join(names)


def num_experts(cfg) -> int:
    return int(cfg.classifier.get("experts", 1))


def text_label(cfg) -> str:
    """The text path in a few characters, e.g. ``T[pool=mask,ctx=all,prompt,len=128]``; empty
    for a run without text. Runs that differ only in how the text is pooled, how many turns of
    context it sees, the prompt or the token budget score very differently, so their labels
    (``info``, sweep reports, results.json) must tell them apart."""
    if "T" not in modalities(cfg) or "T" not in cfg.encoders:
        return ""
    text = cfg.encoders.T
    turns = int(text.get("context_turns", 0))
    parts = [f"pool={text.get('pooling', 'default')}", f"ctx={'all' if turns < 0 else turns}"]
    if text.get("prompt", False):
        parts.append("prompt")
    parts.append(f"len={text.get('max_length', '?')}")
    return f"T[{','.join(parts)}]"


def context_label(cfg) -> str:
    """The dialogue context head (``model.context``, :mod:`emojax.model.dialogue`), e.g.
    ``ctx[gru,causal,1x256]``; empty for a run without one."""
    spec = (cfg.get("model") or {}).get("context") or {}
    if not spec or spec.get("kind", "transformer") == "none":
        return ""
    return (f"ctx[{spec.get('kind', 'transformer')}{',causal' if spec.get('causal') else ''},"
            f"{spec.get('layers', 2)}x{spec.get('dim', 256)}]")


# Fields the label names already (its parts, the loss, the text path, the context head) or that
# only say how the config was composed: never listed again among its overrides.
_LABELLED = ("parts", "dataset.name", "modalities", "mode", "fusion.preset", "classifier.preset", "loss.preset",
             "loss.classification", "loss.combine", "encoders.T.pooling", "encoders.T.context_turns",
             "encoders.T.prompt", "encoders.T.max_length", "model.context.kind", "model.context.causal",
             "model.context.layers", "model.context.dim")


def _hashed_leaves(tree) -> dict[str, Any]:
    """Dotted key -> value of every field :func:`config_hash` hashes."""
    plain = copy.deepcopy(_plain(tree))
    for dotted in _UNHASHED:
        _drop(plain, dotted)
    return dict(leaves(plain))


def composed_record(tree) -> str:
    """The ``composed`` field of a config (``configs/compose.py`` sets it from its parts, before
    any override): its hashed fields as JSON, the reference :func:`overrides` compares with."""
    return json.dumps(_hashed_leaves(tree), sort_keys=True, separators=(",", ":"), default=str)


def overrides(cfg) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every hashed field of ``cfg`` that differs from the config its
    parts composed (its ``composed`` field), in key order: the settings a command line, a sweep or
    a notebook changed (``train.epochs``, ``train.lr``, ``precision``, ...), except those the label
    names anyway. A config without the record (built by hand, or by an emojax before it) has none."""
    record = cfg.get("composed") if hasattr(cfg, "get") else None
    if not record:
        return []
    try:
        reference = json.loads(record)
    except ValueError as err:
        raise ConfigError(f"composed: not the JSON record of a composed config ({err})") from None
    labelled = lambda key: any(key == k or key.startswith(k + ".") for k in _LABELLED)  # noqa: E731
    return [(key, value) for key, value in sorted(_hashed_leaves(cfg).items())
            if not labelled(key) and (key not in reference or reference[key] != json.loads(json.dumps(
                value, default=str)))]


def _shown(value) -> str:
    """A value as a label shows it: a path or hub id by its last part, lists without spaces."""
    if isinstance(value, str):
        return value.rstrip("/").rsplit("/", 1)[-1] or value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def run_label(cfg) -> str:
    """Human-readable one-line description of a run: its parts, loss, text path and context head,
    then every override of a hashed field (:func:`overrides`, as ``key=value``; a path by its last
    part), then the seed: two configs of the same parts that train differently have different
    labels, and the label without `` seed=...`` names one config."""
    text = " ".join(filter(None, (text_label(cfg), context_label(cfg))))
    changed = " ".join(f"{key}={_shown(value)}" for key, value in overrides(cfg))
    return (f"{cfg.dataset.name} {cfg.modalities} {cfg.fusion.preset} {loss_label(cfg)} "
            f"{cfg.classifier.preset} {cfg.mode}{' ' + text if text else ''}{' ' + changed if changed else ''} "
            f"seed={cfg.seed}")


def run_dir(cfg, workdir: str | pathlib.Path, category: str = "training") -> pathlib.Path:
    """``{workdir}/checkpoints/{category}/{dataset}/{mode}--{batch}--{losses}/{N}xE--{modalities}/{hash}--{seed}``."""
    if category not in CATEGORIES:
        raise ConfigError(f"run category {category!r} is not one of {CATEGORIES}")
    return (pathlib.Path(workdir) / "checkpoints" / category / cfg.dataset.name
            / f"{cfg.mode}--{cfg.train.batch_size}--{loss_label(cfg)}"
            / f"{num_experts(cfg)}xE--{cfg.modalities}"
            / f"{config_hash(cfg)}--{cfg.seed}")


def save_config(cfg, path: str | pathlib.Path) -> None:
    """Write ``cfg`` as JSON to ``path`` atomically; a file that already holds it is left as it is
    (a run rewrites its config at every start, and a full disk must not truncate it)."""
    write_bytes_if_changed(path, json.dumps(_plain(cfg), indent=2, sort_keys=True, default=str).encode())


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(path)
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the run config ({err})") from err
