"""Sweeps: many runs described as data, ordered, run (one by one or several at once) and tabulated.

A sweep is a list of run specs, plain dicts (the repository's sweeps are the ``get_sweep()``
functions of ``configs/experiments/``, loaded by ``configs.experiments.load_sweep``)::

    {"name": "MELD--E/T+A+V/DF-1.0+attn/focal+dist/seed=0",
     "parts": "dataset=MELD--E,encoders=T+A+V,fusion=DF-1.0+attn,loss=focal+dist",
     "overrides": {"seed": 0},                  # dotted config fields
     "category": "distillation",                # or "training"
     "teacher": "MELD--E/T/focal/seed=0"}       # the name of another spec, or None

:func:`spec` builds one with a readable name. From the specs, :func:`plan` composes every config
with the ``compose`` it is given (``parts`` string -> ``ConfigDict``; the repository's is
``configs.compose.compose``), sets ``dataset.path`` = ``data_root/<the dataset's folder>``, then
the spec's overrides, then the command line's, checks it, places each run
(``emojax.config.run_dir``) and orders them so every teacher comes before its students.
:func:`execute` runs them: in this process through ``emojax.training.fit`` (one after another), or
as subprocesses (the ``command`` it is given; ``launch.sweep`` starts ``python -m launch.train``),
N at a time, each pinned to a GPU with ``CUDA_VISIBLE_DEVICES``. A finished run (``results.json``) is
skipped, an interrupted one resumes (``fit`` does that), a failed one is recorded with its error
and its students are skipped with the reason. :func:`aggregate` and :func:`format_report` turn the
runs' ``results.json`` into a table: per config (everything but the seed), the mean and standard
deviation over seeds of dev/test accuracy and weighted F1.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from emojax import config as config_lib
from emojax.files import write_text_atomic

log = logging.getLogger(__name__)

SEEDS = (0, 42, 114)
METRICS = ("accuracy", "weighted_f1")
SPLITS = ("dev", "test")
OK = ("finished", "done")  # a run whose results.json exists: skipped as already finished, or run now


class SweepError(ValueError):
    """A sweep or one of its run specs is unknown or inconsistent; the message names it."""


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
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
        config_lib.validate(cfg)
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


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What became of a run: ``finished`` (already done, skipped), ``done`` (run now),
    ``failed`` (error), ``skipped`` (its teacher did not finish) or ``incomplete`` (stopped
    before finishing; starting the sweep again resumes it)."""

    status: str
    error: Optional[str] = None
    seconds: float = 0.0
    device: Optional[str] = None
    log: Optional[str] = None


def _teacher_problem(run: Run, outcomes: Mapping[str, Outcome], by_name: Mapping[str, Run]) -> Optional[str]:
    """Why ``run`` cannot start yet or at all: None when its teacher is ready, "wait" while the
    teacher has not finished, else the reason it will be skipped."""
    if run.teacher is None:
        return None
    if run.teacher not in by_name:
        return f"teacher {run.teacher} is not among the runs"
    outcome = outcomes.get(run.teacher)
    if outcome is None:
        return "wait"
    if outcome.status in OK:
        return None
    reason = f": {outcome.error}" if outcome.error else ""
    return f"teacher {run.teacher} {outcome.status}{reason}"


def _finish(run: Run, outcome: Outcome) -> Outcome:
    if outcome.status == "done" and not (run.run_dir / "results.json").exists():
        error = outcome.error or f"stopped before finishing (no results.json in {run.run_dir})"
        return dataclasses.replace(outcome, status="incomplete", error=error)
    return outcome


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in name.replace("/", "__"))


