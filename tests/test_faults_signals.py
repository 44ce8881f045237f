"""Stopped by a signal: SIGTERM, what a batch scheduler sends before it kills a job, is handled as
Ctrl-C in every launcher, and a sweep's runs end with the sweep.

A launcher stopped by SIGTERM runs the cleanup Ctrl-C runs and ends with one line and exit status
143 (Ctrl-C: the same line's SIGINT form, killed by SIGINT as before); a stopped ``launch.train``
resumes to the numbers of an uninterrupted run. ``launch.sweep --parallel`` sends SIGTERM to its
runs when it is stopped, reports them as ``stopped`` (not failed), and a relaunch finishes them;
killed outright, the sweep still takes its runs with it (their parent-death signal).

Process states are read from ``/proc`` (Linux). Tests that train or start a launcher are slow.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from configs.compose import compose
from configs.experiments import load_sweep
from emojax import config as config_lib
from emojax import interrupts
from emojax import sweep as sweep_lib
from emojax.training.loop import fit
from emojax.runs import checkpoint as ckpt_lib
from emojax.sweep.execution import SweepStopped
from launchers import checkout_env
from test_faults import scores, text_config, train_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESUME = "what was finished is kept: start the same command again to resume"
SIGTERM_LINE = f"stopped by SIGTERM; {RESUME}"
SIGINT_LINE = f"stopped by Ctrl-C (SIGINT); {RESUME}"
STARTED = re.compile(r"^\[\d+/\d+\] (?P<name>.+): (?:running|resuming) on device \S+ \(pid (?P<pid>\d+), log ")

pytestmark = pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(),
                                reason="process states are read from /proc (Linux)")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (an ended, unreaped process is a zombie)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, seconds: float, what: str, every: float = 0.02):
    """``condition()``'s first true value within ``seconds``; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {seconds:g}s for {what}")


class Lines:
    """The lines of a text stream, read by a thread as they come."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self, seconds: float = 30) -> list[str]:
        self._thread.join(seconds)
        return self.lines


def started_runs(lines) -> dict[str, int]:
    """``run name -> pid`` of the runs a sweep started, from its output."""
    return {m["name"]: int(m["pid"]) for m in map(STARTED.match, list(lines)) if m}


def lock_pid(run_dir: pathlib.Path):
    """The pid a run directory's lock file records (None before a process locked it)."""
    try:
        return json.loads((run_dir / ckpt_lib.LOCK_FILE).read_text()).get("pid")
    except (OSError, ValueError):
        return None


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# Every launcher: SIGTERM as Ctrl-C, one line
# ---------------------------------------------------------------------------------------------
STOPPED_PROGRAM = textwrap.dedent("""
    import os, pathlib, signal, time
    from launch import _errors

    def main(argv):
        stop = signal.Signals[os.environ["STOP_SIGNAL"]]
        try:
            os.kill(os.getpid(), stop)
            time.sleep(60)
        finally:
            if stop == signal.SIGTERM:  # a second SIGTERM while stopping does not cut the cleanup short
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
            pathlib.Path(os.environ["CLEANED"]).write_text("cleaned")

    _errors.run(main)
""")


@pytest.mark.slow
@pytest.mark.parametrize("name,code,line", [("SIGTERM", 143, SIGTERM_LINE), ("SIGINT", -signal.SIGINT, SIGINT_LINE)],
                         ids=["SIGTERM", "SIGINT"])
