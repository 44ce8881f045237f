"""What a researcher watching a run sees: TensorBoard event files that match the run's own record,
resume without duplicated points, and launchers that keep JAX's and Orbax's chatter out of the output."""
import io
import json
import os
import pathlib
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from configs.compose import compose
from emojax.progress import bars_shown
from emojax.training import loop
from emojax.training.events import EVENTS_DIR, RunEvents, event_files, read_scalars

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(data, bert, epochs=2):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.train.patience = 100
    cfg.progress = False
    return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_meld, tiny_bert):
    workdir = tmp_path_factory.mktemp("events-run")
    cfg = tiny_config(text_meld, tiny_bert)
    return cfg, workdir, loop.fit(cfg, workdir)


@pytest.mark.slow
def test_events_match_the_runs_history(finished_run):
    _, _, run_dir = finished_run
    history = json.loads((run_dir / "history.json").read_text())
    scalars = read_scalars(run_dir / EVENTS_DIR)
    losses = dict(scalars["train/loss"])
    total = history[-1]["steps"]
    assert sorted(losses) == list(range(1, total + 1))  # one point per global step, none twice
    first = 1
    for row in history:
        epoch_losses = [losses[step] for step in range(first, row["steps"] + 1)]
        assert np.mean(epoch_losses) == pytest.approx(row["train_loss"], rel=1e-5)
        first = row["steps"] + 1
    by_step = {name: dict(points) for name, points in scalars.items()}
    for row in history:
        step = row["steps"]
        assert by_step["train/epoch_loss"][step] == pytest.approx(row["train_loss"], rel=1e-6)
        # in percent, as the console and metrics.md show them
        assert by_step["dev/accuracy"][step] == pytest.approx(100 * row["dev"]["accuracy"], rel=1e-6)
        assert by_step["dev/weighted_f1"][step] == pytest.approx(100 * row["dev"]["weighted_f1"], rel=1e-6)
        assert by_step["epoch"][step] == row["epoch"]
        assert by_step["train/steps_per_second"][step] > 0
    rates = [value for _, value in scalars["train/learning_rate"]]
    assert len(rates) == total and max(rates) == pytest.approx(1e-2, rel=1e-5) and rates[0] < rates[1]
    norms = [value for _, value in scalars["train/grad_norm"]]
    assert len(norms) == total and all(np.isfinite(norms)) and min(norms) > 0


@pytest.mark.slow
def test_events_change_no_number_of_the_run(finished_run, tmp_path, monkeypatch):
    cfg, _, run_dir = finished_run
    monkeypatch.setattr(loop, "RunEvents",
                        lambda folder, *, first_step, enabled: RunEvents(folder, first_step=first_step, enabled=False))
    quiet = loop.fit(cfg, tmp_path)
    assert not (quiet / EVENTS_DIR).exists()
    assert json.loads((quiet / "results.json").read_text()) == json.loads((run_dir / "results.json").read_text())
    strip = [{k: v for k, v in row.items() if "seconds" not in k}
             for row in json.loads((run_dir / "history.json").read_text())]
    assert [{k: v for k, v in row.items() if "seconds" not in k}
            for row in json.loads((quiet / "history.json").read_text())] == strip


@pytest.mark.slow
def test_resumed_run_writes_a_new_file_and_no_duplicate_steps(finished_run, tmp_path):
    cfg, _, whole = finished_run
    resumed = loop.fit(cfg, tmp_path, max_epochs=1)
    loop.fit(cfg, tmp_path)
    assert len(event_files(resumed / EVENTS_DIR)) == 3  # one per epoch, one with the test scores
    a, b = read_scalars(whole / EVENTS_DIR), read_scalars(resumed / EVENTS_DIR)
    for tag in ("train/loss", "train/learning_rate", "dev/accuracy", "epoch"):
        assert [step for step, _ in b[tag]] == [step for step, _ in a[tag]], tag
        np.testing.assert_allclose([v for _, v in b[tag]], [v for _, v in a[tag]], rtol=1e-6)
    loop.fit(cfg, tmp_path)  # a finished run started again writes no new file
    assert len(event_files(resumed / EVENTS_DIR)) == 3


