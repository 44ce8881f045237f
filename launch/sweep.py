r"""Run a sweep: every run of a ``configs/experiments/`` module, teachers first, then a results table.

    python -m launch.sweep --sweep=mdn --workdir=runs --data_root=datasets
    python -m launch.sweep --sweep=makd --dry_run                      # the plan: order, run dirs, status
    python -m launch.sweep --sweep=makd --parallel=4 --devices=0,1,2,3 # 4 runs at once, one per GPU
    python -m launch.sweep --sweep=mdn --only=IEMOCAP --set=train.epochs=10
    python -m launch.sweep --sweep=makd --executor=slurm --slurm_partition=gpu --slurm_gpus=1 --slurm_time=8:00:00

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

``--executor=slurm`` submits the runs as SLURM jobs through submitit instead (``emojax.sweep.slurm``;
each job runs the command a ``--parallel`` run gets), teachers before their students
(``afterok``), with the ``--slurm_*`` flags' resources; submitit's files and the jobs' logs go to
``workdir/sweeps/<sweep>/slurm/``. The sweep follows the jobs to their end and writes the table
(``--noslurm_wait``: it submits and returns). Submitted again, it skips the finished runs, follows
the jobs still in the queue and submits the others, which resume. Interrupted, it leaves the jobs
in the queue (``scancel`` stops them).
"""
import logging as std_logging
import pathlib
import sys

from absl import flags

from configs.compose import compose
from configs.experiments import available_sweeps, load_sweep
from emojax import sweep as sweep_lib
from emojax.sweep.execution import SweepStopped
from emojax.sweep.slurm import SlurmOptions, execute_slurm
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
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "slurm"], "Where the runs run: on this machine "
                               "(--parallel, --devices), or as SLURM jobs through submitit (--slurm_* flags).")
_SLURM = SlurmOptions()
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", _SLURM.partition, "SLURM partition (default: the "
                                       "cluster's default partition).")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus", _SLURM.gpus, "GPUs per run (job).")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus", _SLURM.cpus, "CPUs per run (job).")
_SLURM_MEM = flags.DEFINE_string("slurm_mem", _SLURM.mem, "Memory per run (job), e.g. 32G (default: the "
                                 "partition's default).")
_SLURM_TIME = flags.DEFINE_string("slurm_time", _SLURM.time, "Time limit per job (MINUTES, H:MM:SS or D-H:MM:SS); "
                                  "a run stopped at it resumes when the sweep is submitted again.")
_SLURM_ARRAY_PARALLELISM = flags.DEFINE_integer("slurm_array_parallelism", _SLURM.array_parallelism,
                                                "Jobs of one job array (the runs submitted together) at once.")
_SLURM_REQUEUE = flags.DEFINE_bool("slurm_requeue", _SLURM.requeue, "Requeue a job near its time limit "
                                   "(submitit's checkpointing, up to 3 times): its run resumes in the new job.")
_SLURM_SIGNAL_DELAY = flags.DEFINE_integer("slurm_signal_delay", _SLURM.signal_delay, "Seconds before the time "
                                           "limit that a run is stopped cleanly (or requeued, --slurm_requeue).")
_SLURM_WAIT = flags.DEFINE_bool("slurm_wait", _SLURM.wait, "Follow the jobs to their end, then write the table "
                                "(--noslurm_wait: submit and return).")
_SLURM_POLL = flags.DEFINE_float("slurm_poll_seconds", _SLURM.poll_seconds, "How often the queue is read while "
                                 "following the jobs.")
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
    sweep_dir = workdir / "sweeps" / name.strip("/").replace("/", "-")
    echo = lambda line: print(line, flush=True)  # noqa: E731
    stop = None
    try:
        if _EXECUTOR.value == "slurm":
            if _PARALLEL.value != 1 or _DEVICES.value:
                raise _errors.UserError("--parallel and --devices are for --executor=local; on SLURM every run is a "
                                        "job (--slurm_gpus, --slurm_array_parallelism)")
            options = SlurmOptions(
                partition=_SLURM_PARTITION.value, gpus=_SLURM_GPUS.value, cpus=_SLURM_CPUS.value, mem=_SLURM_MEM.value,
                time=_SLURM_TIME.value, array_parallelism=_SLURM_ARRAY_PARALLELISM.value,
                requeue=_SLURM_REQUEUE.value, signal_delay=_SLURM_SIGNAL_DELAY.value, wait=_SLURM_WAIT.value,
                poll_seconds=_SLURM_POLL.value)
            outcomes = execute_slurm(runs, workdir, command=_commands.train_command, folder=sweep_dir / "slurm",
                                     options=options, env=_commands.checkout_env(), name=f"emojax-{name}", echo=echo)
        else:
            outcomes = sweep_lib.execute(runs, workdir, parallel=_PARALLEL.value, devices=_DEVICES.value or None,
                                         command=_commands.train_command, env=_commands.checkout_env(),
                                         log_dir=sweep_dir / "logs", echo=echo)
    except SweepStopped as stopped:  # the table of the runs so far, then the launcher's one line
        stop, outcomes = stopped, stopped.outcomes
    text = sweep_lib.write_report(name, workdir, runs, outcomes)
    md_path, json_path = sweep_lib.report_paths(name, workdir)
    print()
    print(text)
    print(f"written: {md_path} and {json_path}", flush=True)
    if stop is not None:
        raise stop
    if any(outcome.status not in (*sweep_lib.OK, "submitted") for outcome in outcomes.values()):
        sys.exit(1)


if __name__ == "__main__":
    _errors.run(main)