def test_sigterm_runs_the_ctrl_c_cleanup_and_ends_in_one_line(tmp_path, name, code, line):
    cleaned = tmp_path / "cleaned"
    # SIGINT as a terminal delivers it: a runner started in the background (``cmd &`` without job
    # control) passes SIGINT on ignored, and a program that starts with it ignored keeps ignoring it.
    done = subprocess.run([sys.executable, "-c", STOPPED_PROGRAM], cwd=ROOT, capture_output=True, text=True,
                          env=checkout_env(STOP_SIGNAL=name, CLEANED=str(cleaned)), timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == code, done.stderr[-3000:]
    assert done.stderr.strip() == line and done.stdout == ""
    assert cleaned.read_text() == "cleaned"


# ---------------------------------------------------------------------------------------------
# Held while a checkpoint is written; a stop dropped in a finalizer or after the work is not lost
# ---------------------------------------------------------------------------------------------
class Stop(Exception):
    """What the test's SIGTERM handler raises (a launcher's raises KeyboardInterrupt)."""


@pytest.fixture
def sigterm_raises_stop():
    """SIGTERM handled by raising :class:`Stop`, as a launcher's handler raises its stop."""
    handled = []

    def handler(signum, frame):
        handled.append(signum)
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handled
    finally:
        signal.signal(signal.SIGTERM, previous)


def _spin(seconds: float = 0.05) -> None:
    """Python steps for the handler of a signal just sent to run between."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def test_signals_held_in_a_block_are_delivered_as_it_ends(sigterm_raises_stop):
    finished = []
    with pytest.raises(Stop):
        with interrupts.held():
            with interrupts.held():  # nested: delivered when the outermost ends
                os.kill(os.getpid(), signal.SIGTERM)
                _spin()
                finished.append("inner")
            _spin()
            assert sigterm_raises_stop == []
            finished.append("outer")
    assert finished == ["inner", "outer"] and sigterm_raises_stop == [signal.SIGTERM]
    assert not interrupts.holding() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Nothing held: the handler runs where the signal lands, as before.
    with pytest.raises(Stop):
        os.kill(os.getpid(), signal.SIGTERM)
        _spin(5)


def test_a_second_ctrl_c_while_held_is_delivered_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            _spin()
            reached.append("after the first")
            os.kill(os.getpid(), signal.SIGINT)
            _spin(5)
            reached.append("after the second")
    assert reached == ["after the first"]


def test_a_signal_ignored_before_the_block_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a program started with `cmd &`
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            _spin()
            os.kill(os.getpid(), signal.SIGINT)
            _spin()
        _spin()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_during_a_checkpoint_save_stops_after_it_and_the_epoch_is_kept(tmp_path, sigterm_raises_stop):
    checkpoints = ckpt_lib.RunCheckpoints(tmp_path)
    manager = checkpoints._state
    save = manager.save

    def save_signalled_half_way(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        _spin()
        return save(*args, **kwargs)

    manager.save = save_signalled_half_way
    state = {"w": np.arange(12.0).reshape(4, 3)}
    with pytest.raises(Stop):
        checkpoints.save_epoch(1, state, {"epoch": 1}, best_params={"w": np.ones(3)})
    checkpoints.close()
    assert sigterm_raises_stop == [signal.SIGTERM]
    assert json.loads(checkpoints.progress_path.read_text()) == {"epoch": 1}
    with ckpt_lib.RunCheckpoints(tmp_path) as again:
        epoch, restored = again.restore_latest(1, {"w": np.zeros((4, 3))})
        best = again.restore_best({"w": np.zeros(3)})
    assert epoch == 1 and np.array_equal(np.asarray(restored["w"]), state["w"])
    assert np.array_equal(np.asarray(best["w"]), np.ones(3))


DROPPED_PROGRAM = textwrap.dedent("""
    import gc, os, signal, time
    from launch import _errors

    class Finalized:
        def __del__(self):  # the SIGTERM lands here, where Python drops any exception
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                pass

    def main(argv):
        Finalized()
        gc.collect()
        time.sleep(float(os.environ["WORK_SECONDS"]))
        print("finished")

    _errors.run(main)
""")

AFTER_PROGRAM = textwrap.dedent("""
    import atexit, os, signal, time
    from launch import _errors

    def shutting_down():  # the program's work is done
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

    def main(argv):
        atexit.register(shutting_down)
        print("finished")

    _errors.run(main)
""")


def test_sigterm_dropped_in_a_finalizer_still_stops_the_launcher():
    done = subprocess.run([sys.executable, "-c", DROPPED_PROGRAM], cwd=ROOT, capture_output=True, text=True,
                          env=checkout_env(WORK_SECONDS="60"), timeout=50)
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.strip() == SIGTERM_LINE and done.stdout == ""


def test_sigterm_after_the_work_is_done_leaves_a_finished_program_finished():
    done = subprocess.run([sys.executable, "-c", AFTER_PROGRAM], cwd=ROOT, capture_output=True, text=True,
                          env=checkout_env(), timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "finished\n", "")


# ---------------------------------------------------------------------------------------------
# launch.train: stopped mid-run, then resumed to the uninterrupted numbers
# ---------------------------------------------------------------------------------------------
TRAIN_EPOCHS = 6


def _epoch(run_dir: pathlib.Path) -> int:
    try:
        return int(json.loads((run_dir / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_sigterm_stops_train_in_one_line_and_the_run_resumes(text_meld, tiny_bert, tmp_path):
    cfg = text_config(text_meld, tiny_bert, tmp_path / "cache", epochs=TRAIN_EPOCHS)
    whole = fit(cfg, tmp_path / "whole")
    workdir = tmp_path / "stopped"
    run_dir = config_lib.run_dir(cfg, workdir)
    command = [sys.executable, "-m", "launch.train", *train_flags(cfg), f"--workdir={workdir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=checkout_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _epoch(run_dir) >= 1 or process.poll() is not None, 300, "the first epoch")
        os.kill(process.pid, signal.SIGSTOP)  # held still, so the epoch it is stopped in is known
        stopped_at = _epoch(run_dir)
        os.kill(process.pid, signal.SIGTERM)
        os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, err[-3000:]
    assert 1 <= stopped_at <= TRAIN_EPOCHS - 2
    assert "Traceback" not in out + err
    assert [line for line in err.splitlines() if line.startswith("stopped by")] == [SIGTERM_LINE]
    assert last_line(err) == SIGTERM_LINE
    assert _epoch(run_dir) < TRAIN_EPOCHS and not (run_dir / "results.json").exists()
    # The same command resumes from the last finished epoch and ends where the uninterrupted run ends.
    done = subprocess.run(command, cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert scores(json.loads((run_dir / "results.json").read_text())) == \
        scores(json.loads((whole / "results.json").read_text()))
    assert [row["train_loss"] for row in json.loads((run_dir / "history.json").read_text())] == \
        [row["train_loss"] for row in json.loads((whole / "history.json").read_text())]


# ---------------------------------------------------------------------------------------------
# A sweep's runs end with it
# ---------------------------------------------------------------------------------------------
def _teachers(workdir) -> list:
    """Three runs (the makd teachers on MELD--E), with no data: for stand-in commands."""
    return sweep_lib.plan(load_sweep("makd"), workdir, "datasets", compose=compose, only="MELD--E/T/focal/")


SLEEPER = textwrap.dedent("""
    import pathlib, signal, sys, time
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(sys.argv[1]).write_text("ready")
    time.sleep(600)
""")


def test_interrupted_sweep_stops_its_runs_and_reports_them_stopped(tmp_path):
    """Interrupted, the sweep sends SIGTERM to its live runs, kills the one that ignores it after
    ``stop_seconds``, and reports both as stopped: no error, no line of their logs."""
    workdir = tmp_path / "runs"
    runs = _teachers(workdir)
    assert len(runs) == 3
    ready = {run.name: tmp_path / f"ready-{index}" for index, run in enumerate(runs)}

    def command(run, workdir_, teacher_dir):
        return [sys.executable, "-c", SLEEPER, str(ready[run.name]), "ignore" if run is runs[1] else "stop"]

    lines = []

    def echo(line):
        lines.append(line)
        if line.startswith("[2/3]"):  # both runs started: interrupt the sweep as Ctrl-C would
            wait_for(lambda: all(ready[run.name].exists() for run in runs[:2]), 60, "both runs to start")
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(SweepStopped) as stop:
        sweep_lib.execute(runs, workdir, parallel=2, command=command, log_dir=tmp_path / "logs", echo=echo,
                          poll_seconds=0.05, stop_seconds=1)
    assert time.monotonic() - start < 30
    outcomes = stop.value.outcomes
    assert {name: o.status for name, o in outcomes.items()} == {runs[0].name: "stopped", runs[1].name: "stopped"}
    assert all(o.error is None for o in outcomes.values())
    pids = started_runs(lines)
    assert sorted(pids) == sorted(outcomes) and not [pid for pid in pids.values() if alive(pid)]
    assert "interrupted: stopping 2 runs in progress (SIGTERM, then SIGKILL after 1s)" in lines
    for name in outcomes:
        assert any(re.fullmatch(rf"{re.escape(name)}: stopped \([\d.]+s\); starting the sweep again resumes it", line)
                   for line in lines), lines
    text = sweep_lib.write_report("makd", workdir, runs, outcomes)
    records = json.loads(sweep_lib.report_paths("makd", workdir)[1].read_text())["runs"]
    assert [r["status"] for r in records] == ["stopped", "stopped", "new"]
    assert "3 runs: 2 stopped, 1 new" in text and "Stopped runs were interrupted by a signal" in text
    assert "failed" not in text
    for run in runs[:2]:
        assert f"| {run.name} | stopped | - | - | - | - | - | {run.run_dir} |" in text


def test_interrupted_sweep_in_one_process_reports_the_run_stopped(tmp_path):
    """Without --parallel the run in progress is interrupted in this process: stopped, not failed."""
    workdir = tmp_path / "runs"
    runs = _teachers(workdir)

    def runner(cfg, workdir_, *, category="training", teacher=None):
        if int(cfg.seed) == runs[1].seed:
            raise KeyboardInterrupt
        run_dir = config_lib.run_dir(cfg, workdir_, category)
        run_dir.mkdir(parents=True)
        scores_ = {"accuracy": 0.5, "weighted_f1": 0.5}
        (run_dir / "results.json").write_text(json.dumps({"dev": scores_, "test": scores_}))

    lines = []
    with pytest.raises(SweepStopped) as stop:
        sweep_lib.execute(runs, workdir, runner=runner, echo=lines.append)
    assert {name: (o.status, o.error) for name, o in stop.value.outcomes.items()} == {
        runs[0].name: ("done", None), runs[1].name: ("stopped", None)}
    assert re.fullmatch(rf"\[2/3\] {re.escape(runs[1].name)}: stopped \([\d.]+s\); starting the sweep again "
                        "resumes it", lines[-1]), lines


def test_run_ended_by_a_signal_alone_is_stopped_not_failed(tmp_path):
    """A run whose process a signal ended while the sweep went on (exit status 143, or killed by
    SIGTERM) is stopped, not failed; the sweep carries on with the others."""
    workdir = tmp_path / "runs"
    runs = _teachers(workdir)
    endings = {runs[0].name: "import sys; print('epoch 1', flush=True); sys.exit(143)",
               runs[1].name: "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
               runs[2].name: "import sys; print('some progress', flush=True); sys.exit('error: boom')"}
    outcomes = sweep_lib.execute(runs, workdir, parallel=2,
                                 command=lambda run, w, t: [sys.executable, "-c", endings[run.name]],
                                 log_dir=tmp_path / "logs", echo=lambda line: None, poll_seconds=0.05)
    assert {name: (o.status, o.error) for name, o in outcomes.items() if o.status == "stopped"} == {
        runs[0].name: ("stopped", None), runs[1].name: ("stopped", None)}
    assert outcomes[runs[2].name].status == "failed" and "error: boom" in outcomes[runs[2].name].error


PARENT = textwrap.dedent("""
    import sys
    from configs.compose import compose
    from configs.experiments import load_sweep
    from emojax import sweep as sweep_lib
    workdir = sys.argv[1]
    runs = sweep_lib.plan(load_sweep("makd"), workdir, "datasets", compose=compose, only="MELD--E/T/focal/")
    child = "import time; time.sleep(600)"
    sweep_lib.execute(runs, workdir, parallel=2, command=lambda run, w, t: [sys.executable, "-c", child],
                      log_dir=sys.argv[2], echo=lambda line: print(line, flush=True), poll_seconds=0.05)
""")


@pytest.mark.slow
def test_sweep_killed_outright_takes_its_runs_with_it(tmp_path):
    """``kill -9`` of a sweep: no handler runs, yet its runs get SIGTERM (parent-death signal)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "runs"), str(tmp_path / "logs")],
                              cwd=ROOT, env=checkout_env(), stdout=subprocess.PIPE, text=True)
    out = Lines(parent.stdout)
    pids = {}
    try:
        pids = wait_for(lambda: len(started_runs(out.lines)) == 2 and started_runs(out.lines), 120,
                        "the sweep to start two runs")
        wait_for(lambda: all(alive(pid) for pid in pids.values()), 10, "the runs to start")
        parent.kill()
        parent.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in pids.values()), 30, "the runs to end with the sweep")
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# The real thing: launch.sweep --parallel=2 on three tiny text runs, stopped with SIGTERM.
SWEEP, ONLY = "baseline/unimodal", "MELD--E/T/"


