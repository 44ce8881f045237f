"""Sweeps on a SLURM cluster (``launch.sweep --executor=slurm``, ``emojax.sweep.slurm``), against a
real one: ``.ci/slurm-up.sh`` starts a one-node cluster on this machine, whose jobs run the
checkout's python on the same filesystem.

- The demo sweep's student and its teacher, submitted through the launcher, give the table and the
  results of the same sweep run locally (the student's job waits for its teacher's: ``afterok``).
- A run killed at its job's time limit is reported ``stopped``; submitting the sweep again while
  its job runs submits nothing, and once it has ended resumes the run from its last finished
  epoch, to the numbers of an uninterrupted run. A teacher whose job fails has its student's job
  cancelled and the student reported skipped, the failure with its last error line and log.

Without ``sinfo`` the tests skip, unless ``EMOJAX_REQUIRE_SLURM`` is set (CI sets it): then a
missing or broken cluster fails them with the reason."""
import json
import re
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from configs.compose import compose
from configs.experiments import load_sweep
from emojax import sweep as sweep_lib
from emojax.data.demo import generate_demo
from emojax.runs import checkpoint as ckpt_lib
from emojax.sweep.slurm import SlurmOptions, execute_slurm, queue_states, record_path
from launch._commands import checkout_env, train_command

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 6

pytestmark = pytest.mark.slow


def _cluster_problem():
    """Why no job can run here (None: a node is up)."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: no SLURM cluster on this machine (.ci/slurm-up.sh starts one)"
    done = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=60)
    states = done.stdout.split()
    if done.returncode != 0 or not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node is up (sinfo: {(done.stdout + done.stderr).strip() or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("EMOJAX_REQUIRE_SLURM"):
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-data")
    generate_demo(root / "demo", seed=0, sizes={"train": 32, "dev": 12, "test": 12})
    return root


@pytest.fixture(scope="module")
def overrides(tmp_path_factory, tiny_bert):
    """The runs' fields: small and quick, one feature cache for all (features are computed once)."""
    return {"train.epochs": EPOCHS, "train.batch_size": 8, "train.patience": 100, "dataset.generate": False,
            "progress": False, "encoders.T.model": str(tiny_bert),
            "cache.dir": str(tmp_path_factory.mktemp("slurm-cache"))}


