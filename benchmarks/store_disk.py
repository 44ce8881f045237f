r"""Disk use of N runs that share one frozen encoder, with the encoder store and without it.

    python benchmarks/store_disk.py [--runs=5 --epochs=2 --workdir=runs/bench-store]

Trains ``--runs`` text runs on the demo dataset (seeds 0..N-1, the demo's frozen
all-MiniLM-L6-v2 with its speaker tokens) in one work directory; ``emojax.training.fit`` stores the
encoder once under ``checkpoints/encoders/{hash}`` and links it from every run. Then it counts
the bytes of the work directory's checkpoints two ways: as stored (links are links, the store
entry once) and as it would be with a copy of the encoder in every run (the same walk, following
the links, which is what a run folder holding its own encoder weighs). The feature cache is not
counted; it is shared either way. Prints a Markdown table.
"""
import os
import pathlib
import shutil
import sys
import time

from absl import app, flags

from emojax.runs import store
from emojax.benchmark import machine_description
from emojax.training.loop import fit

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402

_RUNS = flags.DEFINE_integer("runs", 5, "Number of runs (seeds 0..N-1) sharing the encoder.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs per run.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench-store", "Scratch work directory (removed first).")
_DATASET = flags.DEFINE_string("dataset_path", "datasets/demo", "The demo dataset (generated when missing).")


def tree_bytes(folder: pathlib.Path, *, follow_links: bool) -> int:
    """Bytes of the regular files under ``folder``; with ``follow_links`` every linked folder
    counts once per link, as if each run held its own copy."""
    total = 0
    for root, _, files in os.walk(folder, followlinks=follow_links):
        for name in files:
            path = os.path.join(root, name)
            if follow_links or not os.path.islink(path):
                total += os.stat(path).st_size
    return total


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def main(argv):
    del argv
    workdir = pathlib.Path(_WORKDIR.value)
    shutil.rmtree(workdir, ignore_errors=True)
    runs = []
    start = time.perf_counter()
    for seed in range(_RUNS.value):
        cfg = compose("dataset=demo,encoders=T,loss=ce")
        cfg.dataset.path = _DATASET.value
        cfg.train.epochs = _EPOCHS.value
        cfg.seed = seed
        cfg.progress = False
        runs.append(fit(cfg, workdir))
    elapsed = time.perf_counter() - start
    checkpoints = workdir / "checkpoints"
    entries = store.store_entries(workdir)
    encoder = sum(e["bytes"] for e in entries)
    with_store = tree_bytes(checkpoints, follow_links=False)
    without = tree_bytes(checkpoints / "training", follow_links=True)
    head = tree_bytes(checkpoints / "training", follow_links=False) / len(runs)
    linked = sum(1 for run in runs if (run / store.RUN_LINKS / "T").is_symlink())
    print(f"{len(runs)} runs trained in {elapsed:.0f} s; {linked} link the encoder, "
          f"{len(entries)} store entr{'y' if len(entries) == 1 else 'ies'}")
    machine = machine_description()
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['date']}\n")
    print("| | bytes |\n|---|---:|")
    print(f"| encoder store entry (all-MiniLM-L6-v2 + speaker tokens) | {_mib(encoder)} |")
    print(f"| one run without its encoder (Orbax states, best epoch, logs, plots) | {_mib(head)} |")
    print(f"| {len(runs)} runs, encoder in the store (as written) | {_mib(with_store)} |")
    print(f"| {len(runs)} runs, a copy of the encoder in each run | {_mib(without)} |")
    print(f"| saved by the store | {_mib(without - with_store)} ({without / with_store:.1f}x less) |")


if __name__ == "__main__":
    app.run(main)
