"""Under faults, what a run writes and reads back: never lost, never silently wrong.

* A finished run started again on a full disk keeps every file it wrote (config, meta, tokenizer,
  results): files are written atomically and unchanged ones are not rewritten.
* A run's data record covers its media: a re-encoded or touched audio file refuses the finished
  run exactly as a changed CSV does, and ``launch.evaluate`` refuses changed data unless asked.
* A ``config.json`` edited after training is refused by evaluate, inference and ``tool info``.
* A missing or empty dev split, a diverging learning rate and read-only folders end a run with
  one line naming the cause, before the work they would spoil.

Disk-full and read-only cases mount a small tmpfs or a read-only bind mount (root only; they
skip elsewhere, saying why).
"""
import contextlib
import json
import os
import pathlib
import shutil
import subprocess

import ml_collections
import numpy as np
import pytest
import soundfile as sf

from emojax import config as config_lib
from emojax.training.evaluation import load_run
from emojax.inference import Estimator
from emojax.runs.records import RunConfigError
from emojax.training.loop import DivergedError, fit
from emojax.training.preparation import DataChangedError
from launch import tool as tool_lib
from test_faults import one_error_line, text_config, train_flags

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# Mounts (root only)
# ---------------------------------------------------------------------------------------------
def _mount(*args) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(folder: pathlib.Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` for the block; skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({getattr(err, 'stderr', err)})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def read_only(folder: pathlib.Path):
    """``folder`` bind-mounted read-only onto itself for the block (as root, permissions alone do
    not stop writes); skips where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    try:
        _mount("--bind", str(folder), str(folder))
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot bind-mount here ({getattr(err, 'stderr', err)})")
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: pathlib.Path) -> pathlib.Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        for size in (64 << 10, 4096, 512, 1):  # down to the last partial blocks
            block = b"\0" * size
            while True:
                try:
                    handle.write(block)
                except OSError:
                    break
    return filler


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (not followed into links) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def identities(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every regular file under ``folder`` -> ``(inode, mtime_ns)``: equal only if not rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


# ---------------------------------------------------------------------------------------------
# 1. A finished run started again on a full disk
# ---------------------------------------------------------------------------------------------
def test_restart_on_a_full_disk_keeps_every_run_file(tmp_path, text_meld, tiny_bert, launcher):
    cfg = text_config(text_meld, tiny_bert, tmp_path / "cache", epochs=2)
    with tmpfs(tmp_path / "disk", "64m") as disk:
        workdir = disk / "runs"
        run_dir = fit(cfg, workdir)
        before, written = snapshot(run_dir), identities(run_dir)
        assert {"config.json", "meta.json", "results.json", "preprocessing/T/tokenizer_config.json"} <= set(before)
        fit(cfg, workdir)  # started again: every file is unchanged, so none is written again
        assert identities(run_dir) == written, sorted(k for k, v in identities(run_dir).items() if written.get(k) != v)
        filler = fill(disk)
        try:
            fit(cfg, workdir)  # nothing to write: it may finish, or stop on the full disk
        except OSError as err:
            assert err.errno == 28, err  # ENOSPC, and nothing else
        done = launcher.run("train", *train_flags(cfg), f"--workdir={workdir}")
        if done.returncode:  # the launcher says it in one line
            assert "No space left on device" in one_error_line(done)
        after = snapshot(run_dir)
        assert after == before, sorted(name for name in before if after.get(name) != before[name])
        filler.unlink()
        # Every later command reads the run as it was.
        prep, _, _, progress = load_run(run_dir, workdir)
        assert progress["finished"] and prep.cfg.encoders.T.pooling == cfg.encoders.T.pooling
        assert tool_lib.run_summary(run_dir, workdir)["status"] == "finished"


# ---------------------------------------------------------------------------------------------
# 2. The data record covers media
# ---------------------------------------------------------------------------------------------
def _tone(path: pathlib.Path, freq: float, seconds: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")


def _with_audio(data: pathlib.Path) -> None:
    """Audio for the first 24 utterances of each split (the rest run without audio)."""
    for split in ("train", "dev", "test"):
        for i in range(24):
            dialogue, utt = divmod(i, 4)
            _tone(data / "audios" / split / f"dia{dialogue}_utt{utt}.flac", 200 + 40 * (i % 7))


def _audio_config(data, bert, cache):
    cfg = text_config(data, bert, cache, epochs=2)
    cfg.modalities = "T+A"
    cfg.encoders.A = ml_collections.ConfigDict({"family": "classic-audio", "model": "librosa"})
    return cfg


@pytest.fixture
def audio_run(tmp_path, text_meld, tiny_bert):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    _with_audio(data)
    cfg = _audio_config(data, tiny_bert, tmp_path / "cache")
    config_lib.validate(cfg)
    workdir = tmp_path / "runs"
    return cfg, data, workdir, fit(cfg, workdir)


def test_changed_media_refuses_a_finished_run(audio_run):
    cfg, data, workdir, run_dir = audio_run
    record = json.loads((run_dir / "data.json").read_text())
    assert len(record["media"]) == 72 and "audios/train/dia0_utt0.flac" in record["media"]
    before = snapshot(run_dir)
    clip = data / "audios" / "train" / "dia2_utt1.flac"
    _tone(clip, 900.0, seconds=0.7)  # re-encoded: other content, other size
    with pytest.raises(DataChangedError, match=r"dia2_utt1\.flac: has changed \(size"):
        fit(cfg, workdir)
    assert snapshot(run_dir) == before  # results, meta and its feature statistics untouched
    with pytest.raises(DataChangedError, match=r"dia2_utt1\.flac.*--allow_data_change"):
        load_run(run_dir, workdir)
    # Scoring the data as it is now, when asked to.
    prep, _, _, _ = load_run(run_dir, workdir, allow_data_change=True)
    assert "test" in prep.features


def test_touched_added_or_removed_media_refuse_a_finished_run(audio_run):
    cfg, data, workdir, run_dir = audio_run
    clip = data / "audios" / "dev" / "dia0_utt0.flac"
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, written again
    with pytest.raises(DataChangedError, match=r"dev/dia0_utt0\.flac: has changed \(modified since\)"):
        fit(cfg, workdir)
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fit(cfg, workdir)  # restored: the finished run is accepted again
    _tone(data / "audios" / "test" / "dia9_utt0.flac", 300.0)  # a sample that had no audio gets one
    with pytest.raises(DataChangedError, match=r"test/dia9_utt0\.flac: is new"):
        fit(cfg, workdir)
    (data / "audios" / "test" / "dia9_utt0.flac").unlink()
    (data / "audios" / "train" / "dia1_utt3.flac").unlink()
    with pytest.raises(DataChangedError, match=r"train/dia1_utt3\.flac: is gone"):
        fit(cfg, workdir)


# ---------------------------------------------------------------------------------------------
# 3. Evaluate and infer on changed data; an edited config
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def text_run(tmp_path, text_meld, tiny_bert):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    cfg = text_config(data, tiny_bert, tmp_path / "cache", epochs=2)
    workdir = tmp_path / "runs"
    return cfg, data, workdir, fit(cfg, workdir)


def test_evaluate_and_infer_on_a_changed_test_csv(text_run, launcher, tmp_path):
    cfg, data, workdir, run_dir = text_run
    test_csv = data / "test_sent_emo.csv"
    test_csv.write_text(test_csv.read_text().replace("wow", "sad"))
    line = one_error_line(launcher.run("evaluate", f"--run_dir={run_dir}"))
    assert "test_sent_emo.csv: has changed" in line and "--allow_data_change" in line
    assert not (run_dir / "evaluation.json").exists()
    done = launcher.run("evaluate", f"--run_dir={run_dir}", "--allow_data_change")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_dir / "evaluation.json").read_text())["data_changed_allowed"] is True
    # Batch prediction scores the file it is given, and says it is the run's own split, changed.
    done = launcher.run("infer", f"--run_dir={run_dir}", f"--input_csv={test_csv}",
                        f"--output={tmp_path / 'preds.csv'}", "--noprogress")
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [x for x in done.stderr.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "test_sent_emo.csv has changed since the run" in notes[0]


def test_an_edited_config_is_refused_by_evaluate_infer_and_info(text_run, launcher):
    cfg, data, workdir, run_dir = text_run
    path = run_dir / "config.json"
    original = path.read_text()
    for key, value in (("pooling", "cls"), ("max_length", 16)):
        edited = json.loads(original)
        edited["encoders"]["T"][key] = value
        path.write_text(json.dumps(edited, indent=2, sort_keys=True))
        with pytest.raises(RunConfigError, match=r"config\.json: edited since the run was made"):
            load_run(run_dir, workdir)
        with pytest.raises(RunConfigError, match=r"config\.json: edited since the run was made"):
            Estimator(run_dir)
        row = tool_lib.run_summary(run_dir, workdir)
        assert row["status"].startswith("config.json edited (hash ") and "test_acc" not in row
        assert "config.json: edited since the run was made" in one_error_line(
            launcher.run("infer", f"--run_dir={run_dir}", "--text=hello there"))
    edited = json.loads(original)
    edited["seed"] = 7
    path.write_text(json.dumps(edited))
    assert "seed is 7, but the run was made with seed 0" in one_error_line(
        launcher.run("evaluate", f"--run_dir={run_dir}"))
    path.write_text(original)
    assert tool_lib.run_summary(run_dir, workdir)["status"] == "finished"
    Estimator(run_dir)


# ---------------------------------------------------------------------------------------------
# 4. One line before the work: no dev split, divergence, read-only folders
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dev", ["missing", "header only"])
def test_a_missing_or_empty_dev_split_is_refused_before_any_feature(dev, tmp_path, text_meld, tiny_bert, launcher):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    dev_csv = data / "dev_sent_emo.csv"
    if dev == "missing":
        dev_csv.unlink()
    else:
        dev_csv.write_text(dev_csv.read_text().splitlines()[0] + "\n")
    cfg = text_config(data, tiny_bert, tmp_path / "cache")
    line = one_error_line(launcher.run("train", *train_flags(cfg), f"--workdir={tmp_path / 'runs'}"))
    assert "dataset.path" in line and "has no dev rows" in line and "dev_sent_emo.csv" in line
    assert not any((tmp_path / "cache").rglob("*.safetensors"))  # no feature was computed


def test_a_diverging_learning_rate_is_one_line_naming_epoch_and_step(tmp_path, text_meld, tiny_bert, launcher):
    cfg = text_config(text_meld, tiny_bert, tmp_path / "cache")
    cfg.train.lr = 1e30
    with pytest.raises(DivergedError, match=r"train\.lr: training diverged at epoch 1, step \d+ "):
        fit(cfg, tmp_path / "runs")
    flags = [f for f in train_flags(cfg) if not f.startswith("--config.train.lr=")] + ["--config.train.lr=1e30"]
    line = one_error_line(launcher.run("train", *flags, f"--workdir={tmp_path / 'runs2'}"))
    assert "training diverged at epoch 1, step" in line and "lower train.lr" in line


def test_read_only_cache_and_run_folders_are_refused_before_work(tmp_path, text_run, launcher):
    cfg, data, workdir, run_dir = text_run
    with read_only(run_dir):
        line = one_error_line(launcher.run("evaluate", f"--run_dir={run_dir}"))
        assert "--run_dir" in line and "cannot be written" in line
    assert not (run_dir / "evaluation.json").exists()
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    cfg.cache.dir = str(cache)
    cfg.seed = 1
    with read_only(cache):
        line = one_error_line(launcher.run("train", *train_flags(cfg), "--config.seed=1",
                                           f"--workdir={tmp_path / 'runs-ro'}"))
        assert line.startswith("error: cache.dir:") and "cannot be written" in line
    assert not (tmp_path / "runs-ro" / "checkpoints").exists() or not any(
        (tmp_path / "runs-ro" / "checkpoints").rglob("progress.json"))
