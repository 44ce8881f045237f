r"""Training-step throughput of fusion heads on precomputed T+A+V features.

    python benchmarks/fusion_throughput.py [--batch=32 --dim=768 --steps=50 --rounds=3 --precision=float32]
    python benchmarks/fusion_throughput.py --heads=df,vallina      # only the two heads the PyTorch suite has
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/fusion_throughput.py --devices=1,8

Times the jit-compiled train step (forward, backward, AdamW update) of the DF-1.0 + attention
head (the suite's configuration: disentanglement fusion applied to the features directly) and of
the vanilla concat head, side by side in one process, and prints a Markdown table. The batch is
put on the device once and every step trains on it, as the PyTorch suite's timing does; each of
``--rounds`` rounds times ``--steps`` steps, and the table gives the range over the rounds.

The PyTorch suite's own heads, for the ratio (same machine, alternated with this script, since
shared machines are noisy; see /work/shared/peer/README.md)::

    cd /work/shared/peer && PYTHONPATH=. ~/peer-venv/bin/python fusion_step.py df        # or: vallina
"""
import pathlib
import sys
import time

import jax
from absl import app, flags

from emojax.benchmark import fusion_step_on_random_features

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_DIM = flags.DEFINE_integer("dim", 768, "Feature size of every modality.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after two warm-up steps).")
_DEVICES = flags.DEFINE_list("devices", ["1"], "Device counts to measure (data parallel over the local devices).")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute precision.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of --steps steps; the table gives their range.")
_HEADS = flags.DEFINE_list("heads", ["df", "df-per-sample", "vallina"], "Heads to time: df, df-per-sample, vallina.")

# name -> (table label, config parts, fusion overrides)
HEADS = {
    "df": ("DF-1.0 + attention (suite: batch attention)", "fusion=DF-1.0+attn,loss=focal", {"project_inputs": 0}),
    "df-per-sample": ("DF-1.0 + attention, per-sample attention", "fusion=DF-1.0+attn,loss=focal",
                      {"project_inputs": 0, "batch_as_sequence": False}),
    "vallina": ("vanilla concat", "fusion=vallina,loss=focal", {}),
}


def measure(parts: str, overrides: dict, devices: int = 1) -> dict:
    cfg = compose(f"encoders=T+A+V,{parts}")
    cfg.precision = _PRECISION.value
    for key, value in overrides.items():
        cfg.fusion[key] = value
    batch = _BATCH.value
    step, state, data, count = fusion_step_on_random_features(cfg, batch=batch, dim=_DIM.value,
                                                              devices=jax.local_devices()[:devices])
    for _ in range(2):
        state, logs = step(state, data)
    jax.block_until_ready(logs["loss"])
    seconds = []
    for _ in range(_ROUNDS.value):
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            state, logs = step(state, data)
        jax.block_until_ready(logs["loss"])
        seconds.append((time.perf_counter() - start) / _STEPS.value)
    return {"steps_per_s": [1 / s for s in seconds], "samples_per_s": [batch / s for s in seconds], "params": count}


def _span(values, digits: int = 0) -> str:
    low, high = min(values), max(values)
    return (f"{low:,.{digits}f}" if round(low, digits) == round(high, digits)
            else f"{low:,.{digits}f}-{high:,.{digits}f}")


def main(argv):
    del argv
    unknown = [h for h in _HEADS.value if h not in HEADS]
    if unknown:
        raise app.UsageError(f"--heads: unknown head {', '.join(unknown)}; choose from {', '.join(HEADS)}")
    print(f"device: {jax.devices()[0].device_kind}, {jax.local_device_count()} local device(s); batch {_BATCH.value}, "
          f"T+A+V features of {_DIM.value}, 7 classes, {_PRECISION.value}")
    print()
    print("| head | devices | parameters | train steps/s | samples/s |")
    print("|---|---:|---:|---:|---:|")
    for head in _HEADS.value:
        name, parts, overrides = HEADS[head]
        for devices in (int(d) for d in _DEVICES.value):
            row = measure(parts, overrides, devices)
            print(f"| {name} | {devices} | {row['params']:,} | {_span(row['steps_per_s'], 1)} | "
                  f"{_span(row['samples_per_s'])} |", flush=True)


if __name__ == "__main__":
    app.run(main)