def _start_sweep(workdir, data_root, overrides, *flags) -> subprocess.Popen:
    """``launch.sweep`` on the demo sweep's student and its teacher, started."""
    return subprocess.Popen([sys.executable, "-m", "launch.sweep", "--sweep=demo", "--only=focal+dist",
                             f"--workdir={workdir}", f"--data_root={data_root}",
                             *[f"--set={k}={v}" for k, v in overrides.items()],
                             *flags], cwd=ROOT, env=dict(os.environ, **checkout_env()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _output(process: subprocess.Popen) -> str:
    try:
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (out + err)[-4000:]
    return out


def _scores(run_dir):
    results = json.loads((pathlib.Path(run_dir) / "results.json").read_text())
    return {split: {m: results[split][m] for m in ("accuracy", "weighted_f1")} for split in ("dev", "test")}


def _demo_runs(workdir, data_root, overrides):
    return sweep_lib.plan(load_sweep("demo"), workdir, data_root, compose=compose, overrides=overrides,
                          only="focal+dist")


def test_slurm_sweep_gives_the_local_table_and_results(cluster, data_root, overrides, tmp_path):
    local_runs = _demo_runs(tmp_path / "local", data_root, overrides)  # here, one after the other
    sweep_lib.write_report("demo", tmp_path / "local", local_runs,
                           sweep_lib.execute(local_runs, tmp_path / "local", echo=lambda line: None))
    slurm = _output(_start_sweep(tmp_path / "slurm", data_root, overrides, "--executor=slurm", "--slurm_cpus=1",
                                 "--slurm_time=10", "--slurm_poll_seconds=0.5"))
    teacher, student = "demo/T/focal/seed=0", "demo/T+A+V/focal+dist/seed=0"
    lines = {line.split(":", 1)[0]: line for line in slurm.splitlines() if " submitted as job " in line}
    teacher_job = lines[teacher].split(" as job ")[1].split(",")[0]
    assert f"(after job {teacher_job})" in lines[student], slurm
    tables = {}
    for name in ("local", "slurm"):
        workdir = tmp_path / name
        text = (workdir / "sweep_demo.md").read_text()
        assert "2 runs: 2 done" in text, text
        # The minutes column (1 decimal) is each run's own time, not a result: the rest must match.
        tables[name] = re.sub(r"\| \d+\.\d \|", "| MINUTES |", text.replace(str(workdir), "WORKDIR"))
        assert tables[name].count("| MINUTES |") == 4, text  # the two configs' rows, then their runs'
    assert tables["slurm"] == tables["local"]
    report = {name: json.loads((tmp_path / name / "sweep_demo.json").read_text()) for name in ("local", "slurm")}
    assert [g["dev"] for g in report["slurm"]["groups"]] == [g["dev"] for g in report["local"]["groups"]]
    assert [g["test"] for g in report["slurm"]["groups"]] == [g["test"] for g in report["local"]["groups"]]
    for local_run, slurm_run in zip(report["local"]["runs"], report["slurm"]["runs"]):
        assert slurm_run["job"] and slurm_run["log"] and pathlib.Path(slurm_run["log"]).exists()
        assert _scores(slurm_run["run_dir"]) == _scores(local_run["run_dir"])
    student_dir = pathlib.Path(report["slurm"]["runs"][1]["run_dir"])
    assert json.loads((student_dir / "teacher.json").read_text())["run_dir"] == report["slurm"]["runs"][0]["run_dir"]
    # Submitted again: both runs are finished, no job is submitted.
    lines = []
    runs = _demo_runs(tmp_path / "slurm", data_root, overrides)
    again = execute_slurm(runs, tmp_path / "slurm", command=train_command, folder=tmp_path / "again",
                          options=SlurmOptions(cpus=1), echo=lines.append)
    assert {name: o.status for name, o in again.items()} == {run.name: "finished" for run in runs}
    assert lines == [f"{run.name}: finished already, skipped" for run in runs]


def _lock_pid(run_dir):
    try:
        return json.loads((run_dir / ckpt_lib.LOCK_FILE).read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _epoch(run_dir) -> int:
    try:
        return int(json.loads((run_dir / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_slurm_time_limit_resubmission_and_failed_teacher(cluster, data_root, overrides, tmp_path):
    workdir = tmp_path / "runs"
    teacher = sweep_lib.spec("dataset=demo,encoders=T,loss=focal", 0)
    broken = sweep_lib.spec("dataset=demo,encoders=T,loss=focal", 1, dataset__path=str(tmp_path / "missing"))
    student = sweep_lib.spec("dataset=demo,encoders=T+A,loss=focal+dist", 1, teacher=broken["name"])
    runs = sweep_lib.plan([teacher, broken, student], workdir, data_root, compose=compose,
                          overrides=overrides)
    run = runs[0]
    options = SlurmOptions(cpus=1, time="10", signal_delay=0, poll_seconds=0.5)
    kwargs = dict(command=train_command, folder=tmp_path / "slurm", env=checkout_env())
    lines, result = [], {}
    thread = threading.Thread(target=lambda: result.update(execute_slurm(runs, workdir, options=options,
                                                                         echo=lines.append, **kwargs)))
    thread.start()
    # Held still once an epoch is done, the run is still going when its job's time limit, lowered
    # to one minute, ends.
    deadline = time.monotonic() + 240
    while _epoch(run.run_dir) < 1 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = _lock_pid(run.run_dir)
    assert pid and _epoch(run.run_dir) >= 1, lines
    os.kill(pid, signal.SIGSTOP)
    stopped_at = _epoch(run.run_dir)
    job_id = json.loads(record_path(workdir, run).read_text())["job_id"]
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=1"], check=True, timeout=60)
    # While its job runs, submitting the sweep again submits nothing.
    again = execute_slurm(runs[:1], workdir, options=SlurmOptions(cpus=1, wait=False), echo=lines.append, **kwargs)
    assert again[run.name].status == "submitted" and again[run.name].job == job_id
    assert f"{run.name}: job {job_id} is running already, not submitted again" in lines
    assert json.loads(record_path(workdir, run).read_text())["job_id"] == job_id
    # The uninterrupted run, here, while the job waits for its end.
    whole = sweep_lib.plan([teacher], tmp_path / "whole", data_root, compose=compose,
                           overrides=overrides)
    sweep_lib.execute(whole, tmp_path / "whole", echo=lambda line: None)
    thread.join(300)
    assert not thread.is_alive()
    assert queue_states([job_id]) == {job_id: "TIMEOUT"}
    outcome = result[run.name]
    assert outcome.status == "stopped" and outcome.error.startswith(f"time limit (job {job_id} TIMEOUT"), outcome
    assert 1 <= stopped_at < EPOCHS and _epoch(run.run_dir) == stopped_at
    assert not (run.run_dir / "results.json").exists()
    # The broken teacher failed with its launcher's error line and log; its student's job was cancelled.
    failed = result[runs[1].name]
    assert failed.status == "failed" and failed.error.startswith("error: ") and "dataset.path" in failed.error
    assert f"log {failed.log}" in failed.error and failed.error.splitlines()[0].split(" (job ")[0] in \
        pathlib.Path(failed.log).read_text()
    skipped = result[runs[2].name]
    assert skipped.status == "skipped" and skipped.error.startswith(f"teacher {runs[1].name} failed: error: ")
    assert queue_states([skipped.job]) == {skipped.job: "CANCELLED"}
    text = sweep_lib.write_report("slurm", workdir, runs, result)
    assert f"| {runs[1].name} | failed | - | - | - | - | - | {failed.error} |" in text
    # Submitted again with a longer limit, the run resumes from its last finished epoch and ends as
    # an uninterrupted run does.
    lines.clear()
    resumed = execute_slurm(runs[:1], workdir, options=SlurmOptions(cpus=1, time="10", poll_seconds=0.5),
                            echo=lines.append, **kwargs)
    assert resumed[run.name].status == "done", lines
    assert any(line.startswith(f"{run.name}: resuming as job") for line in lines), lines
    assert _scores(run.run_dir) == _scores(whole[0].run_dir)
    history = [json.loads((r.run_dir / "history.json").read_text()) for r in (run, whole[0])]
    assert [row["train_loss"] for row in history[0]] == [row["train_loss"] for row in history[1]]


def test_a_refused_submission_is_one_line(tmp_path):
    """sbatch refusing the jobs (a wrong partition, no cluster) ends the sweep with one error line
    that says why, not a traceback; no SLURM daemon is needed for this."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: Batch job submission failed: '
                                 'Invalid partition name specified" >&2\nexit 1\n')
    (fake / "sbatch").chmod(0o755)
    env = dict(checkout_env(), PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([sys.executable, "-m", "launch.sweep", "--sweep=demo", "--executor=slurm",
                           f"--workdir={tmp_path / 'runs'}", f"--data_root={tmp_path / 'data'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: sbatch could not submit 4 run(s) (demo/T/focal/seed=0, ...): sbatch: error: Batch job submission "
        "failed: Invalid partition name specified; is this a SLURM cluster (sinfo shows its nodes)?")
    assert not list((tmp_path / "runs").glob("sweeps/slurm-jobs/**/*.json"))