def _last_error_line(path: pathlib.Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").replace("\r", "\n").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def execute(runs: Sequence[Run], workdir, *, parallel: int = 1, devices: Optional[Sequence[str]] = None,
            runner: Optional[Callable] = None, command: Optional[Callable] = None,
            env: Optional[Mapping[str, str]] = None, log_dir: Optional[pathlib.Path] = None,
            echo: Callable[[str], None] = print, poll_seconds: float = 0.5) -> dict[str, Outcome]:
    """Run ``runs`` (ordered by :func:`plan`); returns ``{name: Outcome}``.

    With ``parallel`` 1 and no ``devices``, runs go one after another in this process through
    ``runner(cfg, workdir, category=..., teacher=...)`` (default ``emojax.training.fit``). Otherwise
    up to ``parallel`` subprocesses run at once: ``command(run, workdir, teacher_dir)`` is the
    argument list of one (``launch.sweep`` gives ``python -m launch.train`` with the run's parts
    and overrides), started in this process's working directory with its environment plus
    ``env``, and ``CUDA_VISIBLE_DEVICES`` set to the least busy of ``devices`` (default
    ``0..parallel-1``; with more runs than devices, several share one and JAX's memory
    preallocation is turned off); its output goes to ``log_dir/<run>.log``. A student starts once
    its teacher has finished. Interrupted, the subprocesses are stopped.
    """
    if parallel < 1:
        raise SweepError(f"--parallel: {parallel} must be at least 1")
    if parallel == 1 and not devices:
        return _execute_here(runs, workdir, runner=runner, echo=echo)
    if command is None:
        raise SweepError("runs in subprocesses (parallel > 1 or devices) need command(run, workdir, teacher_dir) "
                         "-> argv; python -m launch.sweep passes python -m launch.train, or run with parallel=1")
    devices = [str(d) for d in (devices or range(parallel))]
    return _execute_subprocesses(runs, workdir, parallel=parallel, devices=devices, command=command,
                                 env=dict(env or {}),
                                 log_dir=pathlib.Path(log_dir or pathlib.Path(workdir) / "sweeps" / "logs"),
                                 echo=echo, poll_seconds=poll_seconds)


def _execute_here(runs, workdir, *, runner, echo) -> dict[str, Outcome]:
    if runner is None:
        # Imported on use: planning and listing sweeps stay free of JAX.
        from emojax.training.loop import fit as runner
    by_name = {run.name: run for run in runs}
    outcomes: dict[str, Outcome] = {}
    total = len(runs)
    for index, run in enumerate(runs, 1):
        head = f"[{index}/{total}] {run.name}"
        problem = _teacher_problem(run, outcomes, by_name)
        if problem not in (None, "wait"):
            outcomes[run.name] = Outcome("skipped", problem)
            echo(f"{head}: skipped ({problem})")
            continue
        status = run.status()
        if status == "finished":
            outcomes[run.name] = Outcome("finished")
            echo(f"{head}: finished already, skipped")
            continue
        teacher_dir = by_name[run.teacher].run_dir if run.teacher else None
        echo(f"{head}: {'resuming' if status == 'partial' else 'running'} {run.label} -> {run.run_dir}")
        start = time.perf_counter()
        kwargs = {"category": run.category}
        if teacher_dir is not None:
            kwargs["teacher"] = teacher_dir
        try:
            runner(run.cfg.copy_and_resolve_references(), workdir, **kwargs)
        except Exception as err:  # a failed run is recorded; the sweep goes on
            log.debug("run %s failed:\n%s", run.name, traceback.format_exc())
            outcome = Outcome("failed", f"{type(err).__name__}: {err}", time.perf_counter() - start)
        else:
            outcome = _finish(run, Outcome("done", seconds=time.perf_counter() - start))
        outcomes[run.name] = outcome
        echo(f"{head}: {outcome.status} ({outcome.seconds:.1f}s)" + (f": {outcome.error}" if outcome.error else ""))
    return outcomes


