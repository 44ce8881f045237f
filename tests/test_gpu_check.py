"""The GPU check's dry run on the CPU: every part gives its row, each with a number or a pass/fail,
the peers' rows say honestly when PyTorch is absent, and the table and the JSON agree."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d[\d,]*(\.\d+)?")


@pytest.mark.slow
def test_dry_run_gives_every_row(tmp_path):
    output = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry_run", f"--output={output}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    rows = {}
    for row in report["rows"]:
        rows.setdefault(row["part"], []).append(row)
    assert list(rows) == ["tests", "fusion", "bert", "attention", "parallel"]
    assert [len(rows[p]) for p in rows] == [1, 2, 1, 1, 1]
    for row in report["rows"]:
        assert not row["result"].startswith("FAIL"), row

    tests = rows["tests"][0]
    assert tests["ok"] is True and tests["counts"]["passed"] > 0 and tests["counts"]["failed"] == 0
    assert tests["result"].startswith(f"pass: {tests['counts']['passed']} passed")

    torch = importlib.util.find_spec("torch") is not None
    for row, precision in zip(rows["fusion"], ("float32", "bfloat16")):
        assert precision in row["what"]
    for row in rows["fusion"] + rows["bert"]:
        assert row["emojax_samples_per_s"] > 0 and NUMBER.fullmatch(row["emojax"])
        if torch:
            assert row["peer_samples_per_s"] > 0
            assert row["result"] == f"{row['emojax_samples_per_s'] / row['peer_samples_per_s']:.2f}x"
        else:
            assert row["peer"] == "peer not available (no torch)" and row["result"] == "no ratio"

    attention = rows["attention"][0]
    assert attention["default_kernel"] == "XLA"  # the CPU has no cuDNN
    assert attention["implementations"]["xla"]["ms"] > 0 and not attention["implementations"]["None"]["cudnn"]
    assert "cuDNN not available" in attention["result"]

    parallel = rows["parallel"][0]  # the dry run splits the CPU in two devices
    assert parallel["ok"] is True and parallel["result"].startswith("pass (2 devices")
    assert parallel["losses"]["one"] == pytest.approx(parallel["losses"]["all"], abs=1e-4)
    assert len(set(parallel["losses"]["one"])) == 3  # the steps train: three different losses

    table = report["markdown"].splitlines()
    assert table[2] == "| part | what | emojax | peer (PyTorch) | result |"
    assert len(table) == 4 + len(report["rows"])
    for line, row in zip(table[4:], report["rows"]):
        assert line == f"| {row['part']} | {row['what']} | {row['emojax']} | {row['peer']} | {row['result']} |"
    assert report["markdown"] in done.stdout
