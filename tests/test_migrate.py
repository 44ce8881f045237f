"""Run formats: a run of format 1 (written before runs recorded their format) is refused in one line
by everything that reads runs, and ``launch.tool migrate`` brings it to format 3, where it scores
exactly as it did.

A format-1 run is made the way earlier versions wrote it, from a run trained today: its config
with the fine-tuning settings under ``encoder`` (and without ``finetune.tune_layers``, as before that
key existed), in the directory of the hash earlier versions computed (:func:`format_1_hash`, a
transcription of their ``config_hash``), with that hash in ``meta.json`` and ``results.json`` and
no format record. Encoders whose layer keys were renamed are stored and checkpointed under the
earlier names as well (:func:`to_format_1` with ``layer_keys``: ``tests/test_finetune_media.py``).
"""
import copy
import hashlib
import io
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from emojax import config as config_lib
from emojax.training.evaluation import load_run, score
from emojax.runs import format as format_lib
from emojax.runs import store
from emojax.runs.checkpoint import RunLock
from emojax.training.loop import fit
import launch.tool as tool  # the module (launch also has a function of that name, its command)
from test_faults import one_error_line, text_config

# The fields format 3 added, at the values every earlier run trained with: runs of format 1 lack them.
FORMAT_3_DEFAULTS = {"train": {"schedule": "linear", "grad_accum_steps": 1, "min_delta": 0.0},
                     "loss": {"label_smoothing": 0.0, "class_weights": []}}
# What format 1 left out of the hash: where and how often, not what is trained.
UNHASHED_1 = ("seed", "dataset.path", "dataset.allow_outside_paths", "cache", "progress", "workdir", "train.devices",
              "encoder.remat")


