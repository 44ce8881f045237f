"""End to end: features -> jit-compiled training -> dev selection -> test scored once; resume."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from configs.compose import compose
from emojax import config as config_lib
from emojax.training.evaluation import load_run, predict_proba
from emojax.features.featurizer import FeatureSet
from emojax.training.loop import fit
from emojax.training.parallel import data_parallel
from emojax.training.preparation import prepare
from emojax.training.state import TrainState, init_state, make_optimizer, usable_extras
from emojax.training.steps import make_eval_step, make_train_step
from launchers import host_devices_env


def text_config(data, bert, epochs=4, loss="ce"):
    cfg = compose(f"dataset=MELD--E,encoders=T,loss={loss}")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.progress = False
    return cfg


@pytest.mark.slow
def test_train_text_run_end_to_end(tmp_path, text_meld, tiny_bert, monkeypatch):
    from emojax.encoders import text as text_lib

    calls = []
    original = text_lib.TextEncoder.encode

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(text_lib.TextEncoder, "encode", counting)
    cfg = text_config(text_meld, tiny_bert, epochs=15)
    cfg.train.patience = 100
    run_dir = fit(cfg, tmp_path)
    assert run_dir == config_lib.run_dir(cfg, tmp_path)
    # Frozen encoder: every split encoded once, before the first epoch, never again.
    assert sum(calls) == 140 + 42 + 42
    results = json.loads((run_dir / "results.json").read_text())
    assert 1 <= results["best_epoch"] <= 15
    assert results["dev"]["scored"] and results["test"]["scored"]
    # Class words are in the text: the head is well above chance (1/7) and close to a
    # scikit-learn logistic-regression probe on the same cached features.
    from sklearn.linear_model import LogisticRegression

    prep = prepare(cfg, tmp_path)
    train, dev = prep.features["train"], prep.features["dev"]
    probe = LogisticRegression(max_iter=3000).fit(train.features["T"], train.labels)
    assert results["dev"]["accuracy"] > 0.4
    assert results["dev"]["accuracy"] >= probe.score(dev.features["T"], dev.labels) - 0.1
    calls.clear()
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    best_row = history[results["best_epoch"] - 1]
    assert results["dev"]["weighted_f1"] == pytest.approx(best_row["dev"]["weighted_f1"])
    assert results["dev"]["weighted_f1"] == max(row["dev"]["weighted_f1"] for row in history)
    for name in ("confusion_dev.png", "confusion_test.png", "history.png", "metrics.md", "config.json"):
        assert (run_dir / name).exists(), name
    # A second run of the same data reads every feature from the cache.
    cfg.seed = 1
    fit(cfg, tmp_path)
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "focal+spcl", "weight+apcl+uncertainty"])
def test_resume_reproduces_uninterrupted_run(tmp_path, text_meld, tiny_bert, loss):
    """Parameters, optimizer, RNG, the SPCL pools and the data order survive a restart."""
    cfg = text_config(text_meld, tiny_bert, epochs=4, loss=loss)
    cfg.train.patience = 100
    whole = fit(cfg, tmp_path / "a")
    interrupted = fit(cfg, tmp_path / "b", max_epochs=2)
    assert not (interrupted / "results.json").exists()
    progress = json.loads((interrupted / "progress.json").read_text())
    assert progress["epoch"] == 2 and not progress["finished"]
    resumed = fit(cfg, tmp_path / "b")
    a = json.loads((whole / "history.json").read_text())
    b = json.loads((resumed / "history.json").read_text())
    np.testing.assert_allclose([r["train_loss"] for r in a], [r["train_loss"] for r in b], rtol=1e-6)
    np.testing.assert_allclose([r["dev"]["weighted_f1"] for r in a], [r["dev"]["weighted_f1"] for r in b])
    ra = json.loads((whole / "results.json").read_text())
    rb = json.loads((resumed / "results.json").read_text())
    assert ra["best_epoch"] == rb["best_epoch"]
    assert ra["test"]["accuracy"] == rb["test"]["accuracy"]


def test_train_absent_test_split_not_scored(tmp_path, text_meld, tiny_bert):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    (data / "test_sent_emo.csv").unlink()
    cfg = text_config(data, tiny_bert, epochs=1)
    run_dir = fit(cfg, tmp_path / "runs")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["scored"] is False and "test" in results["test"]["reason"]
    assert results["dev"]["scored"] is True


@pytest.mark.slow
def test_infer_estimator_and_evaluate(tmp_path, text_meld, tiny_bert):
    from emojax.inference import Estimator

    cfg = text_config(text_meld, tiny_bert, epochs=3)
    run_dir = fit(cfg, tmp_path)
    estimator = Estimator(run_dir)
    out = estimator.predict(text="i am so happy wonderful")
    assert set(out["probabilities"]) == {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["predicted"] == max(out["probabilities"], key=out["probabilities"].get)
    # The estimator agrees with the batch evaluation of the same run on a dev utterance.
    prep, eval_step, params, _ = load_run(run_dir, tmp_path)
    dev = prep.features["dev"]
    probs = predict_proba(eval_step, params, dev, 8)
    sample = prep.featurizer.cfg  # noqa: F841  (the estimator rebuilt the same featurizer)
    from emojax.data import load_dataset

    first = load_dataset("meld", str(text_meld), target="emotion").splits["dev"].samples[0]
    single = estimator.predict(text=first.text)
    np.testing.assert_allclose(list(single["probabilities"].values()), probs[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nope.flac"):
        estimator.predict(text="hi", audio=str(tmp_path / "nope.flac"))


@pytest.mark.slow
def test_train_step_multimodal_losses_uncertainty_total_matches_losses(caplog):
    """CMCL and FRL on the fusion inputs, weighed by learned sigmas: the step's loss is the
    uncertainty-weighted sum of the library's losses, and the loss parameters are trained."""
    from emojax.model import losses as losses_lib
    from emojax.model.model import build_model

    cfg = compose("encoders=T+A+V,fusion=vallina,loss=focal+cmcl+frl-meld+uncertainty")
    cfg.model.dropout = 0.0
    dims = {"T": 6, "A": 6, "V": 6}  # CMCL compares the modalities' features: one size
    model = build_model(cfg, dims, 7)
    rng = np.random.default_rng(0)
    batch = {"features": {m: rng.normal(size=(8, d)).astype(np.float32) for m, d in dims.items()},
             "present": {m: np.ones(8, bool) for m in dims},
             "labels": rng.integers(0, 7, 8).astype(np.int32)}

    class Prep:  # the parts of emojax.training.preparation.Prepared that init_state reads
        pass

    prep = Prep()
    prep.cfg, prep.model, prep.class_names = cfg, model, tuple("abcdefg")
    prep.features = {"train": FeatureSet(batch["features"], batch["present"], batch["labels"],
                                                   [str(i) for i in range(8)])}
    optimizer = make_optimizer(cfg, 100)
    extras = usable_extras(cfg, model.modalities)
    state = init_state(prep, optimizer, extras)
    assert set(state.loss_params) == {"frl", "uncertainty"}
    assert set(state.loss_params["uncertainty"]) == {"classification", "cmcl", "frl"}

    params, loss_params = state.params, state.loss_params
    logits, aux, fused = model.apply({"params": params}, batch["features"], batch["present"])
    cls = losses_lib.focal_loss(logits, batch["labels"])
    cmcl = losses_lib.cmcl_loss(batch["features"], main="T")
    concat = np.concatenate([batch["features"][m] for m in ("T", "A", "V")], axis=1)
    frl = losses_lib.reconstruction_loss(loss_params["frl"], fused, concat, alpha=1.0)
    # sigma = 1 at the start: 0.5 * each loss, log sigma = 0.
    expected = 0.5 * (cls + cmcl + frl) + aux

    step = jax.jit(make_train_step(model, optimizer, loss_kind="focal", class_weights=None,
                                             extras=extras, combine="uncertainty"))
    new_state, logs = step(state, batch)
    np.testing.assert_allclose(float(logs["loss"]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(logs["cmcl"]), float(cmcl), rtol=1e-5)
    np.testing.assert_allclose(float(logs["frl"]), float(frl), rtol=1e-5)
    for _ in range(3):
        new_state, logs = step(new_state, batch)
    sigmas = new_state.loss_params["uncertainty"]
    assert all(float(abs(v)) > 0 for v in jax.tree_util.tree_leaves(sigmas))
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                   new_state.loss_params["frl"], state.loss_params["frl"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0

    # On a unimodal run the multimodal losses are skipped with a note.
    text_cfg = compose("encoders=T,loss=ce+cmcl+frl-meld+spcl")
    with caplog.at_level("WARNING"):
        assert list(usable_extras(text_cfg, ("T",))) == ["spcl"]
    assert "cmcl needs several modalities" in caplog.text and "frl needs several modalities" in caplog.text
    uneven = build_model(cfg, {"T": 6, "A": 4, "V": 6}, 7)
    bad = dict(batch, features=dict(batch["features"], A=batch["features"]["A"][:, :4]))
    prep.model, prep.features["train"].features = uneven, bad["features"]
    uneven_state = init_state(prep, optimizer, extras)
    uneven_step = make_train_step(uneven, optimizer, loss_kind="focal", class_weights=None, extras=extras)
    with pytest.raises(ValueError, match="project_inputs"):
        uneven_step(uneven_state, bad)
    with pytest.raises(config_lib.ConfigError, match="dist"):
        usable_extras(compose("encoders=T+A,loss=ce+dist"), ("T", "A"))


@pytest.mark.slow
def test_padded_eval_batch_equals_unpadded_in_fusion_across_the_batch():
    """With the suite's attention across the batch, the padding of the last evaluation batch is
    masked out: its real rows score as they would alone."""
    from emojax.model.model import build_model

    cfg = compose("encoders=T+A+V,fusion=DF-1.0+attn")
    cfg.fusion.project_inputs = 24
    dims = {"T": 10, "A": 6, "V": 5}
    model = build_model(cfg, dims, 7)
    rng = np.random.default_rng(3)
    n = 11
    data = FeatureSet({m: rng.normal(size=(n, d)).astype(np.float32) for m, d in dims.items()},
                                {m: np.ones(n, bool) for m in dims}, np.zeros(n, np.int32), [str(i) for i in range(n)])
    # init and apply compiled (one program each) rather than dispatched op by op.
    params = jax.jit(model.init)(jax.random.PRNGKey(0), data.features, data.present)["params"]
    apply = jax.jit(model.apply)
    eval_step = jax.jit(make_eval_step(model))
    probs = predict_proba(eval_step, params, data, batch_size=8)
    tail = {m: v[8:] for m, v in data.features.items()}
    alone = jax.nn.softmax(apply({"params": params}, tail, {m: v[8:] for m, v in data.present.items()})[0])
    np.testing.assert_allclose(probs[8:], np.asarray(alone), atol=1e-5)
    # Without the mask the padding rows would change the real ones (attention across the batch).
    padded = {m: np.concatenate([v[8:], np.repeat(v[-1:], 5, 0)]) for m, v in data.features.items()}
    unmasked = jax.nn.softmax(apply({"params": params}, padded, {m: np.ones(8, bool) for m in dims})[0])[:3]
    assert not np.allclose(np.asarray(unmasked), probs[8:], atol=1e-5)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory, text_meld, tiny_bert):
    """``(loss, mode) -> record`` of ``scripts/data_parallel_run.py`` on 1 device, trained in this
    process once per config: the reference of the 8-device and the two-process runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "data_parallel_run", pathlib.Path(__file__).parent / "scripts" / "data_parallel_run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = {}

    def get(loss, mode="frozen"):
        if (loss, mode) not in runs:
            workdir = tmp_path_factory.mktemp("single-device")
            runs[loss, mode] = script.run(str(text_meld), str(tiny_bert), str(workdir), 1, loss, mode)
        return runs[loss, mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("loss,mode", [("focal+spcl", "frozen")])
def test_data_parallel_8_devices_match_1_device(tmp_path, text_meld, tiny_bert, loss, mode, single_device_run):
    """Training split over 8 (host) devices gives the parameters, losses and scores of 1 device
    (with ``lora``, also the fine-tuned encoder's dev features; LoRA over 8 devices is checked in
    test_partial_finetune.py, on the top layer)."""
    import subprocess
    import sys

    script = pathlib.Path(__file__).parent / "scripts" / "data_parallel_run.py"
    env = host_devices_env(8)
    out = {1: single_device_run(loss, mode)}
    done = subprocess.run([sys.executable, str(script), str(text_meld), str(tiny_bert),
                           str(tmp_path / "runs8"), "8", loss, mode],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out[8] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out[8]["devices"] == 8 and out[1]["used"] == 1
    np.testing.assert_allclose(out[8]["train_loss"], out[1]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(out[8]["params"], out[1]["params"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[8]["dev_wf1"], out[1]["dev_wf1"], atol=1e-6)
    assert out[8]["test_accuracy"] == out[1]["test_accuracy"]
    np.testing.assert_allclose(out[8]["dev_features"], out[1]["dev_features"], rtol=1e-4, atol=1e-3)


def test_data_parallel_config_errors_name_the_key():
    cfg = compose("encoders=T")
    cfg.train.devices = jax.local_device_count() + 1
    with pytest.raises(config_lib.ConfigError, match="train.devices"):
        data_parallel(cfg)
    cfg.train.devices = 1
    assert data_parallel(cfg) is None
    # The device count is not part of the config hash: the same run on 1 or 8 devices.
    other = compose("encoders=T")
    other.train.devices = 8
    assert config_lib.config_hash(other) == config_lib.config_hash(cfg)


@pytest.mark.slow
def test_bfloat16_training_reaches_float32_accuracy(tmp_path, text_meld, tiny_bert):
    """bfloat16 compute (features and head) with float32 master parameters and optimizer state:
    dev accuracy within 5 points of the float32 run on the same data and seed."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        cfg = text_config(text_meld, tiny_bert, epochs=10)
        cfg.precision = precision
        cfg.train.patience = 100
        runs[precision] = json.loads((fit(cfg, tmp_path / precision) / "results.json").read_text())
    assert runs["float32"]["dev"]["accuracy"] > 0.4
    assert abs(runs["bfloat16"]["dev"]["accuracy"] - runs["float32"]["dev"]["accuracy"]) <= 0.05


@pytest.mark.slow
def test_bfloat16_step_computes_in_bfloat16_keeps_float32_masters():
    from emojax.model.model import build_model

    cfg = compose("encoders=T+A,fusion=DF-1.0+attn,loss=focal+spcl")
    cfg.precision = "bfloat16"
    cfg.fusion.update(project_inputs=16, private_dim=32, shared_dim=16)
    model = build_model(cfg, {"T": 8, "A": 8}, 4)
    rng = np.random.default_rng(0)
    batch = {"features": {m: rng.normal(size=(8, 8)).astype(np.float32) for m in ("T", "A")},
             "present": {m: np.ones(8, bool) for m in ("T", "A")}, "labels": rng.integers(0, 4, 8).astype(np.int32)}
    params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["features"], batch["present"])["params"]
    optimizer = make_optimizer(cfg, 10)
    from emojax.model import losses as losses_lib

    extras = cfg.loss.extras.to_dict()
    state = TrainState(step=np.zeros((), np.int32), params=params,
                                 opt_state=optimizer.init({"model": params, "losses": {}}), rng=jax.random.PRNGKey(1),
                                 loss_state=losses_lib.init_loss_state(extras, num_classes=4, embed_dim=32 + 16,
                                                                       rng=jax.random.PRNGKey(2)))
    step = make_train_step(model, optimizer, loss_kind="focal", class_weights=None, extras=extras)
    # Traced once: the jaxpr read, then the same trace lowered and compiled for the step.
    traced = jax.jit(step).trace(state, batch)
    jaxpr = str(traced.jaxpr)
    products = [line for line in jaxpr.splitlines() if "= dot_general" in line]
    assert products and sum("bf16" in line.split("=")[0] for line in products) > len(products) // 2
    new_state, logs = traced.lower().compile()(state, batch)
    assert logs["loss"].dtype == np.float32 and np.isfinite(float(logs["loss"]))
    leaves = jax.tree_util.tree_leaves((new_state.params, new_state.opt_state))
    assert all(leaf.dtype in (np.float32, np.int32) for leaf in leaves if hasattr(leaf, "dtype"))


