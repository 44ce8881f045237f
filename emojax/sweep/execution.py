"""Running a planned sweep: here one run after another, or as subprocesses N at a time, one GPU
each (:func:`execute`); failures recorded, students of a failed teacher skipped.

A sweep's runs end with it. Interrupted (Ctrl-C, or SIGTERM, which the launchers turn into the
same ``KeyboardInterrupt``), the sweep sends SIGTERM to every run still going, waits for them
(``stop_seconds``, then SIGKILL), records them as ``stopped`` and raises :class:`SweepStopped`
with what became of each run; the next launch resumes them. Each subprocess runs in its own process
group (a terminal's Ctrl-C reaches the sweep only, which stops its runs once) and, on Linux, with
SIGTERM as its parent-death signal (``PR_SET_PDEATHSIG``): if the sweep itself is killed
(``kill -9``), its runs receive SIGTERM and stop too, instead of training on as orphans that hold
their run directories."""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence


from emojax.sweep.planning import Run
from emojax.sweep.specs import OK, SweepError

log = logging.getLogger(__name__)

STOP_SECONDS = 30.0  # how long an interrupted sweep waits for its runs to stop before SIGKILL
# Exit statuses of a run a signal stopped (its launcher's 128 + signal, or killed by it): no failure.
_STOPPED_CODES = {128 + signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGINT}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclasses.dataclass
class Outcome:
    """What became of a run: ``finished`` (already done, skipped), ``done`` (run now),
    ``failed`` (error), ``skipped`` (its teacher did not finish), ``incomplete`` (ended before
    finishing), ``stopped`` (stopped by a signal, the sweep's or its own, or a SLURM job's time
    limit) or ``submitted`` (a SLURM job still queued or running when the sweep stopped following
    it). Starting the sweep again resumes an incomplete or stopped run from its last finished
    epoch. ``job``: the SLURM job id of the run (``emojax.sweep.slurm``)."""

    status: str
    error: Optional[str] = None
    seconds: float = 0.0
    device: Optional[str] = None
    log: Optional[str] = None
    job: Optional[str] = None


class SweepStopped(KeyboardInterrupt):
    """The sweep was interrupted; its runs in progress were stopped. ``outcomes``: what became
    of each run so far, the stopped ones ``stopped``; runs not started have none."""

    def __init__(self, outcomes: Mapping[str, Outcome]):
        super().__init__("the sweep was stopped")
        self.outcomes = dict(outcomes)


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
            echo: Callable[[str], None] = print, poll_seconds: float = 0.5,
            stop_seconds: float = STOP_SECONDS) -> dict[str, Outcome]:
    """Run ``runs`` (ordered by :func:`plan`); returns ``{name: Outcome}``.

    With ``parallel`` 1 and no ``devices``, runs go one after another in this process through
    ``runner(cfg, workdir, category=..., teacher=...)`` (default ``emojax.training.fit``). Otherwise
    up to ``parallel`` subprocesses run at once: ``command(run, workdir, teacher_dir)`` is the
    argument list of one (``launch.sweep`` gives ``python -m launch.train`` with the run's parts
    and overrides), started in this process's working directory with its environment plus
    ``env``, and ``CUDA_VISIBLE_DEVICES`` set to the least busy of ``devices`` (default
    ``0..parallel-1``; with more runs than devices, several share one and JAX's memory
    preallocation is turned off); its output goes to ``log_dir/<run>.log``. A student starts once
    its teacher has finished.

    Interrupted (``KeyboardInterrupt``: Ctrl-C, or SIGTERM in a launcher), the run in progress
    (here) or every live subprocess (SIGTERM, then SIGKILL after ``stop_seconds``) is stopped
    and :class:`SweepStopped` raised, carrying the outcomes so far (those runs ``stopped``).
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
                                 echo=echo, poll_seconds=poll_seconds, stop_seconds=stop_seconds)


def _execute_here(runs, workdir, *, runner, echo) -> dict[str, Outcome]:
    if runner is None:
        # Imported on use: planning and listing sweeps stay free of JAX.
        from emojax.training.loop import fit as runner
    by_name = {run.name: run for run in runs}
    outcomes: dict[str, Outcome] = {}
    total = len(runs)
    try:
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
            except KeyboardInterrupt:
                outcomes[run.name] = Outcome("stopped", seconds=time.perf_counter() - start)
                echo(f"{head}: {_stopped_line(outcomes[run.name])}")
                raise
            except Exception as err:  # a failed run is recorded; the sweep goes on
                log.debug("run %s failed:\n%s", run.name, traceback.format_exc())
                outcome = Outcome("failed", f"{type(err).__name__}: {err}", time.perf_counter() - start)
            else:
                outcome = _finish(run, Outcome("done", seconds=time.perf_counter() - start))
            outcomes[run.name] = outcome
            echo(f"{head}: {_outcome_line(outcome)}")
    except KeyboardInterrupt:
        raise SweepStopped(outcomes) from None
    return outcomes


def _stopped_line(outcome: Outcome) -> str:
    return f"stopped ({outcome.seconds:.1f}s); starting the sweep again resumes it"


def _outcome_line(outcome: Outcome) -> str:
    if outcome.status == "stopped":
        return _stopped_line(outcome)
    return f"{outcome.status} ({outcome.seconds:.1f}s)" + (f": {outcome.error}" if outcome.error else "")


# Signals held back while a run's process is started and recorded (see _signals_held).
_HELD = {signal.SIGINT, signal.SIGTERM}


@functools.lru_cache(maxsize=None)
def _prctl() -> Optional[Callable]:
    """libc's ``prctl`` on Linux, looked up before any fork (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_setup(parent: int, prctl: Optional[Callable]) -> None:
    """In a run's process, between fork and exec: SIGTERM as its parent-death signal (Linux), so
    the run stops when the sweep ends however it ends, and at once when the sweep is already gone;
    then the signals the sweep held while starting it unblocked, their actions the defaults
    (the run's program installs its own). Being Python code between fork and exec, it makes the
    start a plain fork; ``launch.sweep`` has no other thread then (it does not load JAX)."""
    for held in _HELD:
        signal.signal(held, signal.SIG_DFL)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM held back while a run's process is started and recorded: an
    interruption then comes once the sweep knows the process, which is stopped with the others."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ended(run: Run, code: int, seconds: float, device: str, log_path: pathlib.Path, *,
           stopping: bool = False) -> Outcome:
    """The outcome of a run's process that exited with ``code``: ``done`` (or ``incomplete``),
    ``stopped`` when the sweep stopped it (``stopping``) or a signal did (exit status 143 / 130,
    or killed by SIGTERM / SIGINT), else ``failed`` with the last line of its log."""
    if code == 0:
        return _finish(run, Outcome("done", seconds=seconds, device=device, log=str(log_path)))
    if stopping or code in _STOPPED_CODES:
        return Outcome("stopped", seconds=seconds, device=device, log=str(log_path))
    error = _last_error_line(log_path) or f"exit status {code}"
    return Outcome("failed", f"{error} (exit status {code}; log {log_path})", seconds, device, str(log_path))


