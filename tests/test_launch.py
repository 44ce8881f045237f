"""The absl launchers as a user runs them: train -> evaluate -> infer, and early config errors."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs.compose import PARTS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_launch_train_evaluate_infer(tmp_path, text_meld, tiny_bert):
    workdir = tmp_path / "runs"
    train = _run("launch.train", "--config=configs/train.py:dataset=MELD--E,encoders=T,loss=focal",
                 f"--config.dataset.path={text_meld}", f"--config.encoders.T.model={tiny_bert}",
                 "--config.train.epochs=3", "--config.train.lr=0.01", "--config.seed=114", "--config.progress=False",
                 f"--workdir={workdir}")
    assert train.returncode == 0, train.stderr[-3000:]
    lines = train.stdout.strip().splitlines()
    run_dir = pathlib.Path(lines[-1])
    assert run_dir.is_dir() and run_dir.name.endswith("--114")
    assert run_dir.relative_to(workdir).parts[:5] == ("checkpoints", "training", "MELD--E", "frozen--32--focal",
                                                      "1xE--T")
    assert "| **all** |" in train.stdout  # the metrics table is printed
    results = json.loads((run_dir / "results.json").read_text())
    for split in ("dev", "test"):
        assert {"accuracy", "weighted_f1"} <= set(results[split])
    assert results["best_epoch"] >= 1

    evaluate = _run("launch.evaluate", f"--run_dir={run_dir}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    rescored = json.loads((run_dir / "evaluation.json").read_text())
    assert rescored["dev"]["accuracy"] == results["dev"]["accuracy"]
    assert rescored["test"]["weighted_f1"] == results["test"]["weighted_f1"]

    infer = _run("launch.infer", f"--run_dir={run_dir}", "--text=i am so happy wonderful")
    assert infer.returncode == 0, infer.stderr[-3000:]
    rows = [line.split() for line in infer.stdout.strip().splitlines()[:-1]]
    assert sorted(name for name, _ in rows) == sorted(["neutral", "joy", "surprise", "anger", "sadness", "disgust",
                                                       "fear"])
    assert abs(sum(float(p) for _, p in rows) - 1.0) < 1e-3
    assert infer.stdout.strip().splitlines()[-1] == f"predicted: {rows[0][0]}"


@pytest.mark.slow
def test_launch_train_config_errors_before_work(tmp_path):
    bad = _run("launch.train", "--config=configs/train.py:dataset=MELD--E,encoders=T,fusion=tensor",
               f"--workdir={tmp_path}")
    assert bad.returncode != 0 and "fusion" in bad.stderr and "tensor" in bad.stderr
    assert not (tmp_path / "checkpoints").exists()
    unknown = _run("launch.train", "--config=configs/train.py:dataset=MELD--E,encoder=T", f"--workdir={tmp_path}")
    assert unknown.returncode != 0 and "encoder" in unknown.stderr
    missing = _run("launch.train", "--config=configs/train.py:dataset=MELD--E,encoders=T",
                   f"--config.dataset.path={tmp_path / 'nowhere'}", f"--workdir={tmp_path}")
    assert missing.returncode != 0 and "nowhere" in missing.stderr


def test_launch_runs_from_the_checkout_in_any_folder(tmp_path):
    """configs/ and launch/ are not installed: with the checkout on PYTHONPATH (as run.py sets it)
    a launcher starts from another folder, and a config mistake is still one line."""
    bad = _run("launch.train", f"--config={ROOT / 'configs' / 'train.py'}:dataset=MELD--E,encoderz=T",
               f"--workdir={tmp_path}", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: --config={ROOT / 'configs' / 'train.py'}:dataset=MELD--E,encoderz=T: unknown config part "
        f"'encoderz' in 'dataset=MELD--E,encoderz=T'; known parts: {', '.join(PARTS)}"]
    assert not (tmp_path / "checkpoints").exists()
