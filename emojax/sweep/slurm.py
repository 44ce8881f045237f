"""Running a planned sweep on a SLURM cluster through submitit (:func:`execute_slurm`).

Each run becomes a SLURM job that runs the command line a local subprocess run gets
(``command(run, workdir, teacher_dir)``: ``python -m launch.train ...``), wrapped in
:class:`RunCommand`, submitit's ``CommandFunction`` with the job's own environment. The runs that
can start now go in one job array (at most ``array_parallelism`` of its tasks at once); the students
of each teacher in another, which SLURM holds until the teacher's job ended well
(``--dependency=afterok``). A teacher that did not finish has its students' jobs cancelled and
reported ``skipped``.

Each job's id is recorded under ``workdir/sweeps/slurm-jobs/`` (one small file per run directory,
for every sweep of the workdir). Submitted again, the sweep skips the finished runs, follows the
jobs still queued or running (``squeue``) instead of submitting them twice, and submits the others;
an unfinished run resumes from its last finished epoch (``launch.train`` does that), and its run
lock refuses a second process on the same run directory in any case.

At its time limit SLURM sends the job SIGTERM (SIGKILL ``KillWait`` seconds later); the run stops
cleanly (its launcher's exit status 143) and is reported ``stopped``: the next submission resumes
it. ``signal_delay`` seconds before the limit SLURM sends SIGUSR2: without ``requeue`` the run is
then given SIGTERM (more time to stop than ``KillWait``); with ``requeue``, submitit checkpoints the
job (:meth:`RunCommand.checkpoint`) and requeues it (``scontrol requeue``, up to three times): the
same command starts again and resumes the run.

submitit is imported on use: planning and local sweeps do not need it."""
from __future__ import annotations

import dataclasses
import datetime
import io
import os
import pathlib
import re
import signal
import subprocess
import time
from typing import Callable, Mapping, Optional, Sequence

from emojax.files import digest, read_json_object, write_json_atomic
from emojax.sweep.execution import Outcome, SweepStopped, _finish, _teacher_problem
from emojax.sweep.planning import Run
from emojax.sweep.specs import SweepError

