"""What a run reports about itself: labels that list every override, TensorBoard runs named by
their label (text and hparams in the run's own folder), dev loss beside dev scores in percent,
test scores once, provenance of each start, trackers (Weights & Biases offline), history.png."""
import importlib
import json
import math
import pathlib
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from configs.compose import compose
from emojax import config as config_lib
from emojax.metrics import history_figure
from emojax.runs import provenance
from emojax.training import events as events_lib
from emojax.training.evaluation import load_run, predict_proba
from emojax.training.events import EVENTS_DIR, RunEvents, WandbRun, event_files, read_scalars
from emojax.training.loop import fit

TOOL = importlib.import_module("launch.tool")  # the module (launch/__init__.py names a function tool)


def tiny_config(data, bert, **train):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.update({"epochs": 2, "batch_size": 16, "lr": 1e-2, "patience": 100, **train})
    cfg.progress = False
    return cfg


# ---------------------------------------------------------------------------------------------
# Labels: every override of a hashed field
# ---------------------------------------------------------------------------------------------
def test_label_lists_every_override_and_tells_configs_apart():
    base = compose("dataset=MELD--E,encoders=T,loss=ce")
    assert config_lib.run_label(base) == "MELD--E T vallina ce 1xE frozen T[pool=mean,ctx=0,len=64] seed=0"
    changes = {"train.epochs": 3, "train.lr": 5e-4, "train.batch_size": 64, "precision": "bfloat16",
               "model.dropout": 0.3, "train.weight_decay": 0.0}
    labels = {config_lib.run_label(base)}
    for key, value in changes.items():
        cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
        config_lib.validate(cfg)
        label = config_lib.run_label(cfg)
        assert f" {key}={value} seed=0" in label, label
        labels.add(label)
    assert len(labels) == 1 + len(changes)
    both = compose("dataset=MELD--E,encoders=T,loss=ce")
    both.train.epochs, both.precision, both.encoders.T.model = 3, "bfloat16", "/models/tiny-bert/"
    assert config_lib.overrides(both) == [("encoders.T.model", "/models/tiny-bert/"), ("precision", "bfloat16"),
                                          ("train.epochs", 3)]
    assert config_lib.run_label(both).endswith(
        " encoders.T.model=tiny-bert precision=bfloat16 train.epochs=3 seed=0")


def test_label_names_no_field_twice_and_unhashed_fields_never():
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.encoders.T.pooling, cfg.encoders.T.max_length = "cls", 128  # shown in T[...]
    cfg.seed, cfg.dataset.path, cfg.train.devices, cfg.report_to = 7, "/data", 2, "none"  # not hashed
    assert config_lib.overrides(cfg) == []
    assert config_lib.run_label(cfg) == "MELD--E T vallina ce 1xE frozen T[pool=cls,ctx=0,len=128] seed=7"
    # A config built without compose (no record of its parts' config): the label without overrides.
    plain = compose("dataset=MELD--E,encoders=T,loss=ce")
    plain.train.epochs = 3
    del plain["composed"]
    assert config_lib.overrides(plain) == [] and "train.epochs" not in config_lib.run_label(plain)
    assert config_lib.config_hash(plain) == config_lib.config_hash(_epochs(3))  # the record is not hashed


def _epochs(n):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.train.epochs = n
    return cfg


def test_report_to_is_checked_and_changes_no_hash(monkeypatch):
    cfg = compose("dataset=MELD--E,encoders=T")
    digest = config_lib.config_hash(cfg)
    for value in ("wandb", "none", "tensorboard"):
        cfg.report_to = value
        config_lib.validate(cfg)
        assert config_lib.config_hash(cfg) == digest
    cfg.report_to = "mlflow"
    with pytest.raises(config_lib.ConfigError, match=r"^report_to: must be one of tensorboard, wandb, none, got "
                                                     r"'mlflow'$"):
        config_lib.validate(cfg)
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    cfg.report_to = "wandb"
    with pytest.raises(config_lib.ConfigError, match=r"^report_to: wandb is not installed; pip install wandb"):
        config_lib.validate(cfg)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(config_lib.ConfigError, match="pip install wandb"):
        events_lib.open_trackers("wandb", "run")


