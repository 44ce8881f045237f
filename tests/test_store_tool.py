"""The encoder store (content-addressed, linked from runs) and launch.tool: info, cache, gc,
create-standalone, extract-encoders. Two tiny text runs are trained once for the module."""
import json
import os
import pathlib
import re
import shutil
import types

import numpy as np
import pytest

from configs.compose import compose
from emojax import config as config_lib
from emojax.runs import store
from emojax.training.loop import fit
from emojax.training.preparation import prepare
from emojax.runs.checkpoint import CheckpointError

TEXTS = ["i am so happy wonderful", "sad lonely cry", "gross nasty ew"]


def _tool(launcher, *args):
    """``python -m launch.tool ARGS``, forked from the launcher server (``launchers.py``)."""
    return launcher.run("tool", *args, timeout=300)


def _config(data, bert, seed):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.encoders.T.context_turns = 2  # speaker tokens added to the tokenizer and embeddings
    cfg.train.epochs = 2
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.seed = seed
    cfg.progress = False
    return cfg


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, text_meld, tiny_bert):
    """Two finished runs (seeds 0 and 1) of one config in one workdir; fit linked their encoders."""
    workdir = tmp_path_factory.mktemp("store") / "runs"
    runs = [fit(_config(text_meld, tiny_bert, seed), workdir) for seed in (0, 1)]
    records = [store.run_encoders(run) for run in runs]
    featurizer = prepare(_config(text_meld, tiny_bert, 0), workdir).featurizer
    return types.SimpleNamespace(workdir=workdir, runs=runs, records=records, featurizer=featurizer,
                                 cfg=_config(text_meld, tiny_bert, 0))


def _copy(workspace, target):
    shutil.copytree(workspace.workdir, target, symlinks=True)
    return target, [target / run.relative_to(workspace.workdir) for run in workspace.runs]


def _entries(workdir):
    root = store.store_root(workdir)
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_checkpoint_store_written_once_shared_by_two_runs(workspace, tmp_path, monkeypatch):
    digest = workspace.records[0]["T"]["hash"]
    assert workspace.records[1]["T"]["hash"] == digest
    assert digest == workspace.featurizer.encoders["T"].encoder.weights_hash
    assert _entries(workspace.workdir) == [digest]
    for run, record in zip(workspace.runs, workspace.records):
        link = run / "encoders" / "T"
        assert os.readlink(link) == f"../../../../../../encoders/{digest}"
        assert store.resolve_run_encoder(run, "T") == store.store_root(workspace.workdir).resolve() / digest
        assert json.loads((run / "encoders.json").read_text()) == record
        assert record["T"]["model"] == str(workspace.cfg.encoders.T.model)
    copies = [os.path.join(d, f) for d, _, files in os.walk(workspace.workdir) for f in files
              if f == "model.safetensors"]
    assert len(copies) == 1
    entry = store.store_root(workspace.workdir) / digest
    manifest = json.loads((entry / "store.json").read_text())
    assert manifest["hash"] == digest and manifest["added_tokens"] == ["<s0>", "<s1>"]
    # Relinking (a resumed run) rewrites nothing: same inodes, same modification times.
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [entry, *entry.iterdir()]}
    link_before = os.lstat(workspace.runs[0] / "encoders" / "T").st_ino
    store.link_run_encoders(workspace.runs[0], workspace.featurizer, workspace.workdir)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [entry, *entry.iterdir()]} == before
    assert os.lstat(workspace.runs[0] / "encoders" / "T").st_ino == link_before

    # A writer that loses the race to another one uses the winner's entry and leaves no temp folder.
    other = tmp_path / "other"
    original = store.export_encoder

    def racing(encoder, folder, **kwargs):
        original(encoder, folder, **kwargs)
        winner = store.store_root(other) / encoder.weights_hash
        shutil.copytree(entry, winner)
        (winner / "winner").write_text("1")

    monkeypatch.setattr(store, "export_encoder", racing)
    got = store.store_encoder(workspace.featurizer.encoders["T"].encoder, other)
    assert (got / "winner").exists()
    assert os.listdir(store.store_root(other)) == [digest]


def test_checkpoint_links_survive_moving_the_workdir(workspace, tmp_path):
    first, _ = _copy(workspace, tmp_path / "a")
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    os.rename(first, moved)
    digest = workspace.records[0]["T"]["hash"]
    for run in workspace.runs:
        run = moved / run.relative_to(workspace.workdir)
        assert not os.path.isabs(os.readlink(run / "encoders" / "T"))
        assert store.resolve_run_encoder(run, "T") == (store.store_root(moved) / digest).resolve()


