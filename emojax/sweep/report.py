"""A sweep's results table: per config, mean and standard deviation over seeds of dev / test
accuracy and weighted F1 (:func:`aggregate`, :func:`format_report`, :func:`write_report`).

A run's status is its :class:`~emojax.sweep.execution.Outcome`'s: a failed run carries its error
(for a subprocess or a SLURM job, the last line of its log, and the log's path); a run the sweep
stopped (``stopped``: interrupted, or ended by a signal) carries none, as it did not fail and
resumes at the next launch (a SLURM job's carries why it stopped: its time limit, a cancel)."""
from __future__ import annotations

import json
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np

from emojax import config as config_lib
from emojax.files import read_json_object, write_text_atomic
from emojax.sweep.execution import Outcome
from emojax.sweep.planning import Run
from emojax.sweep.specs import OK

METRICS = ("accuracy", "weighted_f1")
SPLITS = ("dev", "test")


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


def read_minutes(run_dir: pathlib.Path) -> Optional[float]:
    """The minutes a run spent on its features and epochs (``progress.json``'s history: each
    epoch's ``seconds`` and the first epoch's ``feature_seconds``), or None before its first epoch.
    Compiling counts; starting the process, loading the data and scoring the test split do not."""
    history = (read_json_object(pathlib.Path(run_dir) / "progress.json") or {}).get("history")
    if not history:
        return None
    return sum(float(row.get("seconds", 0.0)) + float(row.get("feature_seconds") or 0.0) for row in history) / 60


def collect(runs: Sequence[Run], outcomes: Optional[Mapping[str, Outcome]] = None) -> list[dict]:
    """One record per run: name, seed, config label and group, status, error and scores."""
    outcomes = outcomes or {}
    records = []
    for run in runs:
        outcome = outcomes.get(run.name) or Outcome(run.status())
        records.append({
            "name": run.name, "seed": run.seed, "label": run.config_label, "category": run.category,
            "hash": config_lib.config_hash(run.cfg), "teacher": run.teacher, "run_dir": str(run.run_dir),
            "status": outcome.status, "error": outcome.error, "log": outcome.log, "job": outcome.job,
            "scores": read_scores(run.run_dir) if outcome.status in OK else None,
            "minutes": read_minutes(run.run_dir) if outcome.status in OK else None,
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
    standard deviation of each split's accuracy and weighted F1, and of the runs' training
    minutes (``minutes``, :func:`read_minutes`)."""
    groups: dict[tuple, dict] = {}
    for record in records:
        key = (record["category"], record["hash"])
        group = groups.setdefault(key, {"label": record["label"], "category": record["category"],
                                        "hash": record["hash"], "seeds": [], "runs": 0, "scored": 0,
                                        "notes": [], "_values": {}, "_minutes": []})
        group["runs"] += 1
        group["seeds"].append(record["seed"])
        scores = record.get("scores")
        if scores:
            group["scored"] += 1
            if record.get("minutes") is not None:
                group["_minutes"].append(record["minutes"])
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
        group["minutes"] = _stats(group.pop("_minutes"))
        for split in SPLITS:
            group[split] = {metric: _stats(values.get((split, metric), [])) for metric in METRICS}
        out.append(group)
    return out


def _cell(stats: Optional[dict]) -> str:
    if not stats:
        return "-"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def _minutes_cell(stats: Optional[dict]) -> str:
    return "-" if not stats else f"{stats['mean']:.1f}"


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
    lines.append(f"{len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "  ")
    if "stopped" in counts:
        lines.append("Stopped runs were interrupted by a signal (the sweep's or their own); starting the sweep "
                     "again resumes them from their last finished epoch.  ")
    lines += ["Scores in %, mean ± standard deviation over seeds (population, ddof=0); the test scores are "
              "those of the epoch selected on dev. Minutes: training, features and compiling included "
              "(mean over seeds).", "",
              "| config | category | seeds | dev acc | dev wF1 | test acc | test wF1 | minutes | notes |",
              "|---|---|---|---|---|---|---|---:|---|"]
    for group in groups:
        seeds = ",".join(str(s) for s in group["seeds"])
        lines.append(f"| {_escape(group['label'])} | {group['category']} | {seeds} ({group['scored']}/{group['runs']}) "
                     f"| {_cell(group['dev']['accuracy'])} | {_cell(group['dev']['weighted_f1'])} "
                     f"| {_cell(group['test']['accuracy'])} | {_cell(group['test']['weighted_f1'])} "
                     f"| {_minutes_cell(group.get('minutes'))} | {_escape('; '.join(group['notes']))} |")
    lines += ["", "## Runs", "",
              "| run | status | dev acc | dev wF1 | test acc | test wF1 | minutes | run directory / error |",
              "|---|---|---|---|---|---|---:|---|"]
    for record in records:
        scores = record.get("scores") or {}
        cells = []
        for split in SPLITS:
            for metric in METRICS:
                value = (scores.get(split) or {}).get(metric)
                cells.append("-" if value is None else f"{100 * value:.2f}")
        minutes = record.get("minutes")
        cells.append("-" if minutes is None else f"{minutes:.1f}")
        where = record.get("error") or record.get("run_dir") or ""
        if record.get("error") and record.get("log") and record["log"] not in where:
            where += f" (log {record['log']})"
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
