"""How fast a run (or a config) evaluates and trains on this machine, and how much memory it takes.

``run_benchmark(setup, output_dir)`` measures, for the dataset's dev split:

* **evaluation time** (features -> standardise -> probabilities -> scores) three ways, all with
  the encoders already loaded: into an *empty* temporary feature cache (the first run: features
  computed and stored, JIT compilation included), with the cache *disabled* (features recomputed,
  already compiled) and from the now *warm* cache (a fresh cache object reading the SafeTensors
  shards; the media files' content hashes are recomputed too, as in a new process). The encoder
  calls of each pass are counted: the warm pass makes none.
* **encoder throughput**: samples/s of every modality's frozen encoder, from the recompute pass.
* **train-step throughput**: samples/s of the jit-compiled training step (forward, backward,
  optimizer update; the run's model, losses and batch size) on random features of the run's input
  sizes, after two warm-up steps, timed with ``block_until_ready``.
* **peak memory**: the process's peak resident set size (``resource.getrusage``) and the first
  local device's peak allocation (``memory_stats()``; ``None`` where the backend reports none,
  as the CPU backend does).

It writes ``benchmark.json`` and ``benchmark.md`` (Markdown tables: the machine, then the
measures). Build the setup with :func:`setup_from_run` (a finished run directory: its best
parameters and feature statistics) or :func:`setup_from_config` (a config: freshly initialised
parameters; the timings do not depend on the parameter values).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from emojax.features import cache as cache_lib
from emojax import config as config_lib
from emojax import metrics as metrics_lib
from emojax.features.cache import FeatureCache
from emojax.data.context import all_speaker_tokens
from emojax.data.types import Split, inverse_frequency_weights
from emojax.training.evaluation import predict_proba
from emojax.features.featurizer import FeatureSet, Featurizer, feature_stats, standardize
from emojax.files import write_json_atomic, write_text_atomic
from emojax.training.finetune import Tuning
from emojax.training.finetune_base import ArrayRows
from emojax.inference import Estimator
from emojax.model.model import build_model
from emojax.training.batches import batch_of
from emojax.training.preparation import Prepared, load_data
from emojax.training.state import init_state, make_optimizer, usable_extras
from emojax.training.steps import make_eval_step, make_train_step
from emojax.training.plan import validate_config

WARMUP_STEPS = 2


@dataclasses.dataclass
class Setup:
    """What the benchmark measures: a config with its encoders, model, parameters and dev split."""

    cfg: Any
    featurizer: Featurizer
    model: Any
    params: Any
    class_names: tuple[str, ...]
    dev: Split
    stats: Optional[dict]  # training-split feature statistics (None: taken from the dev features)
    run_dir: Optional[pathlib.Path]
    load_seconds: float  # building the encoders, the model and its parameters


def _load_dev(cfg, max_samples: int):
    """``(dataset, dev split)``, the split cut to its first ``max_samples`` samples when given."""
    dataset = load_data(cfg)
    split = dataset.splits.get("dev")
    if split is None:
        raise config_lib.ConfigError(f"dataset.path: {cfg.dataset.path} has no dev split to benchmark on")
    if max_samples and max_samples < len(split):
        split = Split(split.name, split.samples[:max_samples], split.missing)
    return dataset, split


def setup_from_run(run_dir: str | os.PathLike, *, dataset_path: Optional[str] = None,
                   max_samples: int = 0) -> Setup:
    """A finished run directory: its encoders, best parameters and training feature statistics."""
    start = time.perf_counter()
    estimator = Estimator(run_dir)
    load_seconds = time.perf_counter() - start
    cfg = estimator.cfg
    if dataset_path:
        cfg.dataset.path = str(dataset_path)
    _, dev = _load_dev(cfg, max_samples)
    return Setup(cfg, estimator.featurizer, estimator.model, estimator.params, estimator.class_names, dev,
                 estimator.feature_stats, pathlib.Path(run_dir), load_seconds)


def setup_from_config(cfg, *, max_samples: int = 0) -> Setup:
    """A config (``configs/train.py:...``): its encoders and a freshly initialised model."""
    validate_config(cfg)
    cfg.progress = False
    dataset, dev = _load_dev(cfg, max_samples)
    class_names = dataset.class_names
    start = time.perf_counter()
    featurizer = Featurizer(cfg, all_speaker_tokens(dataset), cache=None)
    model = build_model(cfg, featurizer.dims, len(class_names))
    dummy = {m: np.zeros((2, featurizer.dims[m]), np.float32) for m in model.modalities}
    present = {m: np.ones((2,), bool) for m in model.modalities}
    params = model.init({"params": jax.random.PRNGKey(int(cfg.seed))}, dummy, present, deterministic=True)["params"]
    return Setup(cfg, featurizer, model, params, tuple(class_names), dev, None, None,
                 time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------
class EncoderMeter:
    """Counts and times the calls into a featurizer's encoders (per modality)."""

    def __init__(self, featurizer: Featurizer):
        self.calls = {m: 0 for m in featurizer.encoders}
        self.samples = {m: 0 for m in featurizer.encoders}
        self.seconds = {m: 0.0 for m in featurizer.encoders}
        for modality, encoder in featurizer.encoders.items():
            encoder.compute = self._wrap(modality, encoder.compute)

    def _wrap(self, modality: str, function: Callable) -> Callable:
        def timed(inputs, *args, **kwargs):
            start = time.perf_counter()
            out = function(inputs, *args, **kwargs)
            self.seconds[modality] += time.perf_counter() - start
            self.calls[modality] += 1
            self.samples[modality] += len(inputs)
            return out

        return timed

    def reset(self) -> None:
        for table in (self.calls, self.samples, self.seconds):
            for m in table:
                table[m] = 0

    def total_calls(self) -> int:
        return int(sum(self.calls.values()))