# ---------------------------------------------------------------------------------------------
# history.png
# ---------------------------------------------------------------------------------------------
def _rows(n):
    return [{"epoch": e, "train_loss": 2.0 / e, "dev_loss": 1.5 / e,
             "dev": {"accuracy": 0.3 + 0.05 * e, "weighted_f1": 0.2 + 0.06 * e, "macro_f1": 0.1}}
            for e in range(1, n + 1)]


def test_history_figure_has_legend_whole_epochs_selection_and_title():
    fig = history_figure(_rows(7), "weighted_f1", label="MELD--E T seed=0", best_epoch=5)
    ax_loss, ax_dev = fig.axes
    legend = ax_dev.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "dev loss", "dev weighted_f1 (%)",
                                                         "selected: epoch 5"]
    ticks = [t for t in ax_loss.get_xticks() if ax_loss.get_xlim()[0] <= t <= ax_loss.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    selected = next(line for line in ax_dev.get_lines() if line.get_label() == "selected: epoch 5")
    assert list(selected.get_xdata()) == [5] and list(selected.get_ydata()) == pytest.approx([100 * (0.2 + 0.3)])
    dev = next(line for line in ax_dev.get_lines() if line.get_label().startswith("dev weighted_f1"))
    assert list(dev.get_ydata()) == pytest.approx([100 * (0.2 + 0.06 * e) for e in range(1, 8)])
    assert ax_loss.get_title() == "MELD--E T seed=0"


def test_history_figure_of_one_epoch_shows_the_loss_as_a_marker():
    fig = history_figure(_rows(1)[:1], "accuracy", best_epoch=1)
    train = next(line for line in fig.axes[0].get_lines() if line.get_label() == "train loss")
    assert list(train.get_xdata()) == [1] and train.get_marker() not in (None, "", "None")
    low, high = fig.axes[0].get_xlim()
    assert low < 1 < high
    # Rows of an earlier run without a dev loss: no dev loss curve, the rest as before.
    old = [{k: v for k, v in row.items() if k != "dev_loss"} for row in _rows(3)]
    assert "dev loss" not in [line.get_label() for line in history_figure(old).axes[0].get_lines()]


# ---------------------------------------------------------------------------------------------
# Trackers: the adapter against a recorded-call stand-in of the wandb module
# ---------------------------------------------------------------------------------------------
class FakeWandb:
    """Records the calls emojax makes on the wandb module and its run."""

    def __init__(self):
        self.calls = []
        outer = self

        class Run:
            summary = {}

            class config:  # noqa: N801 - wandb's attribute name
                @staticmethod
                def update(values, allow_val_change=False):
                    outer.calls.append(("config.update", dict(values)))

            def log(self, values, step):
                outer.calls.append(("log", dict(values), step))

            def finish(self):
                outer.calls.append(("finish",))

        self.run = Run()

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self.run


def test_wandb_adapter_gets_the_label_config_and_the_same_points(tmp_path):
    fake = FakeWandb()
    tracker = WandbRun(tmp_path / "run", module=fake)
    with RunEvents(tmp_path / "run", first_step=1) as events:
        events.trackers = [tracker]
        events.describe("MELD--E T seed=0", {"train": {"epochs": 2}, "seed": 0})
        events.scalars(1, {"train/loss": 2.5})
        events.dev(3, {"accuracy": 0.5, "weighted_f1": 0.25}, loss=1.25)
        events.test(3, {"accuracy": 0.75})
        assert fake.calls[-1] != ("finish",)
    (name, init), *rest = fake.calls
    assert name == "init" and init["name"] == "MELD--E T seed=0" and init["config"] == {"train": {"epochs": 2},
                                                                                         "seed": 0}
    assert init["dir"] == str(tmp_path / "run") and init["resume"] == "allow" and init["id"] == tracker.run_id
    assert rest == [("log", {"train/loss": 2.5}, 1),
                    ("log", {"dev/accuracy": 50.0, "dev/weighted_f1": 25.0, "dev/loss": 1.25}, 3),
                    ("log", {"test/accuracy": 75.0}, 3), ("finish",)]
    assert fake.run.summary == {"test/accuracy": 75.0}
    # The same run directory continues the same wandb run; another gets another.
    assert WandbRun(tmp_path / "run").run_id == tracker.run_id != WandbRun(tmp_path / "other").run_id
    # Nothing written: no wandb run opened (a finished run started again).
    idle = FakeWandb()
    WandbRun(tmp_path, module=idle).finish()
    assert idle.calls == []


# ---------------------------------------------------------------------------------------------
# A whole run: TensorBoard, provenance, test scores once
# ---------------------------------------------------------------------------------------------
def _summaries(folder):
    """Every summary value of the run's event files, decoded with tensorboardX's own protos:
    [(step, tag, Summary.Value)]."""
    found = []
    for path in event_files(folder):
        for record in events_lib._records(path):
            event = Event.FromString(record)
            for value in event.summary.value:
                found.append((event.step, value.tag, value))
    return found


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, text_meld, tiny_bert):
    """A run stopped after its first epoch and resumed: ``(cfg, workdir, run_dir)``."""
    workdir = tmp_path_factory.mktemp("reporting")
    cfg = tiny_config(text_meld, tiny_bert)
    run_dir = fit(cfg, workdir, max_epochs=1)
    assert fit(cfg, workdir) == run_dir
    return cfg, workdir, run_dir


