"""The benchmark command: every field measured, the warm cache never runs an encoder, the report."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from emojax import benchmark as bench
from configs.compose import compose
from emojax.training.loop import fit
from emojax.training.steps import make_eval_step
from emojax.features.cache import FeatureCache
from emojax.data.demo import generate_demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"train": 24, "dev": 12, "test": 12}
TOP_FIELDS = {"label", "hash", "run_dir", "dataset", "modalities", "precision", "load_s", "evaluation", "encoders",
              "train_step", "memory", "machine"}
EVALUATION_FIELDS = {"samples", "cold_s", "recompute_s", "cached_s", "speedup", "encoder_calls", "cache_entries",
                     "cache_bytes", "accuracy", "weighted_f1", "predictions_match"}
TRAIN_FIELDS = {"batch_size", "steps", "warmup_steps", "warmup_s", "seconds", "steps_per_s", "samples_per_s",
                "parameters", "loss", "skipped_losses", "mode",
                "encoder_trainable_parameters"}
MACHINE_FIELDS = {"cpu", "cores", "usable_cores", "platform", "python", "jax", "jax_backend", "devices", "date"}
MEMORY_FIELDS = {"host_peak_rss_mib", "device", "device_peak_mib", "device_limit_mib"}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("bench") / "demo", seed=0, sizes=SMALL)


def demo_config(data, bert):
    cfg = compose("dataset=demo,encoders=T+A+V,loss=focal+spcl")
    cfg.dataset.path, cfg.dataset.generate = str(data), False
    cfg.encoders.T.model = str(bert)
    cfg.train.batch_size, cfg.progress = 8, False
    return cfg


def check_result(result, modalities, samples):
    assert set(result) == TOP_FIELDS
    ev, ts, mem = result["evaluation"], result["train_step"], result["memory"]
    assert set(ev) == EVALUATION_FIELDS and set(ts) == TRAIN_FIELDS
    assert set(result["machine"]) == MACHINE_FIELDS and set(mem) == MEMORY_FIELDS
    assert ev["samples"] == samples == result["dataset"]["samples"]
    for key in ("cold_s", "recompute_s", "cached_s", "speedup", "cache_entries", "cache_bytes"):
        assert ev[key] > 0, key
    assert ev["encoder_calls"]["cached"] == 0  # the warm cache answers every feature
    assert ev["encoder_calls"]["cold"] > 0 and ev["encoder_calls"]["recompute"] == ev["encoder_calls"]["cold"]
    assert ev["predictions_match"] is True
    assert set(result["encoders"]) == set(modalities)
    for m, enc in result["encoders"].items():
        assert enc["samples"] == samples and enc["seconds"] > 0 and enc["samples_per_s"] > 0, m
    for key in ("warmup_s", "seconds", "steps_per_s", "samples_per_s", "parameters", "steps", "batch_size"):
        assert ts[key] > 0, key
    assert np.isfinite(ts["loss"])
    assert result["load_s"] > 0 and mem["host_peak_rss_mib"] > 0
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        assert mem["device_peak_mib"] > 0
    else:
        assert mem["device_peak_mib"] is None
    machine = result["machine"]
    assert machine["cores"] > 0 and machine["cpu"] and machine["jax_backend"] == jax.default_backend()


@pytest.mark.slow
def test_benchmark_config_every_field_and_cached_evaluation_runs_no_encoder(tmp_path, demo_data, tiny_bert,
                                                                            monkeypatch):
    from emojax.encoders import classic
    from emojax.encoders import text as text_lib

    calls = {"T": 0, "A": 0, "V": 0}

    def counting(modality, function):
        def wrapped(*args, **kwargs):
            calls[modality] += 1
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(text_lib.TextEncoder, "encode", counting("T", text_lib.TextEncoder.encode))
    monkeypatch.setattr(classic, "audio_features_from_samples", counting("A", classic.audio_features_from_samples))
    monkeypatch.setattr(classic, "video_features_from_frames", counting("V", classic.video_features_from_frames))
    cfg = demo_config(demo_data, tiny_bert)
    cfg.cache.media_workers = 1  # every file in this process, where the calls are counted (no worker processes)
    setup = bench.setup_from_config(cfg)

    # The warm-cache pass on its own: every feature read from the shards, no encoder called.
    eval_step = jax.jit(make_eval_step(setup.model))
    _, computed, _ = bench.evaluate_dev(setup, FeatureCache(tmp_path / "cache"), eval_step)
    assert calls == {"T": 1, "A": SMALL["dev"], "V": SMALL["dev"]}
    calls.update(T=0, A=0, V=0)
    _, cached, _ = bench.evaluate_dev(setup, FeatureCache(tmp_path / "cache"), eval_step)
    assert calls == {"T": 0, "A": 0, "V": 0}
    np.testing.assert_allclose(cached, computed, atol=1e-6)

    result = bench.run_benchmark(setup, tmp_path / "out", steps=5, cache_dir=tmp_path / "scratch")
    check_result(result, ("T", "A", "V"), SMALL["dev"])
    assert result["run_dir"] is None and result["train_step"]["batch_size"] == 8
    assert not list((tmp_path / "scratch").iterdir())  # the temporary cache is removed
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == json.loads(json.dumps(result))
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    assert markdown == bench.format_markdown(result)
    for needle in ("| machine | |", "| CPU |", "| cores |", "| JAX |", "| date |", "| measure | value |",
                   "features from the warm cache", "encoder T (bert", "encoder V (classic-video",
                   "train step (batch 8", "host peak RSS", "device peak memory"):
        assert needle in markdown, needle


@pytest.mark.slow
def test_benchmark_run_dir_scores_as_the_run_did(tmp_path, text_meld, tiny_bert):
    cfg = compose("dataset=MELD--E,encoders=T")
    cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(tiny_bert)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.progress = 3, 16, 1e-2, False
    run_dir = fit(cfg, tmp_path / "runs")
    setup = bench.setup_from_run(run_dir)
    result = bench.run_benchmark(setup, tmp_path / "out", steps=5)
    check_result(result, ("T",), 42)
    results = json.loads((run_dir / "results.json").read_text())
    assert result["evaluation"]["accuracy"] == pytest.approx(results["dev"]["accuracy"])
    assert result["evaluation"]["weighted_f1"] == pytest.approx(results["dev"]["weighted_f1"])
    assert result["run_dir"] == str(run_dir) and result["hash"] == results["hash"]
    assert bench.setup_from_run(run_dir, max_samples=10).dev.samples == setup.dev.samples[:10]


@pytest.mark.slow
def test_benchmark_launcher_config_end_to_end(tmp_path, demo_data, tiny_bert):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "launch.benchmark", "--config=configs/train.py:dataset=demo,encoders=T+A",
         f"--config.dataset.path={demo_data}", "--config.dataset.generate=False",
         f"--config.encoders.T.model={tiny_bert}", "--config.train.batch_size=8", "--steps=3", "--max_samples=6",
         f"--output_dir={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    check_result(result, ("T", "A"), 6)
    assert (out / "benchmark.md").read_text().strip() in done.stdout  # the table is printed
    assert done.stdout.strip().splitlines()[-1] == str(out)
    both = subprocess.run([sys.executable, "-m", "launch.benchmark", "--run=x", "--config=configs/train.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert both.returncode != 0 and "exactly one" in both.stderr


@pytest.mark.slow
def test_benchmark_train_step_of_lora_config_trains_adapters(text_meld, tiny_bert):
    """A fine-tuning config times the step with the text encoder inside it; LoRA of rank 4 on the
    tiny BERT's six projections per layer (hidden 32, MLP 64, 2 layers) trains 3,584 parameters."""
    from emojax.benchmark import measure_train_step, setup_from_config

    cfg = compose("dataset=MELD--E,encoders=T,mode=lora")
    cfg.dataset.path = str(text_meld)
    cfg.encoders.T.model = str(tiny_bert)
    cfg.finetune.lora.rank = 4
    cfg.train.batch_size = 8
    result = measure_train_step(setup_from_config(cfg, max_samples=8), steps=2)
    per_layer = 4 * (32 * 4 + 4 * 32) + (32 * 4 + 4 * 64) + (64 * 4 + 4 * 32)
    assert result["mode"] == "lora" and result["encoder_trainable_parameters"] == 2 * per_layer
    assert np.isfinite(result["loss"])