@pytest.mark.slow
def test_sigterm_on_a_parallel_sweep_stops_its_runs_and_a_relaunch_finishes_them(text_meld, tiny_bert, tmp_path):
    data_root, workdir = tmp_path / "data", tmp_path / "runs"
    data_root.mkdir()
    (data_root / "MELD").symlink_to(text_meld)
    # Each run is frozen (SIGSTOP) as soon as it holds its lock, so neither can finish before the
    # other has started, however loaded the machine; both go on (SIGCONT) just before the SIGTERM.
    sets = {"encoders.T.model": str(tiny_bert), "train.epochs": "40", "train.patience": "40",
            "train.batch_size": "16", "cache.dir": str(tmp_path / "cache"), "progress": "False"}
    runs = sweep_lib.plan(load_sweep(SWEEP), workdir, data_root, compose=compose, overrides=sets, only=ONLY)
    assert len(runs) == 3
    by_name = {run.name: run for run in runs}
    command = [sys.executable, "-m", "launch.sweep", f"--sweep={SWEEP}", f"--only={ONLY}", "--parallel=2",
               f"--workdir={workdir}", f"--data_root={data_root}", *[f"--set={k}={v}" for k, v in sets.items()]]
    parent = subprocess.Popen(command, cwd=ROOT, env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    out, err = Lines(parent.stdout), Lines(parent.stderr)
    children = {}
    try:
        children = wait_for(lambda: len(started_runs(out.lines)) == 2 and started_runs(out.lines), 120,
                            "the sweep to start two runs")
        # Both runs are under way: each holds its run directory's lock (taken as training starts).
        frozen = set()

        def freeze_locked():
            for name, pid in children.items():
                if name not in frozen and lock_pid(by_name[name].run_dir) == pid:
                    os.kill(pid, signal.SIGSTOP)
                    frozen.add(name)
            return len(frozen) == len(children)

        wait_for(freeze_locked, 300, "both runs to lock their run directories")
        assert not [name for name in children if (by_name[name].run_dir / "results.json").exists()]
        for pid in children.values():
            os.kill(pid, signal.SIGCONT)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)  # the runs get 30 s to stop, then SIGKILL
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in children.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    lines, errors = out.join(), err.join()
    assert parent.returncode == 143, "\n".join(lines + errors)[-3000:]
    assert not [pid for pid in children.values() if alive(pid)]
    assert errors[-1] == SIGTERM_LINE and "Traceback" not in "\n".join(errors)
    assert "interrupted: stopping 2 runs in progress (SIGTERM, then SIGKILL after 30s)" in lines
    for name in children:
        assert any(line.startswith(f"{name}: stopped (") and line.endswith("; starting the sweep again resumes it")
                   for line in lines), lines
        # Each run stopped itself on the SIGTERM (no SIGKILL): its log ends with its own line.
        log = workdir / "sweeps" / "baseline-unimodal" / "logs" / f"{name.replace('/', '__')}.log"
        assert last_line(log.read_text()) == SIGTERM_LINE
    assert not [line for line in lines if "failed" in line]
    records = json.loads(sweep_lib.report_paths(SWEEP, workdir)[1].read_text())["runs"]
    assert {r["name"]: r["status"] for r in records} == {
        run.name: "stopped" if run.name in children else "new" for run in runs}
    assert all(r["error"] is None for r in records)
    for name in children:  # nobody holds the stopped runs
        ckpt_lib.RunLock(by_name[name].run_dir).acquire().release()
    # Started again, the sweep resumes the stopped runs, runs the third, and none failed.
    done = subprocess.run(command, cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "failed" not in done.stdout
    records = json.loads(sweep_lib.report_paths(SWEEP, workdir)[1].read_text())["runs"]
    assert {r["name"]: r["status"] for r in records} == {run.name: "done" for run in runs}
    assert all((run.run_dir / "results.json").exists() for run in runs)
