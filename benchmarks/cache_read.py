r"""Feature-cache read throughput: SafeTensors shards of many samples (emojax) against one file
per sample (the PyTorch suite's layout), the same features on the same disk.

    python benchmarks/cache_read.py [--samples=10000 --dim=1024 --shard=1024 --workdir=runs/bench-cache]

Writes ``samples`` float32 features of ``dim`` both ways, then reads every one back in a fresh
cache object (no host tier: the index is rebuilt from the shards' headers, the rows come from
the memory-mapped files) and from the per-sample files, and prints a Markdown table.
"""
import pathlib
import shutil
import time

import numpy as np
from absl import app, flags
from safetensors.numpy import load_file, save_file

from emojax.features.cache import FeatureCache

_SAMPLES = flags.DEFINE_integer("samples", 10000, "Number of samples.")
_DIM = flags.DEFINE_integer("dim", 1024, "Feature size (roberta-large: 1024).")
_SHARD = flags.DEFINE_integer("shard", 1024, "Samples per shard.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench-cache", "Scratch folder (removed first).")


def main(argv):
    del argv
    root = pathlib.Path(_WORKDIR.value)
    shutil.rmtree(root, ignore_errors=True)
    n, dim = _SAMPLES.value, _DIM.value
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    keys = [f"{i:08d}" for i in range(n)]

    cache = FeatureCache(root / "shards", host_bytes=0, device_bytes=0)
    start = time.perf_counter()
    for s in range(0, n, _SHARD.value):
        cache.put_many("bench", keys[s:s + _SHARD.value], features[s:s + _SHARD.value])
    write_shards = time.perf_counter() - start

    per_sample = root / "per-sample"
    per_sample.mkdir(parents=True)
    start = time.perf_counter()
    for key, row in zip(keys, features):
        save_file({"feature": row}, str(per_sample / f"{key}.safetensors"))
    write_files = time.perf_counter() - start

    start = time.perf_counter()
    reader = FeatureCache(root / "shards", host_bytes=0, device_bytes=0)
    found = reader.get_many("bench", keys)
    read_shards = time.perf_counter() - start
    assert np.array_equal(np.stack([found[k] for k in keys]), features)

    start = time.perf_counter()
    rows = [load_file(str(per_sample / f"{key}.safetensors"))["feature"] for key in keys]
    read_files = time.perf_counter() - start
    assert np.array_equal(np.stack(rows), features)

    files = lambda folder: sum(1 for p in folder.rglob("*") if p.is_file())  # noqa: E731
    size = lambda folder: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # noqa: E731
    print(f"{n} samples x {dim} float32 ({features.nbytes / 2**20:.0f} MiB)\n")
    print("| storage | files | bytes on disk | write s | read s | read samples/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, folder, w, r in (("SafeTensors shards (emojax)", root / "shards", write_shards, read_shards),
                               ("one file per sample", per_sample, write_files, read_files)):
        print(f"| {name} | {files(folder)} | {size(folder):,} | {w:.2f} | {r:.2f} | {n / r:,.0f} |")
    print(f"\nshards read {read_files / read_shards:.1f}x faster")


if __name__ == "__main__":
    app.run(main)
