"""A sweep's specs composed into checked, placed configs, teachers before their students
(:func:`plan`, :func:`format_plan`)."""
from __future__ import annotations

import ast
import dataclasses
import pathlib
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence


from emojax import config as config_lib
from emojax.sweep.specs import SweepError, check_specs
from emojax.training.plan import validate_config


def dataset_folder(cfg) -> str:
    """The folder name of a freshly composed config's dataset: that of its default path
    (``datasets/MELD`` -> ``MELD``)."""
    return pathlib.PurePath(cfg.dataset.path).name


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["train.epochs=5", ...]`` -> ``{"train.epochs": "5", ...}`` (values parsed on use)."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        out[key.strip()] = value
    return out


def _coerce(key: str, value: Any, current: Any) -> Any:
    """``value`` in the type of the field's ``current`` value; strings (from the command line)
    are parsed."""
    if isinstance(value, str) and not isinstance(current, str):
        text = value.strip()
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                return text.lower() in ("true", "1")
            if isinstance(current, int):
                return int(text)
            if isinstance(current, float):
                return float(text)
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SweepError(f"{key}={value!r}: not a {type(current).__name__}") from None
    if isinstance(current, bool) != isinstance(value, bool):
        raise SweepError(f"{key}={value!r}: expected a {type(current).__name__}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if current is not None and not isinstance(value, type(current)) and not (
            isinstance(current, (int, float)) and isinstance(value, (int, float))):
        raise SweepError(f"{key}={value!r}: expected a {type(current).__name__}, got a {type(value).__name__}")
    return value


def set_field(cfg, key: str, value: Any) -> bool:
    """Set the dotted field ``key`` of ``cfg``; returns False (nothing set) for a field of an
    encoder the run does not have (``encoders.T.model`` on an audio-only run)."""
    *path, last = key.split(".")
    node = cfg
    for depth, part in enumerate(path):
        if part not in node:
            if depth == 1 and path[0] == "encoders":
                return False
            raise SweepError(f"{key}: the run config has no field {'.'.join(path[:depth + 1])}")
        node = node[part]
    if last not in node:
        if len(path) == 1 and path[0] == "encoders":
            return False
        raise SweepError(f"{key}: the run config has no such field")
    try:
        node[last] = _coerce(key, value, node[last])
    except TypeError as err:
        raise SweepError(f"{key}={value!r}: {err}") from None
    return True


@dataclasses.dataclass
class Run:
    """One run of a sweep, its config composed and placed."""

    name: str
    parts: str
    category: str
    teacher: Optional[str]
    cfg: Any
    overrides: dict  # the dotted fields set on the composed parts, in order (for the launcher)
    run_dir: pathlib.Path

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def label(self) -> str:
        return config_lib.run_label(self.cfg)

    @property
    def config_label(self) -> str:
        """The run's label without its seed: what the seeds of one config share."""
        return self.label.rsplit(" seed=", 1)[0]

    @property
    def group(self) -> tuple[str, str]:
        return self.category, config_lib.config_hash(self.cfg)

    def status(self) -> str:
        return run_status(self.run_dir)


def run_status(run_dir: pathlib.Path) -> str:
    """``finished`` (results.json), ``partial`` (started: resumes from progress.json) or ``new``."""
    run_dir = pathlib.Path(run_dir)
    if (run_dir / "results.json").exists():
        return "finished"
    if (run_dir / "progress.json").exists() or run_dir.exists():
        return "partial"
    return "new"


def build_run(item: Mapping, workdir, data_root, overrides: Optional[Mapping[str, Any]] = None, *,
              compose: Callable[[str], Any]) -> Run:
    """Compose (``compose(item["parts"])``), override, validate and place one spec."""
    name = item["name"]
    try:
        cfg = compose(item["parts"])
    except config_lib.ConfigError as err:
        raise SweepError(f"run {name!r}: {err}") from None
    applied: dict[str, Any] = {}
    fields = [("dataset.path", str(pathlib.Path(data_root) / dataset_folder(cfg))),
              *dict(item.get("overrides") or {}).items(), *dict(overrides or {}).items()]
    for key, value in fields:
        try:
            if set_field(cfg, key, value):
                applied[key] = _get(cfg, key)
        except SweepError as err:
            raise SweepError(f"run {name!r}: {err}") from None
    try:
        validate_config(cfg)
    except config_lib.ConfigError as err:
        raise SweepError(f"run {name!r}: {err}") from None
    category = item.get("category") or "training"
    distils = "dist" in cfg.loss.extras
    if distils != (item.get("teacher") is not None):
        raise SweepError(f"run {name!r}: " + ("the dist loss needs a teacher; give the spec a teacher"
                                              if distils else "a distillation run needs the dist loss "
                                              "(loss=focal+dist)"))
    return Run(name, item["parts"], category, item.get("teacher"), cfg, applied,
               config_lib.run_dir(cfg, workdir, category))


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def plan(specs: Sequence[Mapping], workdir, data_root="datasets", *, compose: Callable[[str], Any],
         overrides: Optional[Mapping[str, Any]] = None, only: Optional[str] = None) -> list[Run]:
    """The runs of ``specs``, teachers before their students (otherwise in the sweep's order).
    ``compose`` turns a spec's ``parts`` into a fresh config (``configs.compose.compose``); it
    raises ``emojax.config.ConfigError`` for an unknown part. ``only`` keeps the runs whose name
    or label contains it, with the teachers they need."""
    check_specs(specs)
    runs = {item["name"]: build_run(item, workdir, data_root, overrides, compose=compose) for item in specs}
    seen: dict[pathlib.Path, str] = {}
    for run in runs.values():
        if run.run_dir in seen:
            raise SweepError(f"runs {seen[run.run_dir]!r} and {run.name!r} are the same run ({run.run_dir}); "
                             "remove one from the sweep")
        seen[run.run_dir] = run.name
    for run in runs.values():
        if run.teacher is not None:
            teacher = runs[run.teacher]
            if teacher.cfg.dataset.name != run.cfg.dataset.name:
                raise SweepError(f"run {run.name!r}: its teacher {teacher.name!r} is trained on "
                                 f"{teacher.cfg.dataset.name}, the student on {run.cfg.dataset.name}")
    wanted = [name for name, run in runs.items() if not only or only in name or only in run.label]
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise SweepError(f"run {name!r}: its teachers form a cycle")
        visiting.add(name)
        if runs[name].teacher is not None:
            visit(runs[name].teacher)
        visiting.discard(name)
        ordered.append(name)

    for name in wanted:
        visit(name)
    return [runs[name] for name in ordered]


def format_plan(runs: Sequence[Run]) -> str:
    """The ordered runs with their status and run directory (the dry run's output)."""
    counts = {s: 0 for s in ("finished", "partial", "new")}
    lines = []
    width = len(str(len(runs)))
    for index, run in enumerate(runs, 1):
        status = run.status()
        counts[status] += 1
        teacher = f"  <- teacher {run.teacher}" if run.teacher else ""
        lines.append(f"{index:>{width}}. [{status}] {run.name} ({run.category}){teacher}")
        lines.append(f"{' ' * width}  {run.run_dir}")
    summary = f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([summary, *lines])