def _execute_subprocesses(runs, workdir, *, parallel, devices, command, env, log_dir, echo,
                          poll_seconds) -> dict[str, Outcome]:
    by_name = {run.name: run for run in runs}
    outcomes: dict[str, Outcome] = {}
    pending = list(runs)
    running: dict[str, tuple[subprocess.Popen, str, pathlib.Path, float, Any]] = {}
    load = {device: 0 for device in devices}
    total, started = len(runs), 0
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        while pending or running:
            # Settle what needs no process: finished runs, students of failed teachers.
            for run in list(pending):
                problem = _teacher_problem(run, outcomes, by_name)
                if problem not in (None, "wait"):
                    outcomes[run.name] = Outcome("skipped", problem)
                    echo(f"{run.name}: skipped ({problem})")
                    pending.remove(run)
                elif problem is None and run.status() == "finished":
                    outcomes[run.name] = Outcome("finished")
                    echo(f"{run.name}: finished already, skipped")
                    pending.remove(run)
            # Start what is ready, in order, on the least busy device.
            for run in list(pending):
                if len(running) >= parallel:
                    break
                if _teacher_problem(run, outcomes, by_name) is not None:
                    continue
                device = min(devices, key=lambda d: (load[d], devices.index(d)))
                teacher_dir = by_name[run.teacher].run_dir if run.teacher else None
                log_path = log_dir / f"{_slug(run.name)}.log"
                handle = open(log_path, "a")
                child_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": device}
                if parallel > len(devices):
                    # Runs share a GPU: JAX must not grab most of its memory for the first one.
                    child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
                process = subprocess.Popen(command(run, workdir, teacher_dir), env=child_env,
                                           stdout=handle, stderr=subprocess.STDOUT)
                started += 1
                load[device] += 1
                running[run.name] = (process, device, log_path, time.perf_counter(), handle)
                pending.remove(run)
                echo(f"[{started}/{total}] {run.name}: {'resuming' if run.status() == 'partial' else 'running'} "
                     f"on device {device} (pid {process.pid}, log {log_path})")
            # Collect what ended.
            for name, (process, device, log_path, start, handle) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                handle.close()
                load[device] -= 1
                del running[name]
                seconds = time.perf_counter() - start
                if code == 0:
                    outcome = _finish(by_name[name], Outcome("done", seconds=seconds, device=device,
                                                             log=str(log_path)))
                else:
                    error = _last_error_line(log_path) or f"exit status {code}"
                    outcome = Outcome("failed", f"{error} (exit status {code}; log {log_path})", seconds,
                                      device, str(log_path))
                outcomes[name] = outcome
                echo(f"{name}: {outcome.status} ({seconds:.1f}s)" + (f": {outcome.error}" if outcome.error else ""))
            if pending and not running and all(_teacher_problem(r, outcomes, by_name) == "wait" for r in pending):
                raise SweepError(f"runs {[r.name for r in pending]} wait for teachers that never run")
            if running:
                time.sleep(poll_seconds)
    finally:
        for name, (process, _, _, _, handle) in running.items():  # interrupted: stop our own children
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            handle.close()
    return outcomes


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
def read_scores(run_dir: pathlib.Path) -> Optional[dict]:
    """``{"dev": {"accuracy", "weighted_f1"}, "test": {...}}`` from a finished run's results.json
    (a split that was not scored is None), or None without one."""
    path = pathlib.Path(run_dir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    scores = {}
    for split in SPLITS:
        entry = results.get(split) or {}
        scores[split] = ({m: float(entry[m]) for m in METRICS}
                         if entry.get("scored", True) and all(m in entry for m in METRICS) else None)
    return scores


def collect(runs: Sequence[Run], outcomes: Optional[Mapping[str, Outcome]] = None) -> list[dict]:
    """One record per run: name, seed, config label and group, status, error and scores."""
    outcomes = outcomes or {}
    records = []
    for run in runs:
        outcome = outcomes.get(run.name) or Outcome(run.status())
        records.append({
            "name": run.name, "seed": run.seed, "label": run.config_label, "category": run.category,
            "hash": config_lib.config_hash(run.cfg), "teacher": run.teacher, "run_dir": str(run.run_dir),
            "status": outcome.status, "error": outcome.error, "log": outcome.log,
            "scores": read_scores(run.run_dir) if outcome.status in OK else None,
        })
    return records


def _stats(values: list[float]) -> Optional[dict]:
    if not values:
        return None
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": len(values), "values": list(values)}


def aggregate(records: Sequence[Mapping]) -> list[dict]:
    """Per config (category + config hash: everything but the seed), in first-seen order: the
    seeds, the runs' statuses and, over the runs with scores, the mean and (population, ddof=0)
    standard deviation of each split's accuracy and weighted F1."""
    groups: dict[tuple, dict] = {}
    for record in records:
        key = (record["category"], record["hash"])
        group = groups.setdefault(key, {"label": record["label"], "category": record["category"],
                                        "hash": record["hash"], "seeds": [], "runs": 0, "scored": 0,
                                        "notes": [], "_values": {}})
        group["runs"] += 1
        group["seeds"].append(record["seed"])
        scores = record.get("scores")
        if scores:
            group["scored"] += 1
            for split in SPLITS:
                for metric in METRICS:
                    if scores.get(split) is not None:
                        group["_values"].setdefault((split, metric), []).append(scores[split][metric])
        elif record["status"] not in OK:
            group["notes"].append(f"seed {record['seed']} {record['status']}"
                                  + (f": {record['error']}" if record.get("error") else ""))
    out = []
    for group in groups.values():
        values = group.pop("_values")
        for split in SPLITS:
            group[split] = {metric: _stats(values.get((split, metric), [])) for metric in METRICS}
        out.append(group)
    return out


def _cell(stats: Optional[dict]) -> str:
    if not stats:
        return "-"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_report(name: str, groups: Sequence[Mapping], records: Sequence[Mapping], *,
                  workdir: Optional[str] = None) -> str:
    """The results table (markdown): one row per config, then the runs one by one."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    lines = [f"# Sweep {name}", ""]
    if workdir is not None:
        lines.append(f"workdir: `{workdir}`  ")
    lines += [f"{len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "  ",
              "Scores in %, mean ± standard deviation over seeds (population, ddof=0); the test scores are "
              "those of the epoch selected on dev.", "",
              "| config | category | seeds | dev acc | dev wF1 | test acc | test wF1 | notes |",
              "|---|---|---|---|---|---|---|---|"]
    for group in groups:
        seeds = ",".join(str(s) for s in group["seeds"])
        lines.append(f"| {_escape(group['label'])} | {group['category']} | {seeds} ({group['scored']}/{group['runs']}) "
                     f"| {_cell(group['dev']['accuracy'])} | {_cell(group['dev']['weighted_f1'])} "
                     f"| {_cell(group['test']['accuracy'])} | {_cell(group['test']['weighted_f1'])} "
                     f"| {_escape('; '.join(group['notes']))} |")
    lines += ["", "## Runs", "", "| run | status | dev acc | dev wF1 | test acc | test wF1 | run directory / error |",
              "|---|---|---|---|---|---|---|"]
    for record in records:
        scores = record.get("scores") or {}
        cells = []
        for split in SPLITS:
            for metric in METRICS:
                value = (scores.get(split) or {}).get(metric)
                cells.append("-" if value is None else f"{100 * value:.2f}")
        where = record.get("error") or record.get("run_dir") or ""
        lines.append(f"| {_escape(record['name'])} | {record['status']} | {' | '.join(cells)} | {_escape(where)} |")
    return "\n".join(lines) + "\n"


def report_paths(name: str, workdir) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"sweep_{name.strip('/').replace('/', '-')}"
    return pathlib.Path(workdir) / f"{stem}.md", pathlib.Path(workdir) / f"{stem}.json"


def write_report(name: str, workdir, runs: Sequence[Run], outcomes: Optional[Mapping[str, Outcome]] = None) -> str:
    """Write ``sweep_<name>.md`` and ``.json`` in ``workdir``; returns the markdown."""
    records = collect(runs, outcomes)
    groups = aggregate(records)
    text = format_report(name, groups, records, workdir=str(workdir))
    md_path, json_path = report_paths(name, workdir)
    write_text_atomic(md_path, text)
    payload = {"sweep": name, "workdir": str(workdir), "std": "population (ddof=0) over seeds",
               "groups": groups, "runs": records}
    write_text_atomic(json_path, json.dumps(payload, indent=2, default=str))
    return text