def evaluate_dev(setup: Setup, cache, eval_step: Callable) -> tuple[float, np.ndarray, dict]:
    """One evaluation of the dev split with ``cache`` (``None``: disabled): ``(seconds, probs, scores)``."""
    cache_lib._IDENTITY_MEMO.clear()  # hash the media files again, as a new process would
    setup.featurizer.cache = cache
    start = time.perf_counter()
    raw = setup.featurizer.split_features(setup.dev)
    if setup.stats is None:
        setup.stats = feature_stats(raw)
    data = standardize(raw, setup.stats)
    probs = predict_proba(eval_step, setup.params, data, int(setup.cfg.train.eval_batch_size))
    scores = metrics_lib.classification_scores(data.labels, probs.argmax(-1), len(setup.class_names))
    seconds = time.perf_counter() - start
    setup.featurizer.cache = None
    return seconds, probs, scores


def measure_evaluation(setup: Setup, cache_root: pathlib.Path) -> tuple[dict, dict]:
    """The three evaluation passes; returns ``(evaluation, encoders)`` for the report."""
    meter = EncoderMeter(setup.featurizer)
    eval_step = jax.jit(make_eval_step(setup.model))
    passes, calls = {}, {}
    cold_cache = FeatureCache(cache_root)
    cold_s, cold_probs, scores = evaluate_dev(setup, cold_cache, eval_step)
    passes["cold"], calls["cold"] = cold_s, meter.total_calls()
    meter.reset()
    recompute_s, recompute_probs, _ = evaluate_dev(setup, None, eval_step)
    passes["recompute"], calls["recompute"] = recompute_s, meter.total_calls()
    encoders = {}
    for m, encoder in setup.featurizer.encoders.items():
        samples, seconds = meter.samples[m], meter.seconds[m]
        spec = setup.cfg.encoders[m]
        encoders[m] = {"family": str(spec.family), "model": str(spec.model), "samples": samples,
                       "seconds": seconds, "samples_per_s": samples / seconds if samples and seconds > 0 else None}
    meter.reset()
    warm_cache = FeatureCache(cache_root)  # a fresh object: rows come from the shards on disk
    cached_s, cached_probs, _ = evaluate_dev(setup, warm_cache, eval_step)
    passes["cached"], calls["cached"] = cached_s, meter.total_calls()
    stats = warm_cache.stats()
    evaluation = {
        "samples": len(setup.dev),
        "cold_s": passes["cold"],
        "recompute_s": passes["recompute"],
        "cached_s": passes["cached"],
        "speedup": passes["recompute"] / passes["cached"] if passes["cached"] > 0 else None,
        "encoder_calls": calls,
        "cache_entries": int(sum(v["entries"] for v in stats.values())),
        "cache_bytes": int(sum(v["bytes"] for v in stats.values())),
        "accuracy": float(scores["accuracy"]),
        "weighted_f1": float(scores["weighted_f1"]),
        "predictions_match": bool(np.allclose(cold_probs, recompute_probs, atol=1e-5)
                                  and np.allclose(cold_probs, cached_probs, atol=1e-5)),
    }
    return evaluation, encoders


