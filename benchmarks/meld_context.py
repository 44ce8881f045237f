r"""MELD emotion, frozen all-MiniLM-L6-v2 (mean pooling of the utterance alone, the MELD default), with
and without a dialogue context head: dev accuracy and weighted F1 per seed, and their mean ± std.

    python benchmarks/meld_context.py --data=../shared/datasets/MELD --workdir=runs/bench-meld-context \
        [--only=none,transformer] [--seeds=0,1,2]

The utterance features are computed once (the first run) and read from the feature cache by every
other run, so each setting costs only its head's training; compiled steps go to a persistent JAX
cache under the workdir, so the seeds after a setting's first one skip most compiling. Each
setting is a context preset (``configs/context.py``, ``none``: no head) plus config overrides;
the table gives, per setting, the command that trains one seed of it with ``launch.train``.
"""
import json
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402
from emojax.sweep import set_field
from emojax.training.loop import fit

_DATA = flags.DEFINE_string("data", "../shared/datasets/MELD", "MELD folder (train/dev CSVs).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench-meld-context", "Where runs and the feature cache go.")
_ONLY = flags.DEFINE_list("only", [], "Run only these settings.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
_LOSS = flags.DEFINE_string("loss", "ce", "Loss part.")

# The training of every setting but the first two: shorter and gentler than the defaults (the
# head overfits MELD's train split within a few epochs at lr 1e-3).
_TRAIN = {"train.lr": 5e-4, "train.batch_size": 64, "train.epochs": 15}

# name -> (context preset, overrides of dotted config fields); the presets' sizes are in
# configs/context.py (1 layer of 128; dropout 0.3 for the transformer, 0.5 for the GRU).
SETTINGS = {
    "none": ("none", {}),
    "transformer-2x256/drop0.1/default-training": ("transformer", {
        "model.context.layers": 2, "model.context.dim": 256, "model.context.dropout": 0.1}),
    "none/short": ("none", _TRAIN),
    "transformer/drop0.3": ("transformer", _TRAIN),
    "transformer-causal/drop0.3": ("transformer-causal", _TRAIN),
    "transformer/drop0.5": ("transformer", {**_TRAIN, "model.context.dropout": 0.5}),
    "gru/drop0.3": ("gru", {**_TRAIN, "model.context.dropout": 0.3}),
    "gru-causal/drop0.3": ("gru-causal", {**_TRAIN, "model.context.dropout": 0.3}),
    "gru/drop0.5": ("gru", _TRAIN),
    "gru-causal/drop0.5": ("gru-causal", _TRAIN),
    "gru-256/drop0.5": ("gru", {**_TRAIN, "model.context.dim": 256}),
    "gru-2-layers/drop0.5": ("gru", {**_TRAIN, "model.context.layers": 2}),
    "gru/drop0.5/no-speakers": ("gru", {**_TRAIN, "model.context.speakers": 0}),
    "gru/drop0.5/lr3e-4/25-epochs": ("gru", {**_TRAIN, "train.lr": 3e-4, "train.epochs": 25}),
    "gru/drop0.5/batch32": ("gru", {**_TRAIN, "train.batch_size": 32}),
}


def configure(name: str, seed: int):
    preset, overrides = SETTINGS[name]
    cfg = compose(f"dataset=MELD--E,encoders=T,loss={_LOSS.value},context={preset}")
    cfg.dataset.path = _DATA.value
    cfg.seed = seed
    cfg.progress = False
    for dotted, value in overrides.items():
        set_field(cfg, dotted, value)
    return cfg


def command(name: str) -> str:
    preset, overrides = SETTINGS[name]
    flags_ = [f"--config=configs/train.py:dataset=MELD--E,encoders=T,loss={_LOSS.value},context={preset}",
              f"--config.dataset.path={_DATA.value}", "--config.seed=SEED",
              *(f"--config.{k}={v}" for k, v in overrides.items()), f"--workdir={_WORKDIR.value}"]
    return "python -m launch.train " + " ".join(flags_)


def main(argv):
    del argv
    # A setting's seeds compile the same steps: keep them on disk for the next run.
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(_WORKDIR.value) / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    rows = []
    for name in SETTINGS:
        if _ONLY.value and name not in _ONLY.value:
            continue
        for seed in map(int, _SEEDS.value):
            cfg = configure(name, seed)
            start = time.perf_counter()
            run_dir = fit(cfg, _WORKDIR.value)
            wall = time.perf_counter() - start
            results = json.loads((run_dir / "results.json").read_text())
            row = {"name": name, "seed": seed, "dev_accuracy": 100 * results["dev"]["accuracy"],
                   "dev_weighted_f1": 100 * results["dev"]["weighted_f1"], "best_epoch": results["best_epoch"],
                   "wall_s": wall, "run_dir": str(run_dir)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| setting | dev wF1 per seed | dev acc per seed | dev wF1 mean ± std | dev acc mean ± std | best epochs |")
    print("|---|---|---|---:|---:|---|")
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        f1 = np.array([r["dev_weighted_f1"] for r in mine])
        acc = np.array([r["dev_accuracy"] for r in mine])
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in f1)} | {' / '.join(f'{v:.2f}' for v in acc)} "
              f"| {f1.mean():.2f} ± {f1.std():.2f} | {acc.mean():.2f} ± {acc.std():.2f} "
              f"| {', '.join(str(r['best_epoch']) for r in mine)} |")
    print()
    for name in dict.fromkeys(r["name"] for r in rows):
        print(f"- {name}: `{command(name)}`")
    out = pathlib.Path(_WORKDIR.value) / "meld_context.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(previous + rows, indent=2))


if __name__ == "__main__":
    app.run(main)
