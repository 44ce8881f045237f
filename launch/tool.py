r"""Housekeeping for runs, the encoder store and the feature cache.

    python -m launch.tool info --workdir=runs [--sort=dev_wf1] [--filter=MELD]
    python -m launch.tool cache --workdir=runs [--cache_dir=DIR] [--clear=all|NAMESPACE]
    python -m launch.tool gc --workdir=runs [--apply] [--grace_s=600]
    python -m launch.tool create-standalone --run_dir=RUN --output=DIR
    python -m launch.tool extract-encoders --run_dir=RUN --output=DIR
    python -m launch.tool migrate --workdir=runs [--apply]

``info``: one row per run under ``workdir/checkpoints/``: label (with every field set apart from
what its parts compose: ``train.epochs=3``, ``precision=bfloat16``, ...), status, selected epoch,
dev and test accuracy and weighted F1 (percent); unfinished runs show their last epoch. ``--sort`` takes
``dev_wf1`` (default), ``dev_acc``, ``test_wf1``, ``test_acc`` (best first), ``best_epoch``,
``label`` or ``path``; ``--filter`` keeps runs whose label contains the text (any case). ``disk``:
the bytes of the run's own files (encoder links not followed), its training state in brackets.

``cache``: size and entries per encoder namespace of the feature cache (default
``workdir/cache/features``); ``--clear=NAMESPACE`` (or a unique prefix) removes that namespace's
shards, ``--clear=all`` every namespace's and the stored fine-tuning input sets. It deletes only
what emojax wrote (see ``emojax.features.cache``): a folder without the cache's marker
(``.emojax-feature-cache``) that holds anything the cache never writes is refused with one line
naming what it holds, and nothing in it is touched. Before deleting, it prints a line per
namespace (shards, size) and input set, the total, and each file or folder it leaves alone and
why: files it never writes, and temporary files of writers that are running or were modified in
the last hour (a run filling the cache meanwhile keeps working).

``gc``: encoder store entries (``workdir/checkpoints/encoders/``) that no run links to, and the
training state (``state/``, what a run resumes from) of finished runs, whose selected parameters
(``best/``) stay; a dry run unless ``--apply``. Entries younger than ``--grace_s`` are kept (a run
may be linking one now), and so is the state of runs finished since or trained with
``train.keep_state=True``.

``create-standalone``: a self-contained copy of a finished run (config, meta, results, best
parameters, encoder folders) that ``Estimator`` / ``launch.infer --run_dir=DIR`` load.

``extract-encoders``: the run's encoder folders plus ``encoders.cfg`` (``encoders.T.model=PATH``)
and ``encoders.flags`` (for ``launch.train --flagfile=DIR/encoders.flags``).

``migrate``: the runs under ``workdir/checkpoints/`` written by an earlier emojax (an earlier run
format, ``emojax.runs.format``), brought to today's: config in today's names, the run moved to the
directory of its new hash, checkpoints and encoder store entries under today's layer names, links
and the run's records rewritten. One line per run (its old and new directory, what changes); a dry
run unless ``--apply``. A run that a process holds, whose new directory exists, or whose config
was edited by hand is refused in one line and left as it is; migrating again does what is left.
"""
from __future__ import annotations

import json
import logging as std_logging
import math
import pathlib
import sys
from typing import Optional, TextIO

from absl import app, flags

from emojax import config as config_lib
from emojax.features import cache as cache_lib
from emojax.features.cache import FeatureCache
from emojax.runs.format import FORMAT, RunFormatError
from emojax.runs.records import RunConfigError, run_config
from launch import _errors

# emojax.runs.store and emojax.inference.standalone load JAX (seconds): the commands that need them import them,
# so --help, flag errors and the cache command start without it.

COMMANDS = ("info", "cache", "gc", "create-standalone", "extract-encoders", "migrate")
SORT_KEYS = ("dev_wf1", "dev_acc", "test_wf1", "test_acc", "best_epoch", "label", "path")