def _stop(running: dict, by_name: Mapping[str, Run], stop_seconds: float) -> dict[str, Outcome]:
    """Stop every process in ``running`` (emptied): SIGTERM to all, then wait for them together
    up to ``stop_seconds``; SIGKILL for those still alive then, or for all at a second interruption."""
    for process, *_ in running.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + stop_seconds
    outcomes = {}
    for name, (process, device, log_path, start, handle) in list(running.items()):
        try:
            code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or interrupted again
            deadline = 0.0
            process.kill()
            code = process.wait()
        handle.close()
        del running[name]
        outcomes[name] = _ended(by_name[name], code, time.perf_counter() - start, device, log_path, stopping=True)
    return outcomes


def _execute_subprocesses(runs, workdir, *, parallel, devices, command, env, log_dir, echo,
                          poll_seconds, stop_seconds) -> dict[str, Outcome]:
    by_name = {run.name: run for run in runs}
    outcomes: dict[str, Outcome] = {}
    pending = list(runs)
    running: dict[str, tuple[subprocess.Popen, str, pathlib.Path, float, Any]] = {}
    load = {device: 0 for device in devices}
    total, started = len(runs), 0
    log_dir.mkdir(parents=True, exist_ok=True)
    prctl = _prctl()
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
                child_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": device}
                if parallel > len(devices):
                    # Runs share a GPU: JAX must not grab most of its memory for the first one.
                    child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
                resuming = run.status() == "partial"
                with _signals_held():
                    handle = open(log_path, "a")
                    process = subprocess.Popen(command(run, workdir, teacher_dir), env=child_env,
                                               stdout=handle, stderr=subprocess.STDOUT, process_group=0,
                                               preexec_fn=functools.partial(_child_setup, os.getpid(), prctl))
                    running[run.name] = (process, device, log_path, time.perf_counter(), handle)
                    started += 1
                    load[device] += 1
                    pending.remove(run)
                echo(f"[{started}/{total}] {run.name}: {'resuming' if resuming else 'running'} "
                     f"on device {device} (pid {process.pid}, log {log_path})")
            # Collect what ended.
            for name, (process, device, log_path, start, handle) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                handle.close()
                load[device] -= 1
                del running[name]
                outcomes[name] = _ended(by_name[name], code, time.perf_counter() - start, device, log_path)
                echo(f"{name}: {_outcome_line(outcomes[name])}")
            if pending and not running and all(_teacher_problem(r, outcomes, by_name) == "wait" for r in pending):
                raise SweepError(f"runs {[r.name for r in pending]} wait for teachers that never run")
            if running:
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        if running:
            echo(f"interrupted: stopping {len(running)} run{'s' if len(running) > 1 else ''} in progress "
                 f"(SIGTERM, then SIGKILL after {stop_seconds:g}s)")
        for name, outcome in _stop(running, by_name, stop_seconds).items():
            outcomes[name] = outcome
            echo(f"{name}: {_outcome_line(outcome)}")
        raise SweepStopped(outcomes) from None
    finally:
        _stop(running, by_name, stop_seconds)  # after an error: no run outlives the sweep
    return outcomes
