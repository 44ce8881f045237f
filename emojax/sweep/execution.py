"""Running a planned sweep: here one run after another, or as subprocesses N at a time, one GPU
each (:func:`execute`); failures recorded, students of a failed teacher skipped."""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import subprocess
import time
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence


from emojax.sweep.planning import Run
from emojax.sweep.specs import OK, SweepError

log = logging.getLogger(__name__)

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


