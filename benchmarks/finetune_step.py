r"""Train-step cost of fine-tuning the text encoder: emojax's own jit-compiled step on
all-MiniLM-L6-v2, with and without ``finetune.tune_layers`` and length buckets.

    python benchmarks/finetune_step.py --model=PATH/TO/all-MiniLM-L6-v2 [--data=../shared/datasets/MELD]
        [--configs=full-128,full-buckets,top2-128,top2-buckets] [--batch_size=32] [--steps=20]
        [--output=runs/bench-finetune-step.json]

Each configuration is ``configs/train.py:dataset=MELD--E,encoders=T,mode=MODE`` (the text path of
utterance + prompt, mask pooling), its encoder, head and optimizer built as a run builds them
(:class:`emojax.training.finetune.Tuning`, :func:`emojax.training.steps.make_train_step`), timed after a
warm-up that compiles every shape it meets, to ``block_until_ready``:

* ``*-128``: every row 128 tokens, all real (the shape of ``/work/shared/peer/finetune_step.py``,
  transformers' PyTorch full fine-tuning, 32 x 128);
* ``*-buckets``: the token lengths of MELD's training texts (``--data``), batches drawn as a run
  draws them (:func:`emojax.training.batches.epoch_batches`, padded per bucket), averaged over
  ``--steps`` batches of one epoch's order;
* ``top2-*``: ``finetune.tune_layers=2`` (the step runs the top 2 layers from hidden states of
  the 4 below; random states here: the cost does not depend on their values); ``full-*``: all
  layers; ``lora-*`` variants put adapters on them (``mode=lora``).

Prints s / step, samples / s and the projected training time of one MELD epoch (9989 samples,
``n // batch`` steps). No transformers model is built: the encoder is emojax's.
"""
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402
from emojax.benchmark import machine_description, machine_line
from emojax.files import write_json_atomic
from emojax.features.featurizer import FeatureSet, Featurizer
from emojax.training.finetune import Tuning
from emojax.training.finetune_text import TokenRows
from emojax.model.model import build_model
from emojax.training.batches import batch_of, epoch_batches
from emojax.training.preparation import Prepared
from emojax.training.state import init_state, make_optimizer
from emojax.training.steps import make_train_step

_MODEL = flags.DEFINE_string("model", "sentence-transformers/all-MiniLM-L6-v2", "The text encoder (hub id or folder).")
_DATA = flags.DEFINE_string("data", "../shared/datasets/MELD", "MELD folder: the token lengths of its training texts.")
_CONFIGS = flags.DEFINE_list("configs", ["full-128", "full-buckets", "top2-128", "top2-buckets"],
                             "Configurations: {full,top1,top2,top3,lora,lora-top2}-{128,buckets}.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Samples per train step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per configuration.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results (optional).")

MELD_TRAIN = 9989
SPEAKERS = [f"<s{i}>" for i in range(9)]


class _StepRows(TokenRows):
    """Token rows, and for a partially tuned encoder random hidden states of the frozen layers."""

    def __init__(self, ids, pad_id, widths, hidden_size: int, partial: bool):
        super().__init__(ids, pad_id, widths)
        self.hidden_size, self.partial = hidden_size, partial

    def batch(self, index):
        out = super().batch(index)
        if self.partial:
            shape = (*out["input_ids"].shape, self.hidden_size)
            out["hidden"] = np.random.default_rng(len(index)).normal(size=shape).astype(np.float32)
        return out


def meld_lengths(cfg, featurizer) -> np.ndarray:
    """Token lengths of MELD's training texts on the run's text path."""
    from emojax.data import load_dataset

    split = load_dataset("meld", _DATA.value, target="emotion").splits["train"]
    return np.asarray([len(r) for r in
                       featurizer.encoders["T"].encoder.token_ids(featurizer.encoders["T"].texts(split))])


def build(name: str):
    kind, shape = name.rsplit("-", 1)
    mode = "lora" if kind.startswith("lora") else "trainable"
    cfg = compose(f"dataset=MELD--E,encoders=T,mode={mode}")
    cfg.encoders.T.update(model=_MODEL.value, pooling="mask", prompt=True, context_turns=0, max_length=128)
    cfg.train.batch_size = _BATCH.value
    tune = {"top1": 1, "top2": 2, "top3": 3, "lora-top2": 2}.get(kind, 0)
    if tune:
        cfg.finetune.tune_layers = tune
    cfg.progress = False
    return cfg, shape