def test_checkpoint_dangling_link_is_an_error_naming_the_path(workspace, tmp_path):
    workdir, runs = _copy(workspace, tmp_path / "w")
    digest = workspace.records[0]["T"]["hash"]
    link = runs[0] / "encoders" / "T"
    with pytest.raises(CheckpointError, match=r"encoders/A: no A encoder linked"):
        store.resolve_run_encoder(runs[0], "A")
    shutil.rmtree(store.store_root(workdir) / digest)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(link))}: dangling link .*{digest}"):
        store.resolve_run_encoder(runs[0], "T")
    from emojax.inference.standalone import create_standalone

    with pytest.raises(CheckpointError, match=re.escape(str(link))):
        create_standalone(runs[0], tmp_path / "alone")
    (store.store_root(workdir) / digest).mkdir()
    with pytest.raises(CheckpointError, match=rf"{digest}: incomplete encoder folder"):
        store.resolve_run_encoder(runs[1], "T")


def test_checkpoint_gc_dry_run_then_apply(workspace, tmp_path, tiny_bert, capsys):
    from emojax.encoders.text import TextEncoder
    from launch import tool

    workdir, runs = _copy(workspace, tmp_path / "w")
    used = workspace.records[0]["T"]["hash"]
    spare = TextEncoder.from_pretrained(str(tiny_bert))
    spare.add_special_tokens(["<x>"])
    extra = store.store_encoder(spare, workdir, model=str(tiny_bert))
    assert _entries(workdir) == sorted([used, extra.name])
    assert tool.cmd_gc(workdir) == []  # younger than the grace period: spared
    listed = tool.cmd_gc(workdir, grace_s=0)
    out = capsys.readouterr().out
    assert [e["hash"] for e in listed] == [extra.name]
    assert f"unreferenced  {extra.name}" in out and "dry run: 1 unreferenced entry" in out and "--apply" in out
    assert extra.exists()
    tool.cmd_gc(workdir, apply=True, grace_s=0)
    assert "removed 1 entry" in capsys.readouterr().out
    assert _entries(workdir) == [used]
    assert store.resolve_run_encoder(runs[0], "T").name == used
    # An entry stays while any run links it; it is garbage once none does.
    shutil.rmtree(runs[0])
    assert tool.cmd_gc(workdir, grace_s=0) == []
    shutil.rmtree(runs[1])
    assert [e["hash"] for e in tool.cmd_gc(workdir, apply=True, grace_s=0)] == [used]
    assert _entries(workdir) == []


def test_checkpoint_info_table_contents_and_sorting(workspace, launcher, tmp_path):
    from launch import tool

    workdir, runs = _copy(workspace, tmp_path / "w")
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    # An unfinished run: one epoch of two done.
    cfg = workspace.cfg.copy_and_resolve_references()
    cfg.seed = 7
    unfinished = config_lib.run_dir(cfg, workdir)
    unfinished.mkdir(parents=True)
    config_lib.save_config(cfg, unfinished / "config.json")
    (unfinished / "progress.json").write_text(json.dumps({
        "epoch": 1, "best_epoch": 1, "finished": False, "bad_epochs": 0, "best_score": 0.5,
        "history": [{"epoch": 1, "dev": {"accuracy": 0.99, "weighted_f1": 0.99, "macro_f1": 0.9}}]}))

    rows = tool.run_rows(workdir, sort="dev_wf1")
    assert [r["status"] for r in rows] == ["finished", "finished", "unfinished (epoch 1/2)"]
    by_dev = sorted(range(2), key=lambda i: -results[i]["dev"]["weighted_f1"])
    assert [r["path"] for r in rows[:2]] == [str(runs[i].relative_to(workdir)) for i in by_dev]
    for row in rows[:2]:
        i = [str(r.relative_to(workdir)) for r in runs].index(row["path"])
        assert row["label"] == config_lib.run_label(config_lib.load_config(runs[i] / "config.json"))
        assert row["best_epoch"] == results[i]["best_epoch"]
        assert row["test_acc"] == pytest.approx(results[i]["test"]["accuracy"])
        assert row["dev_wf1"] == pytest.approx(results[i]["dev"]["weighted_f1"])
    by_test = sorted(range(2), key=lambda i: (-results[i]["test"]["accuracy"], str(runs[i])))
    assert [r["path"] for r in tool.run_rows(workdir, sort="test_acc")[:2]] == \
        [str(runs[i].relative_to(workdir)) for i in by_test]
    assert [r["label"] for r in tool.run_rows(workdir, contains="SEED=1")] == [rows[[
        r["path"] for r in rows].index(str(runs[1].relative_to(workdir)))]["label"]]

    shown = _tool(launcher, "info", f"--workdir={workdir}", "--sort=test_acc")
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["label", "status", "best"]
    first = runs[by_test[0]]
    assert lines[2].endswith(str(first.relative_to(workdir)))
    r = results[by_test[0]]
    for value in (r["dev"]["accuracy"], r["dev"]["weighted_f1"], r["test"]["accuracy"], r["test"]["weighted_f1"]):
        assert f"{100 * value:.2f}" in lines[2]
    assert "unfinished (epoch 1/2)" in lines[4] and "seed=7" in lines[4]
    assert lines[-1] == "3 run(s), 2 finished, 1 unfinished"
    bad = _tool(launcher, "info", f"--workdir={tmp_path / 'nowhere'}")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == \
        f"error: --workdir: {tmp_path / 'nowhere'} is not a folder"


