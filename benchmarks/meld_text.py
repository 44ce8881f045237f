r"""MELD emotion, text only, frozen all-MiniLM-L6-v2: which frozen text path scores best on dev.

    python benchmarks/meld_text.py --data=../shared/datasets/MELD --workdir=runs/bench-meld-text [--seeds=1,2,3,4]

Trains the emojax head once per text-path combination (pooling, context turns, prompt, length)
and prints a Markdown table of dev accuracy / weighted F1, the first epoch's time (features
computed) and a later epoch's time (features cached). Beside them, the scikit-learn
logistic-regression probe on the same mean-pooled utterance features, as a reference.
"""
import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags

from emojax.training.loop import fit
from emojax.training.preparation import prepare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402

_DATA = flags.DEFINE_string("data", "../shared/datasets/MELD", "MELD folder (train/dev CSVs).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench-meld-text", "Where runs and the feature cache go.")
_ONLY = flags.DEFINE_list("only", [], "Run only these combination names.")
_LOSS = flags.DEFINE_string("loss", "ce", "Loss part.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the timed run.")
_SEEDS = flags.DEFINE_list("seeds", [], "Further seeds: each combination is also trained with these (features "
                           "cached) and the mean, std and min over all its seeds are reported.")

# name -> (pooling, context_turns, prompt, max_length)
COMBINATIONS = {
    "mean/utt/64": ("mean", 0, False, 64),
    "cls/utt/64": ("cls", 0, False, 64),
    "mean/ctx3/128": ("mean", 3, False, 128),
    "mask/utt+prompt/64": ("mask", 0, True, 64),
    "mask/ctx3+prompt/128": ("mask", 3, True, 128),
    "mask/all+prompt/256": ("mask", -1, True, 256),
}


def probe(prep) -> dict:
    """scikit-learn logistic regression on the run's (cached) train features, scored on dev."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    train, dev = prep.features["train"], prep.features["dev"]
    clf = LogisticRegression(max_iter=2000).fit(train.features["T"], train.labels)
    pred = clf.predict(dev.features["T"])
    return {"accuracy": accuracy_score(dev.labels, pred),
            "weighted_f1": f1_score(dev.labels, pred, average="weighted")}


def main(argv):
    del argv
    rows = []
    for name, (pooling, turns, prompt, length) in COMBINATIONS.items():
        if _ONLY.value and name not in _ONLY.value:
            continue
        cfg = compose(f"dataset=MELD--E,encoders=T,loss={_LOSS.value}")
        cfg.dataset.path = _DATA.value
        cfg.seed = _SEED.value
        cfg.encoders.T.update(pooling=pooling, context_turns=turns, prompt=prompt, max_length=length)
        start = time.perf_counter()
        run_dir = fit(cfg, _WORKDIR.value)
        wall = time.perf_counter() - start
        results = json.loads((run_dir / "results.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        first = history[0]
        later = history[min(1, len(history) - 1)]
        row = {"name": name, "dev_accuracy": 100 * results["dev"]["accuracy"],
               "dev_weighted_f1": 100 * results["dev"]["weighted_f1"], "best_epoch": results["best_epoch"],
               "first_epoch_s": first["seconds"] + first.get("feature_seconds", 0.0),
               "feature_s": first.get("feature_seconds", float("nan")),
               "later_epoch_s": later["seconds"], "wall_s": wall, "run_dir": str(run_dir)}
        if name == "mean/utt/64":
            prep = prepare(cfg, _WORKDIR.value)
            row["probe"] = {k: 100 * v for k, v in probe(prep).items()}
        if _SEEDS.value:
            scores = [(row["dev_accuracy"], row["dev_weighted_f1"])]
            for seed in _SEEDS.value:
                cfg.seed = int(seed)
                other = json.loads((fit(cfg, _WORKDIR.value) / "results.json").read_text())
                scores.append((100 * other["dev"]["accuracy"], 100 * other["dev"]["weighted_f1"]))
            scores = np.array(scores)
            row["seeds"] = {"n": len(scores), "accuracy_mean": scores[:, 0].mean(), "accuracy_std": scores[:, 0].std(),
                            "weighted_f1_mean": scores[:, 1].mean(), "weighted_f1_std": scores[:, 1].std(),
                            "weighted_f1_min": scores[:, 1].min()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| text path (pooling/context/length) | dev acc | dev wF1 | best epoch "
          "| first epoch (s, features computed) | later epoch (s, cached) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['name']} | {row['dev_accuracy']:.2f} | {row['dev_weighted_f1']:.2f} | {row['best_epoch']} "
              f"| {row['first_epoch_s']:.1f} (features {row['feature_s']:.1f}) | {row['later_epoch_s']:.2f} |")
        if "seeds" in row:
            q = row["seeds"]
            print(f"| {row['name']}, {q['n']} seeds: mean ± std (min) "
                  f"| {q['accuracy_mean']:.2f} ± {q['accuracy_std']:.2f} "
                  f"| {q['weighted_f1_mean']:.2f} ± {q['weighted_f1_std']:.2f} ({q['weighted_f1_min']:.2f}) | | | |")
        if "probe" in row:
            print(f"| sklearn logistic-regression probe, same features | {row['probe']['accuracy']:.2f} "
                  f"| {row['probe']['weighted_f1']:.2f} | - | - | - |")
    out = pathlib.Path(_WORKDIR.value) / "meld_text.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    app.run(main)
