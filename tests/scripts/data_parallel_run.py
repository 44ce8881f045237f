"""Train the same tiny text run on N devices and print its history and final parameters' sums.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python data_parallel_run.py DATA BERT WORKDIR DEVICES LOSS [MODE]

MODE ``lora`` / ``trainable`` fine-tunes the text encoder (mean pooling over the utterance alone);
then the sums of the selected epoch's tuned dev features are printed too. :func:`run` returns the
printed record, for a caller that trains the 1-device reference in its own process.
"""
import json
import sys

import jax
import numpy as np

from configs.compose import compose
from emojax.training.evaluation import load_run
from emojax.training.loop import fit


def run(data, bert, workdir, devices, loss, mode="frozen") -> dict:
    cfg = compose(f"dataset=MELD--E,encoders=T,loss={loss},mode={mode}")
    cfg.dataset.path, cfg.encoders.T.model = data, bert
    if mode != "frozen":
        cfg.encoders.T.update(pooling="mean", prompt=False, context_turns=0)
        cfg.finetune.lr = 1e-3
        cfg.finetune.lora.update(rank=4, alpha=8.0)
    cfg.train.update(epochs=3, batch_size=16, lr=1e-2, patience=100, devices=int(devices), eval_batch_size=40)
    cfg.progress = False
    run_dir = fit(cfg, workdir)
    prep, _, params, _ = load_run(run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    return {"devices": jax.local_device_count(), "used": int(devices),
            "train_loss": [row["train_loss"] for row in history],
            "dev_wf1": [row["dev"]["weighted_f1"] for row in history],
            "test_accuracy": results["test"]["accuracy"],
            "dev_features": [float(x) for x in np.asarray(prep.features["dev"].features["T"], np.float64).sum(1)],
            "params": [float(np.asarray(x, np.float64).sum()) for x in jax.tree_util.tree_leaves(params)]}


def main(data, bert, workdir, devices, loss, mode="frozen"):
    print(json.dumps(run(data, bert, workdir, devices, loss, mode)))


if __name__ == "__main__":
    main(*sys.argv[1:])