_WORKDIR = flags.DEFINE_string("workdir", "runs", "Folder for checkpoints and the feature cache.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "cache: the feature cache folder (default "
                                 "WORKDIR/cache/features).")
_CLEAR = flags.DEFINE_string("clear", None, "cache: 'all', or a namespace (or a unique prefix of one) to remove.")
_SORT = flags.DEFINE_enum("sort", "dev_wf1", SORT_KEYS, "info: the column to sort by (metrics: best first).")
_FILTER = flags.DEFINE_string("filter", None, "info: keep runs whose label contains this text (any case).")
_APPLY = flags.DEFINE_bool("apply", False, "gc: remove the unreferenced entries and finished runs' training state; "
                           "migrate: migrate the runs "
                           "(default: list them only).")
_GRACE = flags.DEFINE_float("grace_s", 600.0, "gc: keep unreferenced entries younger than this many seconds, and the "
                           "training state of runs finished since.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "create-standalone / extract-encoders: a run directory.")
_OUTPUT = flags.DEFINE_string("output", None, "create-standalone / extract-encoders: a new folder to write.")


class ToolError(ValueError):
    """Bad input to a command; the message names the path or flag."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def with_composed(cfg):
    """``cfg`` with the record of the config its parts compose (``composed``, which the label
    lists the overrides against): a run written before configs recorded it gets today's
    composition of its ``parts``, so its row shows its overrides too."""
    if cfg.get("composed") or not cfg.get("parts"):
        return cfg
    from configs.compose import compose  # the presets: launch/ may read them, the library does not

    try:
        reference = compose(",".join(f"{part}={name}" for part, name in cfg.parts.items()))
    except config_lib.ConfigError:
        return cfg  # a preset no longer known: the label without overrides
    cfg = cfg.copy_and_resolve_references()
    cfg.composed = reference.composed
    return cfg


def run_summary(run_dir: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Label, status and scores of one run directory (never raises for a broken run)."""
    row = {"path": str(run_dir.relative_to(workdir)) if run_dir.is_relative_to(workdir) else str(run_dir),
           "label": "?", "status": "", "best_epoch": None}
    try:
        cfg = run_config(run_dir)
        row["label"] = config_lib.run_label(with_composed(cfg))
        epochs = int(cfg.train.epochs)
    except (RunConfigError, RunFormatError) as err:  # edited by hand, or an earlier format: no label to trust
        row["status"] = err.short
        return row
    except (config_lib.ConfigError, AttributeError, KeyError, TypeError, ValueError) as err:
        row["status"] = f"unreadable config ({err})"
        return row
    results_path = run_dir / "results.json"
    if results_path.exists():
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError as err:
            row["status"] = f"unreadable results.json ({err})"
            return row
        row["status"] = "finished"
        row["best_epoch"] = results.get("best_epoch")
        for split in ("dev", "test"):
            scores = results.get(split) or {}
            if scores.get("scored", True) and "accuracy" in scores:
                row[f"{split}_acc"] = float(scores["accuracy"])
                row[f"{split}_wf1"] = float(scores["weighted_f1"])
        return row
    progress = None
    if (run_dir / "progress.json").exists():
        try:
            progress = json.loads((run_dir / "progress.json").read_text())
        except json.JSONDecodeError:
            progress = None
    if not progress:
        row["status"] = "unfinished (no epoch yet)"
        return row
    row["status"] = f"unfinished (epoch {progress.get('epoch', 0)}/{epochs})"
    row["best_epoch"] = progress.get("best_epoch") or None
    history = progress.get("history") or []
    best = next((h for h in history if h.get("epoch") == progress.get("best_epoch")), None)
    if best:  # the best dev scores so far; test is scored only once the run finishes
        row["dev_acc"] = float(best["dev"]["accuracy"])
        row["dev_wf1"] = float(best["dev"]["weighted_f1"])
    return row


def run_rows(workdir: str | pathlib.Path, *, sort: str = "dev_wf1", contains: Optional[str] = None) -> list[dict]:
    """Summaries of the runs under ``workdir``: filtered by label, finished runs first, sorted."""
    from emojax.runs import checkpoint as ckpt_lib  # JAX kept out of launch.tool so `launch.tool --help` stays fast
    from emojax.runs.store import find_runs

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ToolError(f"--workdir: {workdir} is not a folder")
    if sort not in SORT_KEYS:
        raise ToolError(f"--sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    rows = [run_summary(run, workdir) for run in find_runs(workdir)]
    for row in rows:  # what each run holds on disk (encoder links not followed: the store is shared)
        run = workdir / row["path"]
        row["bytes"], row["state_bytes"] = ckpt_lib.folder_bytes(run), ckpt_lib.resume_state_bytes(run)
    if contains:
        rows = [r for r in rows if contains.lower() in r["label"].lower()]
    finished = lambda r: r["status"] == "finished"  # noqa: E731
    if sort in ("label", "path"):
        key = lambda r: (not finished(r), r[sort])  # noqa: E731
    else:
        def key(r):
            value = r.get(sort)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            return (not finished(r), missing, -(value or 0) if sort != "best_epoch" else (value or 0), r["path"])
    return sorted(rows, key=key)


def format_runs(rows: list[dict]) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}"

    def disk(r):  # the run's own files, and how much of that is training state (state/)
        if "bytes" not in r:
            return "-"
        return human_bytes(r["bytes"]) + (f" (state {human_bytes(r['state_bytes'])})" if r.get("state_bytes") else "")

    header = ["label", "status", "best", "dev acc", "dev wF1", "test acc", "test wF1", "disk", "run"]
    body = [[r["label"], r["status"], "-" if not r["best_epoch"] else str(r["best_epoch"]), pct(r.get("dev_acc")),
             pct(r.get("dev_wf1")), pct(r.get("test_acc")), pct(r.get("test_wf1")), disk(r), r["path"]] for r in rows]
    return format_table(header, body)


def cmd_info(workdir, *, sort: str = "dev_wf1", contains: Optional[str] = None,
             out: Optional[TextIO] = None) -> list[dict]:
    out = out or sys.stdout
    rows = run_rows(workdir, sort=sort, contains=contains)
    if not rows:
        print(f"no runs under {pathlib.Path(workdir) / 'checkpoints'}"
              + (f" with {contains!r} in the label" if contains else ""), file=out)
        return rows
    print(format_runs(rows), file=out)
    done = sum(r["status"] == "finished" for r in rows)
    total, state = sum(r.get("bytes", 0) for r in rows), sum(r.get("state_bytes", 0) for r in rows)
    dropped = [r for r in rows if r.get("state_bytes") and r["status"] == "finished"]
    print(f"disk: {human_bytes(total)} in these runs" + (
        f", {human_bytes(state)} of it training state" + (
            f" ({len(dropped)} finished run(s): launch.tool gc --workdir={workdir} lists it)" if dropped else "")
        if state else "") + "; the encoders they link are stored once, in the encoder store", file=out)
    print(f"{len(rows)} run(s), {done} finished, {len(rows) - done} unfinished", file=out)
    return rows


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
def format_clear_plan(plan, *, inputs: bool) -> list[str]:
    """The lines that say what a clear deletes (one per namespace and input set, then the total),
    and what it leaves alone and why, printed before anything is deleted."""
    lines = [f"to remove from {plan.root}:"]
    for part in plan.namespaces:
        stale = f", {len(part.stale)} temporary file(s) of writers that are gone" if part.stale else ""
        lines.append(f"  {part.name}  {len(part.shards)} shard(s){stale}  {human_bytes(part.bytes)}")
    for folder, size in plan.input_sets:
        lines.append(f"  {folder.parent.name}/{folder.name}  stored input set  {human_bytes(size)}")
    for folder, size in plan.stale_inputs:
        lines.append(f"  {folder.parent.name}/{folder.name}  temporary input folder of a writer that is gone  "
                     f"{human_bytes(size)}")
    sets = f", {len(plan.input_sets)} input set(s)" if inputs else ""
    lines.append(f"total: {plan.shard_count} shard(s) in {len(plan.namespaces)} namespace(s){sets}, "
                 f"{human_bytes(plan.bytes)}")
    lines += [f"left alone: {path}: {why}" for path, why in plan.kept]
    return lines


def cmd_cache(cache_dir, *, clear: Optional[str] = None, out: Optional[TextIO] = None) -> dict:
    out = out or sys.stdout
    cache_dir = pathlib.Path(cache_dir)
    if not cache_dir.is_dir():
        raise ToolError(f"--cache_dir: {cache_dir} is not a feature cache folder (no such folder)")
    # Checked before the cache is opened: a folder that is not one is neither read nor changed.
    problem = cache_lib.cache_problem(cache_dir)
    if problem:
        raise ToolError(f"--cache_dir: {problem}")
    cache = FeatureCache(cache_dir)
    if clear:
        names = [n for n in cache.namespaces() if cache_lib.is_namespace_name(n)]
        targets = None  # all: every namespace and the stored inputs; anything else is reported
        if clear != "all":
            targets = [n for n in names if n == clear] or [n for n in names if n.startswith(clear)]
            if len(targets) != 1:
                known = ", ".join(names) or "none"
                what = "no" if not targets else "more than one"
                raise ToolError(f"--clear: {what} namespace {clear!r} in {cache_dir} (namespaces: {known})")
        try:
            plan = cache.plan_clear(targets, inputs=clear == "all")
        except cache_lib.NotACacheError as err:
            raise ToolError(f"--cache_dir: {err}") from None
        print("\n".join(format_clear_plan(plan, inputs=clear == "all")), file=out)
        removed = cache.apply_clear(plan)
        for path, why in removed["failed"]:
            print(f"not removed: {path}: {why}", file=out)
        print(f"removed {removed['shards']} shard(s) of {len(plan.namespaces)} namespace(s) from {cache_dir}",
              file=out)
        if removed["input_sets"]:
            print(f"removed {removed['input_sets']} stored fine-tuning input set(s)", file=out)
    stats = cache.stats([n for n in cache.namespaces() if cache_lib.is_namespace_name(n)])
    inputs_bytes = cache.inputs_bytes()
    if inputs_bytes:
        print(f"fine-tuning inputs: {human_bytes(inputs_bytes)} in {cache.inputs_root}", file=out)
    if not stats:
        print(f"{cache_dir}: empty", file=out)
        return stats
    rows = [[name, str(s["entries"]), str(s["dim"]), str(s["shards"]), human_bytes(s["bytes"])]
            for name, s in stats.items()]
    print(format_table(["namespace", "entries", "dim", "shards", "size"], rows), file=out)
    print(f"{len(stats)} namespace(s), {sum(s['entries'] for s in stats.values())} entries, "
          f"{human_bytes(sum(s['bytes'] for s in stats.values()))} in {cache_dir}", file=out)
    return stats


# ---------------------------------------------------------------------------------------------
# gc
# ---------------------------------------------------------------------------------------------
def resume_states(workdir, *, grace_s: float = 600.0) -> list[dict]:
    """The finished runs under ``workdir`` that still hold a training state (``state/``, what a run
    resumes from): ``{"run", "bytes", "kept"}``, ``kept`` saying why it stays (``train.keep_state``,
    finished less than ``grace_s`` seconds ago) or ``None``."""
    import time

    from emojax.runs import checkpoint as ckpt_lib
    from emojax.runs.store import find_runs

    found = []
    for run in find_runs(workdir):
        results = run / "results.json"
        size = ckpt_lib.resume_state_bytes(run)
        if not results.is_file() or not size:
            continue
        try:
            ckpt_lib.finished_run(run)
            keep = bool(run_config(run).train.get("keep_state", False))
        except (ckpt_lib.CheckpointError, RunConfigError, RunFormatError, AttributeError, KeyError):
            continue  # not a finished run it can vouch for: left alone (tool info says why)
        kept = None
        if keep:
            kept = "train.keep_state=True"
        elif time.time() - results.stat().st_mtime < grace_s:
            kept = f"finished less than --grace_s={grace_s:g} s ago"
        found.append({"run": run, "bytes": size, "kept": kept})
    return found


def _drop_states(states: list[dict], out: TextIO) -> int:
    """Drop the training state of each of ``states`` whose run no process holds; bytes freed."""
    from emojax.runs import checkpoint as ckpt_lib

    freed = 0
    for item in states:
        try:
            with ckpt_lib.RunLock(item["run"]):
                freed += ckpt_lib.drop_resume_state(item["run"])
        except ckpt_lib.RunBusyError as err:
            print(f"left alone: {err}", file=out)
    return freed


def cmd_gc(workdir, *, apply: bool = False, grace_s: float = 600.0, out: Optional[TextIO] = None) -> list[dict]:
    """Encoder store entries no run links to, and the training state of finished runs (their
    selected parameters stay); removed with ``apply``, else listed. Returns the store entries."""
    out = out or sys.stdout
    from emojax.runs import store  # JAX kept out of launch.tool so `launch.tool --help` stays fast

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ToolError(f"--workdir: {workdir} is not a folder")
    entries = store.store_entries(workdir)
    doomed = store.garbage(workdir, grace_s=grace_s)
    root = store.store_root(workdir)
    if not entries:
        print(f"{root}: no encoder store entries", file=out)
    else:
        kept = len(entries) - len(doomed)
        for entry in doomed:
            what = "incomplete write" if entry["temporary"] else (entry["model"] or "?")
            print(f"{'removing' if apply else 'unreferenced'}  {entry['hash']}  {human_bytes(entry['bytes'])}  "
                  f"{what}", file=out)
        total = sum(e["bytes"] for e in doomed)
        if apply:
            store.remove_entries(doomed)
            print(f"removed {len(doomed)} entr{'y' if len(doomed) == 1 else 'ies'} ({human_bytes(total)}); "
                  f"{kept} kept in {root}", file=out)
        else:
            print(f"dry run: {len(doomed)} unreferenced entr{'y' if len(doomed) == 1 else 'ies'} "
                  f"({human_bytes(total)}) of {len(entries)} in {root}; pass --apply to remove them", file=out)
    # A finished run needs its selected parameters (best/) only: its training state, kept for
    # resuming, is most of its size (runs of train.keep_state=True keep it).
    states = resume_states(workdir, grace_s=grace_s)

    def where(run: pathlib.Path) -> str:
        return str(run.relative_to(workdir)) if run.is_relative_to(workdir) else str(run)

    for item in states:
        action = f"kept ({item['kept']})" if item["kept"] else ("dropping" if apply else "resume state")
        print(f"{action}  {where(item['run'])}  {human_bytes(item['bytes'])}", file=out)
    doomed_states = [item for item in states if not item["kept"]]
    total = sum(item["bytes"] for item in doomed_states)
    if apply and doomed_states:
        freed = _drop_states(doomed_states, out)
        print(f"dropped the training state of finished runs: {human_bytes(freed)} freed (their selected "
              "parameters stay)", file=out)
    elif doomed_states:
        print(f"dry run: the training state of {len(doomed_states)} finished run(s) ({human_bytes(total)}); pass "
              "--apply to drop it (evaluation and inference need only the selected parameters, which stay)", file=out)
    elif states:
        print(f"nothing to drop: {len(states)} finished run(s) keep their training state (above)", file=out)
    else:
        print("no finished run holds a training state to drop", file=out)
    return doomed


# ---------------------------------------------------------------------------------------------
# create-standalone, extract-encoders
# ---------------------------------------------------------------------------------------------
def _paths(run_dir: Optional[str], output: Optional[str], command: str) -> tuple[pathlib.Path, pathlib.Path]:
    if not run_dir:
        raise ToolError(f"{command} needs --run_dir=RUN_DIR")
    if not output:
        raise ToolError(f"{command} needs --output=FOLDER (a new folder)")
    return pathlib.Path(run_dir), pathlib.Path(output)


def cmd_create_standalone(run_dir, output, *, out: Optional[TextIO] = None) -> pathlib.Path:
    out = out or sys.stdout
    # JAX kept out of launch.tool so `launch.tool --help` stays fast
    from emojax.inference.standalone import create_standalone

    run_dir, output = _paths(run_dir, output, "create-standalone")
    folder = create_standalone(run_dir, output)
    manifest = json.loads((folder / "standalone.json").read_text())
    encoders = ", ".join(f"{m} ({i['hash'][:12]})" for m, i in manifest["encoders"].items()) or "none with weights"
    print(f"{manifest['label']}: best epoch {manifest['best_epoch']}, encoders {encoders}", file=out)
    print(folder, file=out)
    return folder


def cmd_extract_encoders(run_dir, output, *, out: Optional[TextIO] = None) -> dict:
    out = out or sys.stdout
    # JAX kept out of launch.tool so `launch.tool --help` stays fast
    from emojax.inference.standalone import extract_encoders

    run_dir, output = _paths(run_dir, output, "extract-encoders")
    encoders = extract_encoders(run_dir, output)
    for modality, info in encoders.items():
        print(f"encoders.{modality}.model={info['path']}", file=out)
    print(f"config snippet: {output / 'encoders.cfg'}  (launch.train --flagfile={output / 'encoders.flags'})",
          file=out)
    return encoders


# ---------------------------------------------------------------------------------------------
# migrate
# ---------------------------------------------------------------------------------------------
def cmd_migrate(workdir, *, apply: bool = False, out: Optional[TextIO] = None) -> list:
    """Migrate (``apply``) or list the runs of an earlier format under ``workdir``, one line each."""
    out = out or sys.stdout
    from emojax.runs import format as format_lib  # JAX kept out of launch.tool so `launch.tool --help` stays fast

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ToolError(f"--workdir: {workdir} is not a folder")

    def where(path: pathlib.Path) -> str:
        return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else str(path)

    moves = []
    for move in format_lib.migrate(workdir, apply=apply):
        moves.append(move)
        if move.refused:
            print(f"refused  {where(move.source)}: {move.refused}", file=out, flush=True)
        else:
            print(f"{'migrated' if move.done else 'to migrate'}  {where(move.source)} -> {where(move.target)}  "
                  f"({'; '.join(move.changes)})", file=out, flush=True)
    refused = sum(bool(m.refused) for m in moves)
    todo = len(moves) - refused
    if not moves:
        print(f"no runs of an earlier format under {workdir / 'checkpoints'}: every run is of format {FORMAT}",
              file=out)
    elif apply:
        gc = any(m.rehashed for m in moves if m.done)
        print(f"migrated {todo} run(s) to format {FORMAT}, {refused} refused"
              + ("; launch.tool gc removes the store entries no run links any more" if gc else ""), file=out)
    else:
        print(f"dry run: {todo} run(s) to migrate to format {FORMAT}, {refused} refused; pass --apply to migrate "
              "them", file=out)
    return moves


# ---------------------------------------------------------------------------------------------
def dispatch(command: str) -> None:
    workdir = pathlib.Path(_WORKDIR.value)
    if command == "info":
        cmd_info(workdir, sort=_SORT.value, contains=_FILTER.value)
    elif command == "cache":
        cmd_cache(_CACHE_DIR.value or workdir / "cache" / "features", clear=_CLEAR.value)
    elif command == "gc":
        cmd_gc(workdir, apply=_APPLY.value, grace_s=_GRACE.value)
    elif command == "create-standalone":
        cmd_create_standalone(_RUN_DIR.value, _OUTPUT.value)
    elif command == "extract-encoders":
        cmd_extract_encoders(_RUN_DIR.value, _OUTPUT.value)
    elif command == "migrate":
        cmd_migrate(workdir, apply=_APPLY.value)


def main(argv):
    if len(argv) < 2:
        raise app.UsageError(f"give a command: {' | '.join(COMMANDS)}")
    if len(argv) > 2:
        raise app.UsageError(f"unexpected arguments: {argv[2:]}")
    command = argv[1]
    if command not in COMMANDS:
        raise app.UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    dispatch(command)


if __name__ == "__main__":
    # FileExistsError: create-standalone / extract-encoders refuse an --output that is not new.
    _errors.run(main, extra=(ToolError, FileExistsError))
