r"""Benchmark a run or a config on this machine: evaluation with and without the feature cache,
encoder and train-step throughput, peak memory.

    python -m launch.benchmark --run=runs/checkpoints/training/MELD--E/.../1a2b3c4d--0 --output_dir=bench
    python -m launch.benchmark --config=configs/train.py:dataset=demo,encoders=T+A+V \
      --config.dataset.path=datasets/demo --output_dir=bench

Writes ``benchmark.json`` and ``benchmark.md`` to --output_dir and prints the Markdown tables
(see emojax/benchmark.py for what each number measures).
"""
import logging as std_logging
import sys

from absl import flags
from ml_collections import config_flags

from emojax import benchmark as benchmark_lib
from emojax.runs.checkpoint import finished_run
from emojax.training.plan import validate_config
from launch import _errors

_RUN = flags.DEFINE_string("run", None, "A finished run directory written by launch/train.py.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Instead of --run: a config, configs/train.py:key=value,... (fresh parameters).",
    lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/benchmark", "Folder for benchmark.json and benchmark.md.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed training steps (after 2 warm-up steps).")
_MAX_SAMPLES = flags.DEFINE_integer("max_samples", 0, "Use only the first N dev samples (0: all).")
_DATASET_PATH = flags.DEFINE_string("dataset_path", None, "--run: read the dataset from here instead of the "
                                    "path the run was trained with.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Parent folder of the temporary feature cache (removed "
                                 "afterwards; default: the system's temporary folder).")


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    if (_RUN.value is None) == (_CONFIG.value is None):
        raise _errors.UserError("give exactly one of --run=RUN_DIR or --config=configs/train.py:...")
    if _STEPS.value < 1:
        raise _errors.UserError(f"--steps: {_STEPS.value} must be at least 1")
    _errors.check_folder(_OUTPUT_DIR.value, "--output_dir")
    _errors.check_folder(_CACHE_DIR.value, "--cache_dir")
    if _DATASET_PATH.value is not None:
        _errors.check_folder(_DATASET_PATH.value, "--dataset_path", must_exist=True)
    if _RUN.value is not None:
        finished_run(_RUN.value)  # before any model is loaded
    else:
        validate_config(_CONFIG.value)
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    if _RUN.value is not None:
        setup = benchmark_lib.setup_from_run(_RUN.value, dataset_path=_DATASET_PATH.value,
                                             max_samples=_MAX_SAMPLES.value)
    else:
        setup = benchmark_lib.setup_from_config(_CONFIG.value, max_samples=_MAX_SAMPLES.value)
    result = benchmark_lib.run_benchmark(setup, _OUTPUT_DIR.value, steps=_STEPS.value, cache_dir=_CACHE_DIR.value,
                                         report=lambda message: print(message, file=sys.stderr, flush=True))
    print(benchmark_lib.format_markdown(result))
    print(_OUTPUT_DIR.value)


if __name__ == "__main__":
    _errors.run(main)
