r"""Training-step throughput of fusion heads on precomputed T+A+V features.

    python benchmarks/fusion_throughput.py [--batch=32 --dim=768 --steps=50 --precision=float32]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/fusion_throughput.py --devices=1,8

Times the jit-compiled train step (forward, backward, AdamW update) of the DF-1.0 + attention
head (the suite's configuration: disentanglement fusion applied to the features directly) and of
the vanilla concat head, side by side in one process, and prints a Markdown table.
"""
import time

import jax
import numpy as np
from absl import app, flags

from emojax import config as config_lib
from emojax.model import build_model
from emojax.training.parallel import DataParallel
from emojax.training.state import TrainState, make_optimizer
from emojax.training.steps import make_train_step

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_DIM = flags.DEFINE_integer("dim", 768, "Feature size of every modality.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after two warm-up steps).")
_DEVICES = flags.DEFINE_list("devices", ["1"], "Device counts to measure (data parallel over the local devices).")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute precision.")


def measure(parts: str, overrides: dict, devices: int = 1) -> dict:
    cfg = config_lib.compose(f"encoders=T+A+V,{parts}")
    cfg.precision = _PRECISION.value
    for key, value in overrides.items():
        cfg.fusion[key] = value
    batch, dim, classes = _BATCH.value, _DIM.value, 7
    model = build_model(cfg, {m: dim for m in "TAV"}, classes)
    rng = np.random.default_rng(0)
    data = {"features": {m: rng.normal(size=(batch, dim)).astype(np.float32) for m in "TAV"},
            "present": {m: np.ones(batch, bool) for m in "TAV"},
            "labels": rng.integers(0, classes, batch).astype(np.int32)}
    params = model.init({"params": jax.random.PRNGKey(0)}, data["features"], data["present"])["params"]
    optimizer = make_optimizer(cfg, 1000)
    state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=optimizer.init({"model": params, "losses": {}}),
                       rng=jax.random.PRNGKey(1), loss_state={})
    step_fn = make_train_step(model, optimizer, loss_kind=cfg.loss.classification, class_weights=None, extras={})
    if devices > 1:
        parallel = DataParallel(jax.local_devices()[:devices])
        state, data = parallel.replicate(state), parallel.shard(data)
        step = jax.jit(step_fn, donate_argnums=0, out_shardings=parallel.replicated)
    else:
        step = jax.jit(step_fn, donate_argnums=0)
    for _ in range(2):
        state, logs = step(state, data)
    jax.block_until_ready(logs["loss"])
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, logs = step(state, data)
    jax.block_until_ready(logs["loss"])
    seconds = (time.perf_counter() - start) / _STEPS.value
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return {"steps_per_s": 1 / seconds, "samples_per_s": batch / seconds, "params": count}


def main(argv):
    del argv
    heads = {
        "DF-1.0 + attention (suite: batch attention)": ("fusion=DF-1.0+attn,loss=focal", {"project_inputs": 0}),
        "DF-1.0 + attention, per-sample attention": ("fusion=DF-1.0+attn,loss=focal",
                                                     {"project_inputs": 0, "batch_as_sequence": False}),
        "vanilla concat": ("fusion=vallina,loss=focal", {}),
    }
    print(f"device: {jax.devices()[0].device_kind}, {jax.local_device_count()} local device(s); batch {_BATCH.value}, "
          f"T+A+V features of {_DIM.value}, 7 classes, {_PRECISION.value}")
    print()
    print("| head | devices | parameters | train steps/s | samples/s |")
    print("|---|---:|---:|---:|---:|")
    for name, (parts, overrides) in heads.items():
        for devices in (int(d) for d in _DEVICES.value):
            row = measure(parts, overrides, devices)
            print(f"| {name} | {devices} | {row['params']:,} | {row['steps_per_s']:.1f} | {row['samples_per_s']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    app.run(main)