def measure_train_step(setup: Setup, steps: int) -> dict:
    """Samples/s of the jit-compiled training step on random features of the run's input sizes."""
    cfg, model = setup.cfg, setup.model
    batch = int(cfg.train.batch_size)
    classes = len(setup.class_names)
    rng = np.random.default_rng(0)
    dims = setup.featurizer.dims
    data = FeatureSet({m: rng.normal(size=(batch, dims[m])).astype(np.float32) for m in model.modalities},
                      {m: np.ones(batch, bool) for m in model.modalities},
                      (np.arange(batch) % classes).astype(np.int32), [str(i) for i in range(batch)])
    tuning = None
    if cfg.mode != "frozen":
        # mode trainable / lora: the tuned encoders run inside the step on random inputs of full
        # size: text = full-length token sequences (the mask token where mask pooling looks for
        # it), Whisper = its whole window, wav2vec2 = 4 s clips, video = the encoder's frames.
        zero = {m: {"mean": [0.0] * d, "std": [1.0] * d} for m, d in dims.items()}
        tuning = Tuning(cfg, setup.featurizer, zero)
        inputs = {}
        for m, tuner in tuning.tuners.items():
            if m == "T":
                mask_id = tuner.encoder.tokenizer.mask_token_id
                ids = rng.integers(5, tuner.config.vocab_size, size=(batch, tuner.encoder.max_length)).astype(np.int32)
                if mask_id is not None:
                    ids[:, -2] = mask_id
                inputs[m] = ArrayRows({"input_ids": ids, "attention_mask": np.ones_like(ids)})
                continue
            items = []
            for _ in range(batch):
                item = tuner.encoder.blank_item()
                if "audio" in item:
                    item["audio"] = rng.normal(size=tuner.encoder.buckets[min(2, len(tuner.encoder.buckets) - 1)])
                if "mel" in item:
                    item["mel"] = rng.normal(size=item["mel"].shape).astype(np.float32)
                if "frames" in item:
                    item["frames"] = rng.integers(0, 256, size=item["frames"].shape).astype(np.uint8)
                items.append(item)
            inputs[m] = ArrayRows(tuner.encoder.collate(items))
        data.inputs = inputs
    prep = Prepared(cfg=cfg, run_dir=pathlib.Path("."), class_names=setup.class_names,
                    features={"train": data}, not_scored=(), featurizer=setup.featurizer,
                    model=model, feature_seconds=0.0, feature_stats={}, tuning=tuning)
    extras = usable_extras(cfg, model.modalities, distillation=True)
    skipped = [name for name in extras if name == "dist"]  # needs a teacher run's logits
    extras = {k: v for k, v in extras.items() if k not in skipped}
    optimizer = make_optimizer(cfg, WARMUP_STEPS + steps)
    state = init_state(prep, optimizer, extras)
    weights = inverse_frequency_weights(data.labels, classes) if cfg.loss.classification == "weighted" else None
    step = jax.jit(make_train_step(model, optimizer, loss_kind=cfg.loss.classification,
                                   class_weights=weights, extras=extras,
                                   combine=cfg.loss.get("combine", "sum"), tuning=tuning),
                   donate_argnums=0)
    inputs = batch_of(data, np.arange(batch))
    base = {"encoder_base": tuning.base_args} if tuning is not None and tuning.base_args is not None else {}
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        state, logs = step(state, inputs, **base)
    jax.block_until_ready((state, logs))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, logs = step(state, inputs, **base)
    jax.block_until_ready((state, logs))
    seconds = time.perf_counter() - start
    return {"batch_size": batch, "steps": int(steps), "warmup_steps": WARMUP_STEPS, "warmup_s": compile_s,
            "seconds": seconds, "steps_per_s": steps / seconds, "samples_per_s": batch * steps / seconds,
            "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
            "mode": str(cfg.mode),
            "encoder_trainable_parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(state.encoder))),
            "loss": float(logs["loss"]), "skipped_losses": skipped}