def test_cache_show_and_clear_through_the_tool(workspace, launcher, tmp_path):
    cache_dir = tmp_path / "features"
    shutil.copytree(workspace.workdir / "cache" / "features", cache_dir)
    namespace = workspace.featurizer.encoders["T"].namespace
    shown = _tool(launcher, "cache", f"--cache_dir={cache_dir}")
    assert shown.returncode == 0, shown.stderr[-2000:]
    row = next(line for line in shown.stdout.splitlines() if line.startswith(namespace))
    assert row.split()[1:3] == ["224", "32"]  # 140 + 42 + 42 texts, hidden size 32
    unknown = _tool(launcher, "cache", f"--cache_dir={cache_dir}", "--clear=zzz")
    assert unknown.returncode != 0 and "--clear: no namespace 'zzz'" in unknown.stderr
    cleared = _tool(launcher, "cache", f"--cache_dir={cache_dir}", f"--clear={namespace[:6]}")
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    assert "removed" in cleared.stdout and f"{cache_dir}: empty" in cleared.stdout
    assert not (cache_dir / namespace).exists()
    # Through the default path: WORKDIR/cache/features; --clear=all.
    workdir = tmp_path / "w"
    shutil.copytree(workspace.workdir / "cache", workdir / "cache")
    assert _tool(launcher, "cache", f"--workdir={workdir}", "--clear=all").returncode == 0
    assert [p.name for p in (workdir / "cache" / "features").iterdir()] == [".emojax-feature-cache"]  # marker kept
    missing = _tool(launcher, "cache", f"--cache_dir={tmp_path / 'nope'}")
    assert missing.returncode != 0 and str(tmp_path / "nope") in missing.stderr.strip().splitlines()[-1]


def test_checkpoint_create_standalone_predicts_like_the_run(workspace, launcher, tmp_path, capsys):
    from emojax.inference import Estimator
    from emojax.inference.standalone import load_standalone
    from launch import tool

    output = tmp_path / "alone"
    tool.cmd_create_standalone(workspace.runs[0], output)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(output)
    assert not [p for p in output.rglob("*") if p.is_symlink()]
    manifest = json.loads((output / "standalone.json").read_text())
    assert manifest["encoders"]["T"]["hash"] == workspace.records[0]["T"]["hash"]
    original = Estimator(workspace.runs[0])
    alone = Estimator(output)
    assert pathlib.Path(alone.featurizer.encoders["T"].encoder.name) == (output / "encoders" / "T").resolve()
    for text in TEXTS:
        np.testing.assert_allclose(list(alone.predict(text=text, context=[])["probabilities"].values()),
                                   list(original.predict(text=text, context=[])["probabilities"].values()), atol=1e-6)
    # Moved elsewhere, it loads through load_standalone (the encoder paths follow the folder).
    moved = tmp_path / "moved" / "alone"
    moved.parent.mkdir()
    os.rename(output, moved)
    again = load_standalone(moved)
    assert pathlib.Path(again.featurizer.encoders["T"].encoder.name) == (moved / "encoders" / "T").resolve()
    np.testing.assert_allclose(list(again.predict(text=TEXTS[0], context=[])["probabilities"].values()),
                               list(original.predict(text=TEXTS[0], context=[])["probabilities"].values()), atol=1e-6)
    with pytest.raises(FileExistsError, match=re.escape(str(moved))):
        tool.cmd_create_standalone(workspace.runs[0], moved)
    bad = _tool(launcher, "create-standalone", f"--run_dir={tmp_path / 'norun'}", f"--output={tmp_path / 'x'}")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'norun'}: no such run directory"
    assert not (tmp_path / "x").exists()