def measure(name: str, lengths_cache: dict) -> dict:
    cfg, shape = build(name)
    featurizer = Featurizer(cfg, SPEAKERS, cache=None)
    model = build_model(cfg, featurizer.dims, 7)
    dim = featurizer.dims["T"]
    tuning = Tuning(cfg, featurizer, {"T": {"mean": [0.0] * dim, "std": [1.0] * dim}})
    tuner = tuning.tuners["T"]
    encoder = tuner.encoder
    batch = _BATCH.value
    rng = np.random.default_rng(0)
    if shape == "128":
        lengths = np.full(batch * (_STEPS.value + 1), encoder.max_length)
    else:
        if "meld" not in lengths_cache:
            lengths_cache["meld"] = meld_lengths(cfg, featurizer)
        lengths = lengths_cache["meld"]
    ids = []
    for n in lengths:
        row = rng.integers(1000, 20000, size=int(n)).astype(np.int32)
        row[-2] = encoder.tokenizer.mask_token_id
        ids.append(row)
    rows = _StepRows(ids, encoder.pad_token_id, tuner.widths, dim, bool(tuner.start))
    n = len(rows)
    data = FeatureSet({"T": np.zeros((n, dim), np.float32)}, {"T": np.ones(n, bool)},
                      (np.arange(n) % 7).astype(np.int32), [str(i) for i in range(n)], inputs={"T": rows})
    prep = Prepared(cfg=cfg, run_dir=pathlib.Path("."), class_names=tuple(str(i) for i in range(7)),
                    features={"train": data}, not_scored=(), featurizer=featurizer, model=model,
                    feature_seconds=0.0, feature_stats={}, tuning=tuning)
    optimizer = make_optimizer(cfg, 1000)
    state = init_state(prep, optimizer, {})
    step = jax.jit(make_train_step(model, optimizer, loss_kind="ce", class_weights=None, extras={}, tuning=tuning),
                   donate_argnums=0)
    base = {"encoder_base": tuning.base_args} if tuning.base_args is not None else {}
    order = epoch_batches(0, 1, n, batch, rows.buckets if shape == "buckets" else None)
    timed = order[:_STEPS.value]
    # Warm-up: one step per padded width met in the timed batches (each width compiles once).
    start = time.perf_counter()
    for width in sorted({rows.width(b) for b in timed}):
        index = next(b for b in timed if rows.width(b) == width)
        state, logs = step(state, batch_of(data, index), **base)
    jax.block_until_ready((state, logs))
    warmup = time.perf_counter() - start
    batches = [batch_of(data, b) for b in timed]
    start = time.perf_counter()
    for b in batches:
        state, logs = step(state, b, **base)
    jax.block_until_ready((state, logs))
    seconds = time.perf_counter() - start
    per_step = seconds / len(timed)
    widths = [rows.width(b) for b in timed]
    return {"config": name, "mode": str(cfg.mode), "tune_layers": int(cfg.finetune.get("tune_layers", 0)),
            "shape": shape, "batch_size": batch, "steps": len(timed), "mean_width": float(np.mean(widths)),
            "warmup_s": warmup, "s_per_step": per_step, "samples_per_s": batch / per_step,
            "meld_epoch_s": per_step * (MELD_TRAIN // batch),
            "encoder_trainable_parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(state.encoder))),
            "loss": float(logs["loss"])}


def main(argv):
    del argv
    rows, lengths_cache = [], {}
    for name in _CONFIGS.value:
        row = measure(name, lengths_cache)
        rows.append(row)
        print(f"{name}: {row['s_per_step']:.3f} s/step, {row['samples_per_s']:.1f} samples/s, mean width "
              f"{row['mean_width']:.0f}, MELD epoch {row['meld_epoch_s']:.0f} s (warm-up {row['warmup_s']:.0f} s)",
              flush=True)
    machine = machine_description()
    print(f"\n{machine_line(machine)}; batch {_BATCH.value}\n")
    print("| config | mode | tuned layers | padding (mean width) | trainable encoder parameters | s / step | "
          "samples/s | MELD epoch (s) |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['mode']} | {r['tune_layers'] or 'all'} | {r['shape']} ({r['mean_width']:.0f}) | "
              f"{r['encoder_trainable_parameters']:,} | {r['s_per_step']:.3f} | {r['samples_per_s']:.1f} | "
              f"{r['meld_epoch_s']:.0f} |")
    if _OUTPUT.value:
        write_json_atomic(_OUTPUT.value, {"machine": machine, "results": rows})


if __name__ == "__main__":
    app.run(main)