def fusion_step_on_random_features(cfg, *, batch: int, dim: int, classes: int = 7, devices=None,
                                   loss_only: bool = False):
    """``(step, state, data, parameters)``: the jit-compiled train step (``state`` donated) of
    ``cfg``'s model on T+A+V features of ``dim`` each, with its initial state and one random batch
    of ``batch`` (labels over ``classes``), put on ``devices`` (several: data parallel, the state
    replicated and the batch sharded; default: the first local device). The step returns
    ``(state, logs)``, or ``(state, loss)`` with ``loss_only``. What
    ``benchmarks/fusion_throughput.py`` and ``benchmarks/gpu_check.py`` time."""
    from emojax.training.parallel import DataParallel
    from emojax.training.state import TrainState

    model = build_model(cfg, {m: dim for m in "TAV"}, classes)
    rng = np.random.default_rng(0)
    data = {"features": {m: rng.normal(size=(batch, dim)).astype(np.float32) for m in "TAV"},
            "present": {m: np.ones(batch, bool) for m in "TAV"},
            "labels": rng.integers(0, classes, batch).astype(np.int32)}
    params = model.init({"params": jax.random.PRNGKey(0)}, data["features"], data["present"])["params"]
    optimizer = make_optimizer(cfg, 1000)
    state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                       opt_state=optimizer.init({"model": params, "losses": {}}),
                       rng=jax.random.PRNGKey(1), loss_state={})
    train = make_train_step(model, optimizer, loss_kind=cfg.loss.classification, class_weights=None, extras={})

    def step(state, data):
        state, logs = train(state, data)
        return (state, logs["loss"]) if loss_only else (state, logs)

    count = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    if devices is not None and len(devices) > 1:
        parallel = DataParallel(list(devices))
        state, data = parallel.replicate(state), parallel.shard(data)
        return jax.jit(step, donate_argnums=0, out_shardings=parallel.replicated), state, data, count
    state, data = jax.device_put((state, data), (devices or jax.local_devices())[0])
    return jax.jit(step, donate_argnums=0), state, data, count


def peak_memory() -> dict:
    """Peak host RSS of this process and the first local device's peak allocation (or None)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = usage if sys.platform == "darwin" else usage * 1024  # Linux reports KiB
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    peak = (stats or {}).get("peak_bytes_in_use")
    limit = (stats or {}).get("bytes_limit")
    return {"host_peak_rss_mib": rss_bytes / 2**20,
            "device": f"{device.platform}:{device.device_kind}",
            "device_peak_mib": peak / 2**20 if peak is not None else None,
            "device_limit_mib": limit / 2**20 if limit is not None else None}


def machine_description() -> dict:
    cpu = None
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devices = jax.local_devices()
    kinds: dict[str, int] = {}
    for d in devices:
        kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "usable_cores": usable, "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "devices": [f"{kind} x{count}" for kind, count in kinds.items()],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def machine_line(machine: dict) -> str:
    """One line naming the machine of :func:`machine_description`, for a benchmark's printout."""
    return (f"machine: {machine['cpu']}, {machine['cores']} cores, jax {machine['jax']} "
            f"({machine['jax_backend']}), {machine['date']}")