@pytest.mark.slow
def test_tensorboard_run_is_named_and_scores_are_in_percent(reported_run):
    cfg, _, run_dir = reported_run
    history = json.loads((run_dir / "history.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    label = config_lib.run_label(cfg)
    assert results["label"] == label and " train.epochs=2 " in label and " train.lr=0.01 " in label
    summaries = _summaries(run_dir / EVENTS_DIR)
    texts = {tag.removesuffix("/text_summary"): (step, value.tensor.string_val[0].decode())
             for step, tag, value in summaries if value.metadata.plugin_data.plugin_name == "text"}
    assert texts[events_lib.LABEL_TAG] == (1, label)
    step, config_text = texts[events_lib.CONFIG_TAG]
    assert step == 1 and json.loads("\n".join(line[4:] for line in config_text.splitlines())) == {
        k: v for k, v in json.loads((run_dir / "config.json").read_text()).items() if k != "composed"}
    hparams = [(step, tag, HParamsPluginData.FromString(value.metadata.plugin_data.content))
               for step, tag, value in summaries if value.metadata.plugin_data.plugin_name == "hparams"]
    assert [tag for _, tag, _ in hparams] == ["_hparams_/session_start_info", "_hparams_/session_end_info"]
    start = hparams[0][2].session_start_info.hparams
    assert start["label"].string_value == label and start["train.epochs"].number_value == 2
    assert start["train.lr"].number_value == pytest.approx(1e-2) and start["encoders.T.pooling"].string_value == "mean"
    assert hparams[1][0] == history[-1]["steps"]
    assert [p.name for p in (run_dir / EVENTS_DIR).iterdir() if p.is_dir()] == []  # no hparams subfolder

    scalars = {tag: dict(points) for tag, points in read_scalars(run_dir / EVENTS_DIR).items()}
    for row in history:
        for name in ("accuracy", "weighted_f1", "macro_f1"):
            assert scalars[f"dev/{name}"][row["steps"]] == pytest.approx(100 * row["dev"][name], rel=1e-6)
        assert scalars["dev/loss"][row["steps"]] == pytest.approx(row["dev_loss"], rel=1e-6)
    last = history[-1]["steps"]
    for name in ("accuracy", "weighted_f1", "macro_f1"):  # once, at the last step
        assert scalars[f"test/{name}"] == {last: pytest.approx(100 * results["test"][name], rel=1e-6)}


@pytest.mark.slow
def test_dev_loss_is_the_cross_entropy_of_the_selected_epoch(reported_run):
    _, workdir, run_dir = reported_run
    prep, eval_step, params, progress = load_run(run_dir, workdir)
    dev = prep.features["dev"]
    probs = predict_proba(eval_step, params, dev, 64)
    probs = probs.astype(np.float64) / probs.astype(np.float64).sum(axis=1, keepdims=True)  # float32 rounding
    reference = log_loss(dev.labels, probs, labels=list(range(len(prep.class_names))))
    row = next(r for r in progress["history"] if r["epoch"] == progress["best_epoch"])
    assert row["dev_loss"] == pytest.approx(reference, rel=1e-4) and math.isfinite(row["dev_loss"])


@pytest.mark.slow
def test_provenance_keeps_each_start_and_a_finished_run_writes_nothing_more(reported_run):
    cfg, workdir, run_dir = reported_run
    record = provenance.read_provenance(run_dir)
    first, second = record["starts"]
    assert first["finished"] is False and second["finished"] is True
    assert first["started"] <= first["ended"] <= second["started"] <= second["ended"]
    assert second["command"] == sys.argv and second["git"] == provenance.git_state()
    assert second["emojax"] == provenance.package_version("emojax") and second["devices"]
    before = {p: p.read_bytes() for p in [*event_files(run_dir / EVENTS_DIR), run_dir / provenance.PROVENANCE,
                                          run_dir / "meta.json", run_dir / "results.json"]}
    assert fit(cfg, workdir) == run_dir  # finished: rescored, nothing new recorded
    after = {p: p.read_bytes() for p in [*event_files(run_dir / EVENTS_DIR), run_dir / provenance.PROVENANCE,
                                         run_dir / "meta.json", run_dir / "results.json"]}
    assert after == before


@pytest.mark.slow
def test_tool_info_rows_of_two_runs_differing_in_epochs_are_told_apart(reported_run, text_meld, tiny_bert):
    _, workdir, run_dir = reported_run
    other = tiny_config(text_meld, tiny_bert, epochs=3)
    other_dir = config_lib.run_dir(other, workdir)
    other_dir.mkdir(parents=True)
    config_lib.save_config(other, other_dir / "config.json")
    rows = {pathlib.Path(r["path"]).name: r["label"] for r in TOOL.run_rows(workdir)}
    assert rows[run_dir.name] != rows[other_dir.name]
    assert " train.epochs=2 " in rows[run_dir.name] and " train.epochs=3 " in rows[other_dir.name]
    # A run written before configs recorded their parts' config: its overrides against today's parts.
    raw = json.loads((other_dir / "config.json").read_text())
    del raw["composed"]
    (other_dir / "config.json").write_text(json.dumps(raw))
    rows = {pathlib.Path(r["path"]).name: r["label"] for r in TOOL.run_rows(workdir)}
    assert " train.epochs=3 " in rows[other_dir.name]


def _wandb_records(path):
    """The records of a wandb offline run file (LevelDB's log format: 32 KiB blocks of chunks with
    a 7-byte header; after wandb's own 7-byte header), decoded with wandb's protos."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, position, pending, block = path.read_bytes(), 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header: padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_gets_the_runs_scalars_and_config(tmp_path, text_meld, tiny_bert, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(text_meld, tiny_bert, epochs=1)
    cfg.report_to = "wandb"
    run_dir = fit(cfg, tmp_path)
    assert not (run_dir / EVENTS_DIR).exists()  # TensorBoard files only with report_to=tensorboard
    results = json.loads((run_dir / "results.json").read_text())
    (row,) = json.loads((run_dir / "history.json").read_text())
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    points, runs = {}, []
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs.append(record.run)
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for tag, value in items.items():
                points.setdefault(tag, {})[items["_step"]] = value
    assert runs[0].display_name == config_lib.run_label(cfg)
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["train"]["epochs"] == 1 and config["dataset"]["name"] == "MELD--E" and "composed" not in config
    assert sorted(points["train/loss"]) == list(range(1, row["steps"] + 1))
    assert np.mean(list(points["train/loss"].values())) == pytest.approx(row["train_loss"], rel=1e-5)
    step = row["steps"]
    assert points["dev/weighted_f1"] == {step: pytest.approx(100 * row["dev"]["weighted_f1"], rel=1e-6)}
    assert points["dev/loss"] == {step: pytest.approx(row["dev_loss"], rel=1e-6)}
    assert points["test/accuracy"] == {step: pytest.approx(100 * results["test"]["accuracy"], rel=1e-6)}
