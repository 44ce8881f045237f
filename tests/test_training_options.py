"""Training options: the learning-rate schedule, gradient accumulation, selection on macro F1 with
``min_delta`` early stopping, label smoothing and explicit class weights, ``--print_config``, and
the run format 3 that holds them (a format-2 run migrated to it).

References: NumPy transcriptions of the schedules and losses; one batch of ``k * b`` rows for
``k`` accumulated batches of ``b``; the composed config and its presets for ``--print_config``;
today's fit for the migrated run."""
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.compose import compose
from emojax import config as config_lib
from emojax.data import dataset_kind
from emojax.model import losses as losses_lib
from emojax.model.model import build_model
from emojax.runs import format as format_lib
from emojax.training.loop import fit, improves, progress_at, stop_line
from emojax.training.plan import validate_config
from emojax.training.state import TrainState, learning_rate_schedule, make_optimizer, optimizer_updates
from emojax.training.steps import make_train_step, masked_classification_loss
from test_faults import text_config

MELD_E = 7  # MELD--E's classes


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------
def _reference_rate(kind: str, step: int, total: int, peak: float, warmup_ratio: float) -> float:
    warmup = max(1, round(warmup_ratio * total))
    if step < warmup:
        return peak * step / warmup
    rest, t = max(1, total - warmup), step - warmup
    if kind == "linear":
        return peak * max(0.0, 1 - t / rest)
    if kind == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * min(t, rest) / rest))
    return peak


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedules_match_their_formulas(kind):
    cfg = compose("encoders=T")
    cfg.train.update(schedule=kind, lr=2e-3, warmup_ratio=0.2)
    total = 50
    schedule = learning_rate_schedule(cfg, total)
    for step in (0, 3, 10, 11, 25, 37, 49, 60):
        np.testing.assert_allclose(float(schedule(step)), _reference_rate(kind, step, total, 2e-3, 0.2),
                                   rtol=1e-5, atol=1e-9, err_msg=f"{kind} at {step}")