# ---------------------------------------------------------------------------------------------
# The benchmark and its report
# ---------------------------------------------------------------------------------------------
def run_benchmark(setup: Setup, output_dir: str | os.PathLike, *, steps: int = 50,
                  cache_dir: Optional[str | os.PathLike] = None,
                  report: Callable[[str], None] = lambda message: None) -> dict:
    """Measure ``setup`` (see the module docstring); writes benchmark.json / benchmark.md to
    ``output_dir`` and returns the JSON's content. ``cache_dir``: where the temporary feature
    cache goes (removed afterwards; default: the system's temporary folder)."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cache_root = pathlib.Path(tempfile.mkdtemp(prefix="emojax-benchmark-cache-", dir=cache_dir))
    try:
        report(f"evaluating dev ({len(setup.dev)} samples): empty cache, cache disabled, warm cache")
        evaluation, encoders = measure_evaluation(setup, cache_root)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    report(f"timing the train step ({steps} steps of {int(setup.cfg.train.batch_size)})")
    train_step = measure_train_step(setup, steps)
    result = {
        "label": config_lib.run_label(setup.cfg),
        "hash": config_lib.config_hash(setup.cfg),
        "run_dir": str(setup.run_dir) if setup.run_dir else None,
        "dataset": {"name": str(setup.cfg.dataset.name), "path": str(setup.cfg.dataset.path),
                    "split": setup.dev.name, "samples": len(setup.dev)},
        "modalities": list(setup.model.modalities),
        "precision": str(setup.cfg.precision),
        "load_s": setup.load_seconds,
        "evaluation": evaluation,
        "encoders": encoders,
        "train_step": train_step,
        "memory": peak_memory(),
        "machine": machine_description(),
    }
    write_json_atomic(output_dir / "benchmark.json", result)
    write_text_atomic(output_dir / "benchmark.md", format_markdown(result))
    return result


def _number(value: Optional[float], unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def format_markdown(result: dict) -> str:
    """The report: a machine table, then a measures table."""
    m, ev, ts, mem = result["machine"], result["evaluation"], result["train_step"], result["memory"]
    lines = [f"# Benchmark: {result['label']}", "",
             f"{'run ' + result['run_dir'] if result['run_dir'] else 'config (fresh parameters)'}; "
             f"dataset {result['dataset']['name']}, {result['dataset']['split']} split, "
             f"{result['dataset']['samples']} samples; {result['precision']}", "",
             "| machine | |", "|---|---|",
             f"| CPU | {m['cpu']} |",
             f"| cores | {m['cores']} ({m['usable_cores']} usable) |",
             f"| JAX | {m['jax']}, backend {m['jax_backend']}, devices: {', '.join(m['devices'])} |",
             f"| Python / OS | {m['python']} / {m['platform']} |",
             f"| date | {m['date']} |", "",
             "| measure | value |", "|---|---:|",
             f"| loading encoders, model and parameters | {_number(result['load_s'], ' s', 2)} |",
             "| dev evaluation, empty feature cache (first run, with compilation) | "
             f"{_number(ev['cold_s'], ' s', 3)} |",
             f"| dev evaluation, features recomputed (cache disabled) | {_number(ev['recompute_s'], ' s', 3)} |",
             f"| dev evaluation, features from the warm cache | {_number(ev['cached_s'], ' s', 3)} |",
             f"| warm cache speed-up over recomputing | {_number(ev['speedup'], 'x')} |",
             f"| encoder calls: empty / disabled / warm cache | {ev['encoder_calls']['cold']} / "
             f"{ev['encoder_calls']['recompute']} / {ev['encoder_calls']['cached']} |"]
    for modality, enc in result["encoders"].items():
        lines.append(f"| encoder {modality} ({enc['family']}: {pathlib.PurePath(enc['model']).name}), "
                     f"{enc['samples']} samples | {_number(enc['samples_per_s'], ' samples/s')} |")
    tuned = f", encoders {ts['mode']}" if ts.get("mode", "frozen") != "frozen" else ""
    lines += [f"| train step (batch {ts['batch_size']}{tuned}, jit, after {ts['warmup_steps']} warm-up steps) | "
              f"{_number(ts['samples_per_s'], ' samples/s', 0)} ({_number(ts['steps_per_s'], ' steps/s')}) |",
              f"| head parameters | {ts['parameters']:,} |",
              *([f"| trainable encoder parameters ({ts['mode']}) | {ts['encoder_trainable_parameters']:,} |"]
                if ts.get("encoder_trainable_parameters") else []),
              f"| host peak RSS | {_number(mem['host_peak_rss_mib'], ' MiB', 0)} |",
              f"| device peak memory ({mem['device']}) | "
              + (_number(mem['device_peak_mib'], ' MiB', 0) if mem['device_peak_mib'] is not None
                 else "n/a (not reported by this backend)") + " |",
              f"| dev accuracy / weighted F1 | {100 * ev['accuracy']:.2f} / {100 * ev['weighted_f1']:.2f} |", ""]
    if ts["skipped_losses"]:
        lines += [f"Not in the timed step: {', '.join(ts['skipped_losses'])} (needs a teacher run).", ""]
    return "\n".join(lines)


__all__ = ["Setup", "setup_from_run", "setup_from_config", "run_benchmark", "measure_evaluation",
           "measure_train_step", "peak_memory", "machine_description", "machine_line", "format_markdown",
           "EncoderMeter"]