def format_1_hash(tree: dict) -> str:
    """The run hash as emojax computed it before run formats: the fine-tuning settings hashed under
    their earlier name ``encoder``, ``tune_layers`` 0 and ``dataset.max_seconds`` 60 left out."""
    tree = copy.deepcopy(tree)
    for section, fields in FORMAT_3_DEFAULTS.items():
        for key, value in fields.items():
            if tree.get(section, {}).get(key, value) == value:
                tree.get(section, {}).pop(key, None)
    if "finetune" in tree:
        tree["encoder"] = tree.pop("finetune")
    if tree.get("encoder", {}).get("tune_layers") == 0:
        tree["encoder"].pop("tune_layers")
    for dotted in UNHASHED_1 + config_lib._UNHASHED:  # and the unhashed fields added since: never hashed
        *path, last = dotted.split(".")
        node = tree
        for key in path:
            node = node.get(key, {})
        node.pop(last, None)
    if tree.get("dataset", {}).get("max_seconds") == 60.0:
        tree["dataset"].pop("max_seconds")
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _rewrite_json(path: pathlib.Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def to_format_1(run_dir: pathlib.Path, workdir: pathlib.Path, *, layer_keys=None) -> pathlib.Path:
    """Turn the run in ``run_dir`` (trained today) into the run an earlier emojax wrote; returns its
    directory. ``layer_keys``: ``{modality: {today's layer key: earlier}}`` of encoders stored and
    recorded under earlier layer names (their store entry named by the weights hash taken on those
    names; their checkpoints are the caller's)."""
    raw = json.loads((run_dir / "config.json").read_text())
    for section, fields in FORMAT_3_DEFAULTS.items():
        for key in fields:
            del raw[section][key]
    raw["encoder"] = raw.pop("finetune")
    if raw["encoder"].get("tune_layers") == 0:
        del raw["encoder"]["tune_layers"]  # a run from before the key existed
    digest = format_1_hash(raw)
    earlier = run_dir.parent / f"{digest}--{raw['seed']}"
    os.rename(run_dir, earlier)
    (earlier / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    for name in ("meta.json", "results.json"):
        if (earlier / name).exists():
            _rewrite_json(earlier / name, lambda p: (p.update(hash=digest), p.pop("format", None)))
    for modality, names in (layer_keys or {}).items():
        _store_under_earlier_hash(earlier, workdir, modality, names)
    return earlier


def _store_under_earlier_hash(run_dir: pathlib.Path, workdir: pathlib.Path, modality: str, names: dict) -> None:
    """The run's ``modality`` encoder stored and recorded under the weights hash earlier versions
    took: on the parameters with their layer keys named ``names``."""
    from emojax.encoders.bert import params_hash
    from emojax.encoders.media_encoders import media_encoder

    record = json.loads((run_dir / store.RUN_RECORD).read_text())
    entry = store.store_root(workdir) / record[modality]["hash"]
    cfg = json.loads((run_dir / "config.json").read_text())
    encoder = media_encoder(modality, {**cfg["encoders"][modality], "model": str(entry)})
    view = {**encoder.params, "layers": [{names.get(k, k): v for k, v in layer.items()}
                                         for layer in encoder.params["layers"]]}
    digest = params_hash(view, repr(encoder.config))
    os.rename(entry, entry.with_name(digest))
    _rewrite_json(entry.with_name(digest) / store.MANIFEST, lambda p: p.update(hash=digest))
    record[modality]["hash"] = digest
    (run_dir / store.RUN_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    store.link_entry(run_dir, modality, entry.with_name(digest))


def snapshot(folder: pathlib.Path) -> dict:
    """Every file's bytes and every link's target under ``folder``."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def run_migrate(workdir, apply=False) -> list[str]:
    out = io.StringIO()
    tool.cmd_migrate(workdir, apply=apply, out=out)
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_meld, tiny_bert):
    """A finished text run trained today: ``(cfg, workdir, run_dir)`` (copied by each test)."""
    root = tmp_path_factory.mktemp("format-2")
    cfg = text_config(text_meld, tiny_bert, root / "cache", epochs=2)
    return cfg, root / "work", fit(cfg, root / "work")


@pytest.fixture
def earlier(trained, tmp_path):
    """The trained run as an earlier emojax wrote it, in a copy of its workdir:
    ``(cfg, workdir, run of format 1, its directory in format 3, results.json before)``."""
    cfg, source, run_dir = trained
    workdir = tmp_path / "work"
    shutil.copytree(source, workdir, symlinks=True)
    today = workdir / run_dir.relative_to(source)
    results = json.loads((today / "results.json").read_text())
    return cfg, workdir, to_format_1(today, workdir), today, results


def test_format_1_hashes_are_those_earlier_runs_have(trained):
    """The migration finds runs where earlier versions put them: its hash of format 1 is the test's
    transcription of theirs, for today's config and for the config as format 1 wrote it."""
    cfg, _, run_dir = trained
    raw = json.loads((run_dir / "config.json").read_text())
    assert format_lib.format_1_hashes(cfg) == {format_1_hash(raw)}
    assert format_lib.format_1_hash(raw) == format_1_hash(raw)
    old = {k: v for k, v in raw.items() if k != "finetune"} | {"encoder": raw["finetune"]}
    assert format_lib.format_1_hash(old) == format_1_hash(raw)
    assert format_lib.config_of_format_2(old)[0] == raw
    assert config_lib.config_hash(cfg) == run_dir.name.split("--")[0] != format_1_hash(raw)


@pytest.mark.slow
def test_a_run_of_format_1_is_refused_in_one_line_naming_migrate(earlier, launcher):
    """evaluate, infer (the Estimator), load_run, tool info and fit each stop at a run of format 1
    with one line that names the migration; nothing of the run changes."""
    from emojax.inference import Estimator

    cfg, workdir, old, _, _ = earlier
    before = snapshot(workdir)
    expected = (f"{old}: written by an earlier emojax (run format 1); run python -m launch.tool migrate "
                f"--workdir={workdir} --apply")
    for load in (lambda: load_run(old, workdir), lambda: Estimator(old)):
        with pytest.raises(format_lib.RunFormatError) as err:
            load()
        assert str(err.value) == expected
    assert one_error_line(launcher.run("evaluate", f"--run_dir={old}")) == f"error: {expected}"
    assert one_error_line(launcher.run("infer", f"--run_dir={old}", "--text=so happy")) == f"error: {expected}"
    (row,) = tool.run_rows(workdir)
    assert row["status"] == "run format 1: run launch.tool migrate" and row["label"] == "?"
    with pytest.raises(format_lib.RunFormatError) as err:
        fit(cfg, workdir)
    assert str(err.value) == (f"{old}: this config's run, written by an earlier emojax (run format 1); run python -m "
                              f"launch.tool migrate --workdir={workdir} --apply, then start the command again")
    assert snapshot(workdir) == before


def test_migrate_dry_run_lists_the_run_and_changes_nothing(earlier):
    _, workdir, old, today, _ = earlier
    before = snapshot(workdir)
    lines = run_migrate(workdir)
    assert lines == [
        f"to migrate  {old.relative_to(workdir)} -> {today.relative_to(workdir)}  (config.json: encoder -> finetune, "
        f"finetune.tune_layers=0 written, train.schedule=linear written, train.grad_accum_steps=1 written, "
        f"train.min_delta=0.0 written, loss.label_smoothing=0.0 written, loss.class_weights=[] written; "
        f"hash {old.name.split('--')[0]} -> {today.name.split('--')[0]}; format 3)",
        "dry run: 1 run(s) to migrate to format 3, 0 refused; pass --apply to migrate them"]
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_migrate_apply_moves_the_run_which_scores_as_before(earlier):
    """The migrated run is where today's fit puts it, reads as format 3, scores exactly the numbers
    of its results.json, links the same store entry, and a second migration does nothing."""
    from emojax.inference import Estimator

    cfg, workdir, old, today, results = earlier
    lines = run_migrate(workdir, apply=True)
    assert lines[0].startswith(f"migrated  {old.relative_to(workdir)} -> {today.relative_to(workdir)}  (config.json: ")
    assert lines[1] == "migrated 1 run(s) to format 3, 0 refused"
    assert not old.exists() and today == config_lib.run_dir(cfg, workdir)
    assert format_lib.run_format(today) == 3
    digest = config_lib.config_hash(cfg)
    assert json.loads((today / "meta.json").read_text())["hash"] == digest
    migrated = json.loads((today / "results.json").read_text())
    assert migrated == {**results, "hash": digest}
    # (as JSON holds it: loss.class_weights, a tuple, reads back as a list)
    assert config_lib.load_config(today / "config.json").to_dict() == json.loads(json.dumps(cfg.to_dict()))
    prep, eval_step, params, _ = load_run(today, workdir)
    for split in ("dev", "test"):
        scores = score(eval_step, params, prep.features[split], len(prep.class_names), 64)
        for metric in ("accuracy", "weighted_f1", "macro_f1"):
            assert scores[metric] == results[split][metric], (split, metric)
    entry = store.resolve_run_encoder(today, "T")
    assert entry.parent == store.store_root(workdir).resolve()
    assert not os.path.isabs(os.readlink(today / "encoders" / "T"))
    assert Estimator(today).class_names == tuple(results["class_names"])
    (row,) = tool.run_rows(workdir)
    assert row["status"] == "finished" and row["dev_acc"] == results["dev"]["accuracy"]
    after = snapshot(workdir)
    assert run_migrate(workdir, apply=True) == [
        f"no runs of an earlier format under {workdir / 'checkpoints'}: every run is of format 3"]
    assert snapshot(workdir) == after


def test_migrate_refuses_a_held_run_an_edited_config_and_a_taken_directory(earlier):
    _, workdir, old, today, _ = earlier
    rel = old.relative_to(workdir)
    with RunLock(old):
        before = snapshot(workdir)
        lines = run_migrate(workdir, apply=True)
        assert lines[0].startswith(f"refused  {rel}: a process holds the run (pid {os.getpid()} on ")
        assert lines[0].endswith("); migrate again once it has finished")
        assert lines[1].startswith("migrated 0 run(s) to format 3, 1 refused")
        assert snapshot(workdir) == before
    today.mkdir()
    assert run_migrate(workdir)[0] == (f"refused  {rel}: its directory in format 3, {today}, exists; move one of "
                                       "the two aside")
    today.rmdir()
    made = old.name.split("--")[0]
    _rewrite_json(old / "config.json", lambda c: c["encoders"]["T"].update(pooling="cls"))
    edited = format_1_hash(json.loads((old / "config.json").read_text()))
    before = snapshot(workdir)
    assert run_migrate(workdir, apply=True)[0] == (
        f"refused  {rel}: config.json was edited since the run was made as {made} (its format-1 hash is now "
        f"{edited}); undo the edit and migrate again")
    assert snapshot(workdir) == before


def test_checkpoint_layer_keys_of_format_1_are_renamed(tmp_path):
    """A checkpoint holding a fine-tuned VideoMAE's layer arrays (and their optimizer moments and
    LoRA adapters) under format 1's names is rewritten under today's; the text encoder's keys of the
    same spelling, and keys outside a layer, stay; a second pass changes nothing."""
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.normal(size=shape).astype(np.float32)

    layer = {"norm_before": {"scale": w(4)}, "intermediate": {"w": w(4, 8)}, "output": {"w": w(8, 4)},
             "query": {"w": w(4, 4)}}
    earlier = {
        "params": {"head": {"w": w(4, 2)}},
        "encoder": {"V": {"layers": [layer, copy.deepcopy(layer)], "final_norm": {"scale": w(4)},
                          "layers.0.intermediate": {"a": w(4, 2)}},
                    "T": {"layers": [{"intermediate": {"w": w(4, 8)}}], "layers.0.output": {"a": w(4, 2)}}},
        "opt_state": [{"mu": {"encoder": {"V": {"layers": [{"norm_after": {"scale": w(4)}}]}}}}],
        "step": np.asarray(3, np.int32),
    }
    today = copy.deepcopy(earlier)
    for layer in today["encoder"]["V"]["layers"]:
        layer["attn_norm"], layer["fc1"], layer["fc2"] = layer.pop("norm_before"), layer.pop("intermediate"), \
            layer.pop("output")
    today["encoder"]["V"]["layers.0.fc1"] = today["encoder"]["V"].pop("layers.0.intermediate")
    today["opt_state"][0]["mu"]["encoder"]["V"]["layers"][0]["mlp_norm"] = \
        today["opt_state"][0]["mu"]["encoder"]["V"]["layers"][0].pop("norm_after")
    item = tmp_path / "state" / "3" / "default"
    item.parent.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(item, earlier)
    checkpointer.wait_until_finished()
    families = {"V": "videomae", "T": "bert"}
    assert format_lib.migrate_checkpoint(item, families) == 8
    restored = checkpointer.restore(item)
    checkpointer.close()
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(today)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree_util.tree_leaves(today)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    assert sorted(p.name for p in item.parent.iterdir()) == ["default"]
    files = snapshot(tmp_path)
    assert format_lib.migrate_checkpoint(item, families) == 0
    assert snapshot(tmp_path) == files