def test_checkpoint_extract_encoders_loads_back(workspace, launcher, tmp_path, capsys):
    from emojax.encoders.text import TextEncoder
    from launch import tool

    output = tmp_path / "enc"
    tool.cmd_extract_encoders(workspace.runs[1], output)
    assert capsys.readouterr().out.splitlines()[0] == f"encoders.T.model={(output / 'T').resolve()}"
    assert (output / "encoders.cfg").read_text() == f"encoders.T.model={(output / 'T').resolve()}\n"
    assert (output / "encoders.flags").read_text() == f"--config.encoders.T.model={(output / 'T').resolve()}\n"
    used = workspace.featurizer.encoders["T"].encoder
    back = TextEncoder.from_pretrained(str(output / "T"), pooling=used.pooling, max_length=used.max_length)
    assert back.tokenizer.get_vocab() == used.tokenizer.get_vocab()
    np.testing.assert_allclose(back.encode(TEXTS, progress=False), used.encode(TEXTS, progress=False), atol=1e-6)
    # A run trained before the store existed (no links): its encoder is rebuilt from config + meta.
    _, runs = _copy(workspace, tmp_path / "w")
    shutil.rmtree(runs[1] / "encoders")
    (runs[1] / "encoders.json").unlink()
    rebuilt = tool.cmd_extract_encoders(runs[1], tmp_path / "enc2")
    assert rebuilt["T"]["hash"] == workspace.records[1]["T"]["hash"]
    assert (tmp_path / "enc2" / "T" / "model.safetensors").read_bytes() == \
        (output / "T" / "model.safetensors").read_bytes()
    bad = _tool(launcher, "extract-encoders", f"--run_dir={runs[1]}")
    assert bad.returncode != 0 and "extract-encoders needs --output" in bad.stderr


class FakeMediaEncoder:
    """The interface of a neural media encoder (emojax.encoders.media_encoders): params, config,
    weights_hash, folder, spec; rebuilt from a spec naming a model folder."""

    family = "fake-audio"

    def __init__(self, spec, dtype=np.float32):
        from emojax.encoders import hub
        from emojax.encoders.bert import params_hash

        self.spec, self.model, self.dtype = spec, str(spec["model"]), dtype
        self.folder = hub.resolve_model(self.model)
        self.params = hub.load_state_dict(self.folder)
        self.config = json.loads((self.folder / "config.json").read_text())
        self.weights_hash = params_hash(self.params, repr(self.config))


def _fake_model(folder, seed):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "fake", "hidden_size": 4}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    rng = np.random.default_rng(seed)
    save_file({"encoder.w": rng.normal(size=(4, 4)).astype(np.float16), "encoder.b": np.zeros(4, np.float32)},
              str(folder / "model.safetensors"))
    return FakeMediaEncoder({"family": "fake-audio", "model": str(folder), "pooling": "default"})


def test_checkpoint_store_media_encoder_and_failures(tmp_path, caplog):
    workdir = tmp_path / "runs"
    audio = _fake_model(tmp_path / "audio", 0)
    classic = types.SimpleNamespace(dim=3, namespace="x")  # no weights: never stored
    featurizer = types.SimpleNamespace(encoders={"A": audio, "V": classic})
    run = tmp_path / "run"
    record = store.link_run_encoders(run, featurizer, workdir)
    assert record == {"A": {"hash": audio.weights_hash, "model": str(tmp_path / "audio"), "family": "fake-audio"}}
    entry = store.resolve_run_encoder(run, "A")
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                                        "store.json"]
    assert FakeMediaEncoder({"model": str(entry)}).weights_hash == audio.weights_hash
    # A source folder gone before it was stored: the run goes on without the link ...
    lost = _fake_model(tmp_path / "lost", 1)
    shutil.rmtree(tmp_path / "lost")
    featurizer.encoders["A"] = lost
    record = store.link_run_encoders(tmp_path / "run2", featurizer, workdir)
    assert "cannot write encoder" in record["A"]["error"] and "not stored" in caplog.text
    assert not (tmp_path / "run2" / "encoders" / "A").exists()
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "run2" / "encoders" / "A")) + ".*not stored"):
        store.resolve_run_encoder(tmp_path / "run2", "A")
    # ... or fails, when asked to be strict; no half-written entry is left behind.
    with pytest.raises(CheckpointError, match="cannot write encoder"):
        store.link_run_encoders(tmp_path / "run3", featurizer, workdir, strict=True)
    assert _entries(workdir) == [audio.weights_hash] and not [
        p for p in store.store_root(workdir).iterdir() if p.name.startswith(".")]