# Job states of a job that has not ended (squeue's long names).
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                         "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
# Ended states that are no fault of the run: it resumes at the next submission.
STOPPED_STATES = frozenset({"TIMEOUT", "DEADLINE", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "CANCELLED"})
_STOPPED_CODES = {143, 130, -15, -2}  # the launchers' exit status when a signal stopped them
_EXIT = re.compile(r"RunFailed: exit status (-?\d+)")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Where and how the runs' jobs run: ``partition`` (None: the cluster's default), ``gpus`` and
    ``cpus`` per run, ``mem`` per run (SLURM's ``--mem``, e.g. ``32G``; None: the partition's
    default), ``time`` (limit per job, SLURM's format: ``MINUTES``, ``H:MM:SS``, ``D-HH:MM``...),
    ``array_parallelism`` (tasks of one job array at once), ``requeue`` (submitit's checkpointing
    before the time limit), ``signal_delay`` (seconds before the limit that the run is stopped or
    requeued), ``wait`` (follow the jobs to their end; False: submit and return) and
    ``poll_seconds`` (how often the queue is read while following)."""

    partition: Optional[str] = None
    gpus: int = 0
    cpus: int = 4
    mem: Optional[str] = None
    time: str = "4:00:00"
    array_parallelism: int = 16
    requeue: bool = False
    signal_delay: int = 90
    wait: bool = True
    poll_seconds: float = 10.0

    def check(self) -> None:
        time_minutes(self.time)
        for name in ("gpus", "cpus", "array_parallelism", "signal_delay"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name in ("cpus", "array_parallelism") else 0):
                raise SweepError(f"--slurm_{name}: {value!r} must be a whole number of at least "
                                 f"{1 if name in ('cpus', 'array_parallelism') else 0}")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", str(self.mem)):
            raise SweepError(f"--slurm_mem: {self.mem!r} is not a SLURM memory size (e.g. 32G, 16000M)")


def time_minutes(text: str) -> int:
    """A SLURM time limit (``MINUTES``, ``MINUTES:SECONDS``, ``H:MM:SS``, ``D-H``, ``D-H:MM``,
    ``D-H:MM:SS``) in whole minutes, seconds rounded up (SLURM's own unit)."""
    match = _TIME.match(str(text).strip())
    if not match:
        raise SweepError(f"--slurm_time: {text!r} is not a SLURM time limit (e.g. 90, 4:00:00, 1-12:00:00)")
    days, first, second, third = match.groups()
    numbers = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise SweepError(f"--slurm_time: {text!r} is no time; give at least a minute")
    return total


class RunFailed(Exception):
    """A run's command ended with a non-zero exit status; the message: ``exit status N`` then the
    tail of its stderr (whose last line is the run's one-line error)."""


def _ignore_usr2() -> None:
    # SLURM's early-warning SIGUSR2 reaches every process of the job; its default action would
    # kill the run, which stops on SIGTERM instead (sent by RunCommand or by SLURM).
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class RunCommand:
    """A run's command line as a SLURM job's function (submitit pickles it), as submitit's
    ``CommandFunction`` runs one: started in ``cwd``, its output copied to the job's log, a
    non-zero exit raised (:class:`RunFailed`, with the tail of its stderr). Unlike it, the command
    gets the job's environment plus ``env`` (what SLURM sets in the job, such as
    ``CUDA_VISIBLE_DEVICES``, is kept), and SIGUSR2 (the time limit is near) stops the run with
    SIGTERM or, with ``requeue``, lets submitit checkpoint (:meth:`checkpoint`) and requeue the job."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str], cwd: str, requeue: bool = False):
        self.command = [str(arg) for arg in command]
        self.env = dict(env)
        self.cwd = str(cwd)
        self.requeue = requeue

    def __call__(self) -> int:
        from submitit.core.utils import copy_process_streams

        print("command: " + " ".join(self.command), flush=True)
        stdout, stderr = io.StringIO(), io.StringIO()
        with subprocess.Popen(self.command, cwd=self.cwd, env={**os.environ, **self.env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ignore_usr2) as process:
            if not self.requeue:
                signal.signal(signal.SIGUSR2, lambda *_: process.send_signal(signal.SIGTERM))
            copy_process_streams(process, stdout, stderr, verbose=True)
            code = process.wait()
        if code:
            tail = "\n".join(stderr.getvalue().strip().splitlines()[-20:])
            raise RunFailed(f"exit status {code}\n{tail}")
        return 0

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpointing: the same command again (the run resumes by itself)."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# -- the queue ----------------------------------------------------------------------------------
def _query(argv: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """``{job id: state}`` (squeue's long state names, e.g. ``RUNNING``, ``TIMEOUT``) for the jobs
    SLURM still knows: ``squeue`` (every state, array tasks one by one), then ``sacct`` for those
    squeue has forgotten (where accounting is on). A job neither knows is missing."""
    wanted = {str(job_id) for job_id in job_ids}
    if not wanted:
        return {}
    listing = _query(["squeue", "--me", "--noheader", "--array", "--states=all", "--format=%i|%T"])
    if listing is None:
        raise SweepError("squeue failed: is this a SLURM cluster (sinfo shows its nodes)?")
    states = {}
    for line in listing.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted:
            states[job_id] = state.strip()
    missing = sorted(wanted - set(states))
    if missing:
        accounting = _query(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                             f"--jobs={','.join(missing)}"]) or ""
        for line in accounting.splitlines():
            job_id, _, state = line.strip().partition("|")
            if job_id in missing and state:
                states[job_id] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=120)


# -- job records --------------------------------------------------------------------------------
def record_path(workdir, run: Run) -> pathlib.Path:
    """Where the id of ``run``'s latest job is recorded (shared by every sweep of the workdir)."""
    return pathlib.Path(workdir) / "sweeps" / "slurm-jobs" / f"{digest(str(run.run_dir.absolute()))[:16]}.json"


def _job_paths(folder, job_id: str):
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=0)


def _job_outcome(run: Run, job_id: str, folder, state: Optional[str]) -> Outcome:
    """What became of ``run`` once its job ended in ``state`` (None: SLURM has forgotten it)."""
    paths = _job_paths(folder, job_id)
    log = str(paths.stdout)
    where = f"job {job_id} {state or 'ended'}; log {log}"
    trace = None
    try:
        from submitit.core.utils import pickle_load

        kind, value = pickle_load(paths.result_pickle)
        trace = value if kind == "error" else None
    except (OSError, ValueError, EOFError, ImportError):
        kind = None
    if kind == "success" or (run.run_dir / "results.json").exists():
        return _finish(run, Outcome("done", log=log, job=job_id))
    code = None
    if trace:
        match = _EXIT.search(trace)
        code = int(match.group(1)) if match else None
    if state in STOPPED_STATES or code in _STOPPED_CODES:
        reason = "time limit" if state in ("TIMEOUT", "DEADLINE") else "stopped"
        return Outcome("stopped", f"{reason} ({where}); submitting the sweep again resumes it", log=log, job=job_id)
    lines = [line.strip() for line in (trace or _tail(paths.stdout)).splitlines() if line.strip()]
    error = lines[-1] if lines else "no output"
    return Outcome("failed", f"{error} ({where})", log=log, job=job_id)


def _tail(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


# -- the sweep ----------------------------------------------------------------------------------
def execute_slurm(runs: Sequence[Run], workdir, *, command: Callable, folder, options: SlurmOptions = SlurmOptions(),
                  env: Optional[Mapping[str, str]] = None, name: str = "emojax",
                  echo: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Run ``runs`` (ordered by :func:`~emojax.sweep.planning.plan`) as SLURM jobs; returns
    ``{name: Outcome}``. ``command(run, workdir, teacher_dir)`` is a run's argument list (started
    in this process's working directory, with the job's environment plus ``env``); ``folder``
    holds submitit's files and the jobs' logs. With ``options.wait`` the jobs are followed to their
    end; otherwise (and when interrupted, :class:`SweepStopped`) the runs still in the queue are
    ``submitted`` and their jobs go on."""
    try:
        import submitit
    except ImportError:
        raise SweepError("--executor=slurm needs submitit: pip install submitit") from None
    options.check()
    folder = pathlib.Path(folder).absolute()
    by_name = {run.name: run for run in runs}
    outcomes: dict[str, Outcome] = {}
    jobs: dict[str, str] = {}  # run name -> id of the job this sweep follows
    records = {run.name: read_json_object(record_path(workdir, run)) or {} for run in runs}
    live = queue_states([r["job_id"] for r in records.values() if r.get("job_id")])
    folders = {run.name: pathlib.Path(records[run.name].get("folder") or folder) for run in runs}
    to_submit = []
    for run in runs:
        job_id = records[run.name].get("job_id")
        if run.status() == "finished":
            outcomes[run.name] = Outcome("finished")
            echo(f"{run.name}: finished already, skipped")
        elif job_id and live.get(job_id) in LIVE_STATES:
            jobs[run.name] = job_id
            echo(f"{run.name}: job {job_id} is {live[job_id].lower()} already, not submitted again")
        else:
            folders[run.name] = folder
            to_submit.append(run)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(job_name=name, partition=options.partition, gpus_per_node=options.gpus or None,
                               cpus_per_task=options.cpus, mem=options.mem, time=time_minutes(options.time),
                               array_parallelism=options.array_parallelism, signal_delay_s=options.signal_delay,
                               stderr_to_stdout=True)
    cwd = os.getcwd()
    while to_submit:
        groups: dict[Optional[str], list[Run]] = {}
        for run in list(to_submit):
            problem = _teacher_problem(run, outcomes, by_name)
            if problem not in (None, "wait"):
                outcomes[run.name] = Outcome("skipped", problem)
                echo(f"{run.name}: skipped ({problem})")
                to_submit.remove(run)
            elif problem is None or run.teacher in jobs:
                groups.setdefault(None if problem is None else jobs[run.teacher], []).append(run)
        if not groups:
            break
        for after, group in groups.items():
            executor.update_parameters(dependency=f"afterok:{after}" if after else None)
            try:
                with executor.batch():
                    submitted = [executor.submit(RunCommand(command(run, workdir, by_name[run.teacher].run_dir
                                                                    if run.teacher else None),
                                                            env=dict(env or {}), cwd=cwd, requeue=options.requeue))
                                 for run in group]
            except (OSError, subprocess.CalledProcessError, submitit.core.utils.UncompletedJobError,
                    submitit.core.utils.FailedSubmissionError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                raise SweepError(f"sbatch could not submit {len(group)} run(s) ({group[0].name}, ...): {reason}; "
                                 "is this a SLURM cluster (sinfo shows its nodes)?") from None
            for run, job in zip(group, submitted):
                jobs[run.name] = job.job_id
                to_submit.remove(run)
                write_json_atomic(record_path(workdir, run), {
                    "job_id": job.job_id, "folder": str(folder), "run": run.name, "run_dir": str(run.run_dir),
                    "submitted": datetime.datetime.now().isoformat(timespec="seconds")})
                echo(f"{run.name}: {'resuming' if run.status() == 'partial' else 'submitted'} as job {job.job_id}"
                     + (f" (after job {after})" if after else "") + f", log {_job_paths(folder, job.job_id).stdout}")
    if not options.wait:
        return {**outcomes, **{n: Outcome("submitted", job=j, log=str(_job_paths(folders[n], j).stdout))
                               for n, j in jobs.items()}}
    try:
        _follow(jobs, by_name, outcomes, folders, options, echo)
    except KeyboardInterrupt:
        echo("interrupted: the jobs in the queue go on; submit the sweep again to follow them (scancel stops them)")
        for run_name, job_id in jobs.items():
            outcomes.setdefault(run_name, Outcome("submitted", job=job_id,
                                                  log=str(_job_paths(folders[run_name], job_id).stdout)))
        raise SweepStopped(outcomes) from None
    return outcomes


def _follow(jobs, by_name, outcomes, folders, options, echo) -> None:
    """Read the queue every ``options.poll_seconds`` until every job in ``jobs`` has ended; cancel
    the jobs of students whose teacher did not finish (SLURM would hold them for ever)."""
    while True:
        waiting = {n: j for n, j in jobs.items() if n not in outcomes}
        if not waiting:
            return
        states = queue_states(list(waiting.values()))
        for run_name, job_id in waiting.items():
            state = states.get(job_id)
            if state in LIVE_STATES:
                continue
            outcome = _job_outcome(by_name[run_name], job_id, folders[run_name], state)
            outcomes[run_name] = outcome
            echo(f"{run_name}: {outcome.status}" + (f": {outcome.error}" if outcome.error else ""))
        orphans = []
        for run_name in list(jobs):  # in plan order: a skipped student's own students follow it
            problem = _teacher_problem(by_name[run_name], outcomes, by_name)
            if run_name not in outcomes and problem not in (None, "wait"):
                outcomes[run_name] = Outcome("skipped", problem, job=jobs[run_name])
                orphans.append(jobs[run_name])
                echo(f"{run_name}: skipped ({problem}); job {jobs[run_name]} cancelled")
        cancel(orphans)
        if any(n not in outcomes for n in jobs):
            time.sleep(options.poll_seconds)