def test_default_schedule_is_the_linear_one_and_names_are_checked():
    cfg = compose("encoders=T")
    assert cfg.train.schedule == "linear" and cfg.train.grad_accum_steps == 1
    cfg.train.schedule = "step"
    with pytest.raises(config_lib.ConfigError, match=r"^train\.schedule: 'step' is not one of linear, cosine, "
                                                      r"constant$"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------
DIMS = {"T": 16, "A": 16}


@pytest.mark.slow
def test_accumulated_batches_give_the_parameters_of_one_large_batch():
    """k = 3 batches of 4 rows, accumulated, move the parameters exactly as one batch of the same
    12 rows (dropout off, so the RNG plays no part); between updates the parameters stay put. The
    schedule counts updates: the accumulated optimizer over 3 x 5 steps is the large one's over 5."""
    k, b, updates = 3, 4, 3
    cfg = compose("encoders=T+A,fusion=vallina,loss=focal")
    cfg.model.dropout = 0.0
    accumulated = ml_collections.ConfigDict(cfg.to_dict())
    accumulated.train.grad_accum_steps = k
    assert optimizer_updates(accumulated, 5 * k) == 5 == optimizer_updates(cfg, 5)
    model = build_model(cfg, DIMS, MELD_E)
    rng = np.random.default_rng(0)
    batches = [{"features": {m: rng.normal(size=(k * b, d)).astype(np.float32) for m, d in DIMS.items()},
                "present": {m: np.ones(k * b, bool) for m in DIMS},
                "labels": rng.integers(0, MELD_E, k * b).astype(np.int32)} for _ in range(updates)]

    def run(optimizer, micro: int):
        params = model.init({"params": jax.random.PRNGKey(0)}, batches[0]["features"], batches[0]["present"])["params"]
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init({"model": params, "losses": {}}), rng=jax.random.PRNGKey(1),
                           loss_state={})
        step = jax.jit(make_train_step(model, optimizer, loss_kind="focal", class_weights=None, extras={}))
        for batch in batches:
            for i in range(micro):
                rows = slice(i * len(batch["labels"]) // micro, (i + 1) * len(batch["labels"]) // micro)
                before = state.params
                state, _ = step(state, jax.tree_util.tree_map(lambda x: x[rows], batch))
                if i < micro - 1:  # not an update yet
                    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, before)
        return state

    large = run(make_optimizer(cfg, 5), 1)
    small = run(make_optimizer(accumulated, 5 * k), k)
    assert int(small.step) == k * int(large.step) == k * updates
    moved = jax.tree_util.tree_map(lambda a, c: float(np.abs(np.asarray(a) - np.asarray(c)).max()),
                                   large.params, model.init({"params": jax.random.PRNGKey(0)},
                                                            batches[0]["features"], batches[0]["present"])["params"])
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4  # the updates did move the parameters
    for got, want in zip(jax.tree_util.tree_leaves(small.params), jax.tree_util.tree_leaves(large.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-7)


def test_grad_accum_steps_checked_and_refused_with_the_context_head():
    cfg = compose("dataset=MELD--E,encoders=T")
    cfg.train.grad_accum_steps = 0
    with pytest.raises(config_lib.ConfigError, match=r"^train\.grad_accum_steps: must be a whole number of at "
                                                      r"least 1 \(batches per optimizer update\), got 0$"):
        validate_config(cfg)
    cfg = compose("dataset=MELD--E,encoders=T,context=gru")
    cfg.train.grad_accum_steps = 2
    with pytest.raises(config_lib.ConfigError, match=r"^train\.grad_accum_steps: 2 is not supported with a "
                                                      r"dialogue context head"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------
# Selection and early stopping
# ---------------------------------------------------------------------------------------------
def test_min_delta_improvement_and_the_stop_line():
    assert improves(0.452, 0.45, 0.001) and not improves(0.4505, 0.45, 0.001)
    assert improves(0.4501, 0.45) and not improves(0.45, 0.45)
    history = [{"epoch": e, "dev": {"macro_f1": f}} for e, f in enumerate([0.30, 0.40, 0.4005, 0.41, 0.4102], 1)]
    progress = {"epoch": 5, "history": history, "best_epoch": 4, "best_score": 0.41, "bad_epochs": 1,
                "finished": False}
    # Replayed with min_delta 0.001: epoch 3 (+0.0005) and 5 (+0.0002) do not count.
    replayed = progress_at(progress, 5, "macro_f1", 0.001)
    assert (replayed["best_epoch"], replayed["best_score"], replayed["bad_epochs"]) == (4, 0.41, 1)
    plain = progress_at(progress, 5, "macro_f1")
    assert (plain["best_epoch"], plain["bad_epochs"]) == (5, 0)
    stopped = {"best_epoch": 4, "best_score": 0.452, "bad_epochs": 3}
    assert stop_line(7, "weighted_f1", 0.001, stopped) == (
        "stopped early at epoch 7: dev weighted_f1 did not improve by more than 0.001 for 3 epochs "
        "(best 45.20 at epoch 4)")
    assert stop_line(7, "macro_f1", 0.0, stopped) == (
        "stopped early at epoch 7: dev macro_f1 did not improve for 3 epochs (best 45.20 at epoch 4)")


def test_select_metric_and_min_delta_checked():
    cfg = compose("encoders=T")
    cfg.train.select_metric = "macro_f1"
    validate_config(cfg)
    cfg.train.select_metric = "f1"
    with pytest.raises(config_lib.ConfigError, match=r"^train\.select_metric: 'f1' is not one of accuracy, "
                                                      r"weighted_f1, macro_f1$"):
        validate_config(cfg)
    cfg = compose("encoders=T")
    cfg.train.min_delta = -0.01
    with pytest.raises(config_lib.ConfigError, match=r"^train\.min_delta: must be a number in \[0, 1\)"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------
# Label smoothing and class weights
# ---------------------------------------------------------------------------------------------
def _log_softmax(logits):
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_label_smoothing_and_class_weights_match_numpy(kind):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(9, 5)).astype(np.float32) * 2
    labels = rng.integers(0, 5, 9).astype(np.int32)
    weights = np.asarray([1.0, 0.5, 2.0, 0.0, 1.5], np.float32)
    s = 0.2
    log_p = _log_softmax(logits.astype(np.float64))
    target = np.eye(5)[labels] * (1 - s) + s / 5
    smoothed = -(target * log_p).sum(1)
    if kind == "focal":
        smoothed = (1 - np.exp(log_p[np.arange(9), labels])) ** 2 * smoothed
    w = weights[labels]
    np.testing.assert_allclose(float(losses_lib.classification_loss(kind, logits, labels, None, s)),
                               smoothed.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(losses_lib.classification_loss(kind, logits, labels, weights, s)),
                               (smoothed * w).sum() / w.sum(), rtol=1e-5)
    mask = np.arange(9) % 3 != 0
    np.testing.assert_allclose(float(masked_classification_loss(kind, logits, labels, weights, mask, s)),
                               (smoothed * w * mask).sum() / (w * mask).sum(), rtol=1e-5)
    # No smoothing: the loss as it always was.
    plain = -log_p[np.arange(9), labels]
    if kind == "focal":
        plain = (1 - np.exp(-plain)) ** 2 * plain
    np.testing.assert_allclose(float(losses_lib.classification_loss(kind, logits, labels)), plain.mean(), rtol=1e-5)


def test_label_smoothing_range_checked():
    cfg = compose("encoders=T")
    cfg.loss.label_smoothing = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"^loss\.label_smoothing: must be a number in \[0, 1\), "
                                                      r"got 1\.0$"):
        validate_config(cfg)


def test_class_weights_from_a_list_json_or_csv(tmp_path):
    cfg = compose("dataset=MELD--E,encoders=T")
    assert losses_lib.class_weights(cfg) is None
    names = dataset_kind("meld").class_names("emotion")
    wanted = [1.0, 2.0, 3.0, 0.5, 1.0, 4.0, 0.0]
    cfg.loss.class_weights = wanted
    np.testing.assert_array_equal(losses_lib.class_weights(cfg), np.asarray(wanted, np.float32))
    (tmp_path / "w.json").write_text(json.dumps(wanted))
    (tmp_path / "named.json").write_text(json.dumps(dict(zip(reversed(names), reversed(wanted)))))
    (tmp_path / "w.csv").write_text("class,weight\n" + "".join(f"{n},{w}\n" for n, w in zip(names, wanted)))
    for name in ("w.json", "named.json", "w.csv"):
        cfg.loss.class_weights = (str(tmp_path / name),)
        np.testing.assert_array_equal(losses_lib.class_weights(cfg), np.asarray(wanted, np.float32))
        validate_config(cfg)


def test_class_weights_errors_name_the_key_and_file(tmp_path):
    cfg = compose("dataset=MELD--E,encoders=T")
    (tmp_path / "short.json").write_text("[1, 2]")
    (tmp_path / "odd.csv").write_text("class,weight\nneutral,1\nhappy,2\n")
    (tmp_path / "w.txt").write_text("1")
    cases = {
        (1.0, 2.0): r"^loss\.class_weights: 2 weights for the 7 classes of meld emotion \(neutral, joy, surprise, "
                    r"anger, sadness, disgust, fear\); give one per class$",
        (1.0, -1.0, 1, 1, 1, 1, 1): r"^loss\.class_weights: weights must be at least 0 and not all 0",
        (str(tmp_path / "missing.json"),): rf"^loss\.class_weights: {tmp_path}/missing\.json: no such file$",
        (str(tmp_path / "short.json"),): rf"^loss\.class_weights: {tmp_path}/short\.json: 2 weights for the 7",
        (str(tmp_path / "odd.csv"),): rf"^loss\.class_weights: {tmp_path}/odd\.csv: unknown class 'happy'; the "
                                      r"classes are neutral",
        (str(tmp_path / "w.txt"),): rf"^loss\.class_weights: {tmp_path}/w\.txt: not a \.json or \.csv file",
        (1.0, "x", 1, 1, 1, 1, 1): r"^loss\.class_weights: weights must be finite numbers",
    }
    for given, message in cases.items():
        cfg.loss.class_weights = given
        with pytest.raises(config_lib.ConfigError, match=message):
            validate_config(cfg)
    cfg = compose("dataset=MELD--E,encoders=T,loss=weighted")
    cfg.loss.class_weights = (1.0,) * 7
    with pytest.raises(config_lib.ConfigError, match=r"^loss\.class_weights: loss\.classification 'weighted'"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------
# --print_config
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_print_config_names_every_field_and_its_source(launcher, tmp_path):
    done = launcher.run("train", "--config=configs/train.py:dataset=MELD--E,loss=focal,mode=lora",
                        "--config.train.lr=0.0005", "--config.train.schedule=cosine", "--print_config",
                        f"--workdir={tmp_path / 'work'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "work").exists()  # nothing trained, nothing written
    rows = {}
    for line in done.stdout.splitlines():
        key, value, source = line.split(None, 2)
        rows[key] = (json.loads(value), source)
    cfg = compose("dataset=MELD--E,loss=focal,mode=lora")
    cfg.train.update(lr=0.0005, schedule="cosine")
    assert {key: value for key, (value, _) in rows.items()} == json.loads(json.dumps(dict(config_lib.leaves(cfg))))
    assert rows["train.lr"][1] == "--config.train.lr" and rows["train.schedule"][1] == "--config.train.schedule"
    assert rows["train.epochs"][1] == "default" and rows["loss.label_smoothing"][1] == "default"
    assert rows["loss.classification"][1] == "loss=focal" and rows["finetune.lr"][1] == "mode=lora"
    assert rows["encoders.T.pooling"][1] == "mode=lora" and rows["dataset.target"][1] == "dataset=MELD--E"
    assert rows["fusion.out_features"][1] == "fusion=vallina (default preset)"
    assert rows["parts.loss"][1] == "--config=...:loss=focal" and rows["parts.fusion"][1] == "default"
    assert rows["encoders.A.pooling"][1] == "compose"


# ---------------------------------------------------------------------------------------------
# Run format 3: a format-2 run migrated
# ---------------------------------------------------------------------------------------------
FORMAT_3_FIELDS = {"train": ("schedule", "grad_accum_steps", "min_delta"), "loss": ("label_smoothing", "class_weights")}


def to_format_2(run_dir, cfg):
    """The run in ``run_dir`` (trained today) as format 2 wrote it: its config without the fields
    format 3 added, in the directory of that config's hash, with that hash and format 2 recorded."""
    raw = json.loads((run_dir / "config.json").read_text())
    for section, keys in FORMAT_3_FIELDS.items():
        for key in keys:
            del raw[section][key]
    digest = config_lib.config_hash(raw)
    assert digest == format_lib.format_2_hash(cfg) != config_lib.config_hash(cfg)
    earlier = run_dir.parent / f"{digest}--{cfg.seed}"
    os.rename(run_dir, earlier)
    (earlier / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    for name, extra in (("meta.json", {"format": 2}), ("results.json", {})):
        payload = json.loads((earlier / name).read_text())
        payload.update(hash=digest, **extra)
        (earlier / name).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return earlier


@pytest.mark.slow
def test_a_format_2_run_migrates_to_format_3_and_scores_as_before(tmp_path, text_meld, tiny_bert):
    import importlib
    import io

    from emojax.training.evaluation import load_run, score
    tool = importlib.import_module("launch.tool")

    cfg = text_config(text_meld, tiny_bert, tmp_path / "cache", epochs=1)
    workdir = tmp_path / "work"
    today = fit(cfg, workdir)
    results = json.loads((today / "results.json").read_text())
    old = to_format_2(today, cfg)
    assert format_lib.run_format(old) == 2
    with pytest.raises(format_lib.RunFormatError, match="run format 2"):
        fit(cfg, workdir)
    out = io.StringIO()
    tool.cmd_migrate(workdir, apply=True, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"migrated  {old.relative_to(workdir)} -> {today.relative_to(workdir)}  (config.json: "
                        "train.schedule=linear written, train.grad_accum_steps=1 written, train.min_delta=0.0 written, "
                        "loss.label_smoothing=0.0 written, loss.class_weights=[] written; hash "
                        f"{old.name.split('--')[0]} -> {today.name.split('--')[0]}; format 3)")
    assert not old.exists() and format_lib.run_format(today) == 3
    assert config_lib.config_hash(config_lib.load_config(today / "config.json")) == config_lib.config_hash(cfg)
    assert json.loads((today / "results.json").read_text()) == results
    prep, eval_step, params, _ = load_run(today, workdir)
    dev = score(eval_step, params, prep.features["dev"], len(prep.class_names), 64)
    assert dev["accuracy"] == results["dev"]["accuracy"]
    out = io.StringIO()
    tool.cmd_migrate(workdir, apply=True, out=out)
    assert "every run is of format 3" in out.getvalue()
    shutil.rmtree(workdir)