def test_feature_cache_key_changes_with_precision_and_pooling(text_meld, tiny_bert):
    from emojax.features.featurizer import Featurizer

    cfg = text_config(text_meld, tiny_bert)
    spaces = {}
    for precision, pooling in (("float32", "mean"), ("bfloat16", "mean"), ("float32", "cls")):
        cfg.precision, cfg.encoders.T.pooling = precision, pooling
        spaces[precision, pooling] = Featurizer(cfg).encoders["T"].namespace
    assert len(set(spaces.values())) == 3
    cfg.precision, cfg.encoders.T.pooling = "float32", "mean"
    assert Featurizer(cfg).encoders["T"].namespace == spaces["float32", "mean"]


@pytest.mark.slow
def test_multihost_two_processes_match_single_process(tmp_path, text_meld, tiny_bert, single_device_run):
    """Two processes on localhost (jax.distributed, CPU devices) train as one: both end with the
    single-process losses and dev scores; only process 0 writes the run's files."""
    import socket
    import subprocess
    import sys

    scripts = pathlib.Path(__file__).parent / "scripts"
    env = host_devices_env(1)  # one device each
    # The same config as the 8-device test's focal+spcl reference: one run serves both.
    reference = single_device_run("focal+spcl", "frozen")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(scripts / "multihost_run.py"), str(text_meld), str(tiny_bert),
                               str(tmp_path / "multi"), str(i), "2", str(port), "focal+spcl"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["process"] for r in results] == [0, 1] and results[0]["global_devices"] == 2
    for r in results:
        np.testing.assert_allclose(r["train_loss"], reference["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(r["dev_wf1"], reference["dev_wf1"], atol=1e-6)
    run_dirs = list((tmp_path / "multi").glob("checkpoints/training/*/*/*/*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "results.json").exists()
