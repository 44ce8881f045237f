r"""Run a sweep: every run of a ``configs/experiments/`` module, teachers first, then a results table.

    python -m launch.sweep --sweep=mdn --workdir=runs --data_root=datasets
    python -m launch.sweep --sweep=makd --dry_run                      # the plan: order, run dirs, status
    python -m launch.sweep --sweep=makd --parallel=4 --devices=0,1,2,3 # 4 runs at once, one per GPU
    python -m launch.sweep --sweep=mdn --only=IEMOCAP --set=train.epochs=10

Each run's ``dataset.path`` is ``data_root/<dataset folder>`` (``datasets/MELD``,
``datasets/IEMOCAP``, ``datasets/demo``). Finished runs (``results.json``) are skipped, interrupted
ones resume. ``--parallel=N`` starts the runs as ``python -m launch.train`` subprocesses, N at a
time, each with ``CUDA_VISIBLE_DEVICES`` set to one of ``--devices`` (default ``0..N-1``); a
student waits for its teacher; the logs go to ``workdir/sweeps/<sweep>/logs/``. A failed run is
reported and the sweep goes on (its students are skipped). The table -- per config, mean and
standard deviation over seeds of dev/test accuracy and weighted F1 -- is printed and written to
``workdir/sweep_<sweep>.md`` and ``.json``; the exit status is 1 when a run failed or was skipped.

Ctrl-C or SIGTERM (a batch scheduler's stop) stops the sweep and its runs: each run still going
gets SIGTERM (SIGKILL after 30 s) and is reported as ``stopped``; the table is written with the
runs so far, and the sweep ends with ``stopped by SIGTERM; ...`` (exit status 143). A sweep killed
outright (``kill -9``) takes its runs with it (Linux: their parent-death signal). Started again,
the sweep skips the finished runs and resumes the stopped ones from their last finished epoch.
"""
import logging as std_logging
import pathlib
import sys

from absl import flags

from configs.compose import compose
from configs.experiments import available_sweeps, load_sweep
from emojax import sweep as sweep_lib
from emojax.sweep.execution import SweepStopped
from launch import _commands, _errors

_SWEEP = flags.DEFINE_string("sweep", None, "The sweep: a module under configs/experiments/ (baseline/unimodal, mdn, "
                             "makd, ...); --sweep=list lists them.")
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Folder for checkpoints, the feature cache and the tables.")
_DATA_ROOT = flags.DEFINE_string("data_root", "datasets", "Folder holding the dataset folders (MELD, IEMOCAP, ...).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the ordered runs with run directory and status; run nothing.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at once, as subprocesses (1: one after another, in this "
                                 "process, unless --devices is given).")
_DEVICES = flags.DEFINE_list("devices", [], "GPU ids for the subprocesses (CUDA_VISIBLE_DEVICES), shared round the "
                             "runs; default 0..parallel-1.")
_ONLY = flags.DEFINE_string("only", None, "Keep the runs whose name or label contains this (and their teachers).")
_SET = flags.DEFINE_multi_string("set", [], "key=value: set a config field in every run that has it "
                                 "(e.g. --set=train.epochs=5 --set=encoders.T.model=PATH); repeatable.")


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    name = _SWEEP.value
    if not name or name == "list":
        print("\n".join(available_sweeps()))
        if not name:
            raise _errors.UserError("give --sweep=NAME (one of the names above)")
        return
    workdir = pathlib.Path(_WORKDIR.value)
    _errors.check_folder(workdir, "--workdir")
    _errors.check_folder(_DATA_ROOT.value, "--data_root")
    runs = sweep_lib.plan(load_sweep(name), workdir, _DATA_ROOT.value, compose=compose,
                          overrides=sweep_lib.parse_assignments(_SET.value), only=_ONLY.value)
    if not runs:
        _errors.fail(f"no run of sweep {name!r} matches --only={_ONLY.value!r}")
    print(f"sweep {name}: " + sweep_lib.format_plan(runs), flush=True)
    if _DRY_RUN.value:
        return
    log_dir = workdir / "sweeps" / name.strip("/").replace("/", "-") / "logs"
    stop = None
    try:
        outcomes = sweep_lib.execute(runs, workdir, parallel=_PARALLEL.value, devices=_DEVICES.value or None,
                                     command=_commands.train_command, env=_commands.checkout_env(),
                                     log_dir=log_dir, echo=lambda line: print(line, flush=True))
    except SweepStopped as stopped:  # the table of the runs so far, then the launcher's one line
        stop, outcomes = stopped, stopped.outcomes
    text = sweep_lib.write_report(name, workdir, runs, outcomes)
    md_path, json_path = sweep_lib.report_paths(name, workdir)
    print()
    print(text)
    print(f"written: {md_path} and {json_path}", flush=True)
    if stop is not None:
        raise stop
    if any(outcome.status not in sweep_lib.OK for outcome in outcomes.values()):
        sys.exit(1)


if __name__ == "__main__":
    _errors.run(main)