def test_replayed_steps_replace_the_earlier_points(tmp_path):
    with RunEvents(tmp_path, first_step=1) as events:
        for step in range(1, 11):
            events.scalars(step, {"train/loss": float(step)})
    with RunEvents(tmp_path, first_step=6) as events:  # resumed from an older state than the last epoch
        for step in range(6, 9):
            events.scalars(step, {"train/loss": 100.0 + step})
    assert read_scalars(tmp_path / EVENTS_DIR)["train/loss"] == (
        [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)])
    RunEvents(tmp_path / "other", first_step=1, enabled=False).scalars(1, {"x": 1.0})
    assert not (tmp_path / "other").exists()


def test_a_flushed_epoch_is_on_disk_and_the_next_one_follows(tmp_path):
    events = RunEvents(tmp_path, first_step=1)
    for step in range(1, 201):  # more than tensorboardX queues before its own thread writes them
        events.scalars(step, {"train/loss": float(step), "train/grad_norm": 1.0 / step})
    events.flush()  # the epoch's end: everything on disk now, without close
    scalars = read_scalars(tmp_path / EVENTS_DIR)
    assert scalars["train/loss"] == [(s, float(s)) for s in range(1, 201)]
    assert scalars["train/grad_norm"] == [(s, float(np.float32(1.0 / s))) for s in range(1, 201)]
    events.scalars(201, {"train/loss": 201.0})  # the next epoch: a file of its own, no purge marker
    events.flush()
    events.close()
    assert len(event_files(tmp_path / EVENTS_DIR)) == 2
    assert read_scalars(tmp_path / EVENTS_DIR)["train/loss"] == [(s, float(s)) for s in range(1, 202)]


def test_a_torn_last_record_ends_the_file(tmp_path):
    with RunEvents(tmp_path, first_step=1) as events:
        for step in range(1, 6):
            events.scalars(step, {"train/loss": float(step)})
    (path,) = event_files(tmp_path / EVENTS_DIR)
    whole = path.read_bytes()
    last = 0  # where the last record starts: 8 bytes of length, 4 of its CRC, the data, 4 of its CRC
    while last + 12 + struct.unpack("<Q", whole[last:last + 8])[0] + 4 < len(whole):
        last += 12 + struct.unpack("<Q", whole[last:last + 8])[0] + 4
    for end in (last + 5, last + 10, last + 12, len(whole) - 9, len(whole) - 2):  # length, its CRC, data, CRC
        path.write_bytes(whole[:end])
        assert read_scalars(tmp_path / EVENTS_DIR)["train/loss"] == [(s, float(s)) for s in range(1, 5)]


def test_events_module_keeps_pytorch_unloaded(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('torch was imported')\n")
    code = ("import sys, emojax.training.events; assert 'torch' not in sys.modules; print('loaded', flush=True); "
            "import torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    # The module imported without loading torch; torch still imports afterwards (here: the fake one).
    assert done.stdout.strip() == "loaded" and "torch was imported" in done.stderr, done.stderr


def test_progress_bars_off_when_output_is_not_a_terminal(monkeypatch):
    assert not bars_shown(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bars_shown(True)


@pytest.mark.slow
def test_evaluate_prints_no_backend_or_orbax_chatter(finished_run):
    _, workdir, run_dir = finished_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JAX_PLATFORMS", None)
    done = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--run_dir={run_dir}", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout.lower()
    assert "Unable to initialize backend" not in done.stderr
    assert "falling back" not in done.stderr.lower()
    info_lines = [line for line in done.stderr.splitlines() if re.match(r"I\d{4} ", line)]
    assert info_lines == [], info_lines
    assert "orbax" not in done.stderr.lower(), done.stderr
