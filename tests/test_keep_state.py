"""A finished run keeps only what it is used for: its training state (``state/``, what a run
resumes from, mostly optimizer moments) is dropped unless ``train.keep_state``; evaluation,
inference and a restart work as before; ``launch.tool gc`` drops the state older runs kept, and
``launch.tool info`` shows what each run holds on disk. Tiny text runs, trained once for the module."""
import importlib
import json
import pathlib
import shutil
import types

import jax
import numpy as np
import pytest

from configs.compose import compose
from emojax import config as config_lib
from emojax.runs import checkpoint as ckpt_lib
from emojax.sweep.planning import run_status
from emojax.training.evaluation import load_run
from emojax.training.loop import fit


def _config(data, bert, *, keep_state=False):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.epochs = 3
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.train.keep_state = keep_state
    cfg.progress = False
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_meld, tiny_bert):
    """The same run trained twice, in two workdirs: by default, and with train.keep_state=True."""
    root = tmp_path_factory.mktemp("keep-state")
    dropped = fit(_config(text_meld, tiny_bert), root / "dropped")
    kept = fit(_config(text_meld, tiny_bert, keep_state=True), root / "kept")
    return types.SimpleNamespace(root=root, dropped=dropped, kept=kept, data=text_meld, bert=tiny_bert)


def _steps(run_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "state").iterdir() if p.name.isdigit())


def _copy(run_dir: pathlib.Path, runs, target: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A copy of ``run_dir``'s workdir; returns the new workdir and run directory."""
    workdir = next(p for p in run_dir.parents if p.parent == runs.root)
    shutil.copytree(workdir, target, symlinks=True)
    return target, target / run_dir.relative_to(workdir)


def test_drop_resume_state_keeps_the_selected_parameters(tmp_path):
    """On a checkpoint written by RunCheckpoints: the state is removed (and counted), best/ and
    the records stay, progress.json says so, and a resume is refused with the reason."""
    import jax.numpy as jnp

    state, best = {"w": jnp.arange(12.0).reshape(4, 3), "m": jnp.ones((4, 3))}, {"w": jnp.full((4, 3), 2.0)}
    with ckpt_lib.RunCheckpoints(tmp_path) as checkpoints:
        checkpoints.save_epoch(1, state, {"epoch": 1, "finished": False, "best_epoch": 1}, best_params=best)
        checkpoints.save_epoch(2, state, {"epoch": 2, "finished": True, "best_epoch": 1}, save_state=False)
    (tmp_path / "config.json").write_text("{}")
    assert _steps(tmp_path) == [1]
    size = ckpt_lib.resume_state_bytes(tmp_path)
    assert size == ckpt_lib.folder_bytes(tmp_path / "state" / "1") > 0
    assert ckpt_lib.drop_resume_state(tmp_path) == size
    assert _steps(tmp_path) == [] and ckpt_lib.drop_resume_state(tmp_path) == 0
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress == {"epoch": 2, "finished": True, "best_epoch": 1, ckpt_lib.STATE_DROPPED: True}
    with ckpt_lib.RunCheckpoints(tmp_path) as checkpoints:
        np.testing.assert_array_equal(np.asarray(checkpoints.restore_best(best, 1)["w"]), np.full((4, 3), 2.0))
        (tmp_path / "progress.json").write_text(json.dumps({**progress, "finished": False}))
        with pytest.raises(ckpt_lib.CheckpointError, match="cannot train more epochs"):
            checkpoints.restore_latest(2, state)


@pytest.mark.slow
def test_keep_state_is_checked_and_changes_no_hash(runs):
    on, off = _config(runs.data, runs.bert, keep_state=True), _config(runs.data, runs.bert)
    assert config_lib.config_hash(on) == config_lib.config_hash(off)
    assert runs.kept.relative_to(runs.root / "kept") == runs.dropped.relative_to(runs.root / "dropped")
    plain = on.to_dict()
    plain["train"]["keep_state"] = "yes"
    with pytest.raises(config_lib.ConfigError, match=r"^train\.keep_state: must be True or False, got 'yes'"):
        config_lib.check_values(plain)


@pytest.mark.slow
def test_finished_run_drops_its_state_and_keeps_what_it_is_used_for(runs):
    progress = json.loads((runs.dropped / "progress.json").read_text())
    assert progress["finished"] and progress[ckpt_lib.STATE_DROPPED] is True
    assert _steps(runs.dropped) == [] and ckpt_lib.resume_state_bytes(runs.dropped) == 0
    assert (runs.dropped / "best" / str(progress["best_epoch"]) / "default").is_dir()
    # train.keep_state=True: the last keep_epochs states stay, and nothing is marked dropped
    kept = json.loads((runs.kept / "progress.json").read_text())
    assert _steps(runs.kept) == [2, 3] and ckpt_lib.STATE_DROPPED not in kept
    # Dropping the state changes nothing the run computed: the same scores and parameters.
    assert json.loads((runs.dropped / "results.json").read_text()) == \
        json.loads((runs.kept / "results.json").read_text())
    untimed = lambda history: [{k: v for k, v in row.items() if "seconds" not in k} for row in history]  # noqa: E731
    assert untimed(kept["history"]) == untimed(progress["history"])
    _, _, params_dropped, _ = load_run(runs.dropped, runs.root / "dropped")
    _, _, params_kept, _ = load_run(runs.kept, runs.root / "kept")
    for a, b in zip(jax.tree_util.tree_leaves(params_dropped), jax.tree_util.tree_leaves(params_kept)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Most of a finished run is its state: the run without it is smaller by that much.
    state = ckpt_lib.resume_state_bytes(runs.kept)
    assert state > 0
    assert ckpt_lib.folder_bytes(runs.kept) - ckpt_lib.folder_bytes(runs.dropped) == pytest.approx(state, rel=0.05)


@pytest.mark.slow
def test_restarted_finished_run_is_finished_and_cannot_train_further(runs, tmp_path):
    workdir, run_dir = _copy(runs.dropped, runs, tmp_path / "w")
    results = (run_dir / "results.json").read_text()
    assert run_status(run_dir) == "finished"  # a sweep skips it
    assert fit(_config(runs.data, runs.bert), workdir) == run_dir  # started again: scored, not trained
    assert (run_dir / "results.json").read_text() == results and _steps(run_dir) == []
    # Asked to train on (its progress no longer finished), it says why it cannot, in one line.
    progress = json.loads((run_dir / "progress.json").read_text())
    (run_dir / "progress.json").write_text(json.dumps({**progress, "finished": False}))
    with pytest.raises(ckpt_lib.CheckpointError) as err:
        fit(_config(runs.data, runs.bert), workdir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{run_dir}: the run finished and its training state was dropped")
    assert "--config.train.keep_state=True" in message


@pytest.mark.slow
def test_drop_refuses_an_unfinished_run(runs, tmp_path):
    _, run_dir = _copy(runs.kept, runs, tmp_path / "w")
    progress = json.loads((run_dir / "progress.json").read_text())
    (run_dir / "progress.json").write_text(json.dumps({**progress, "finished": False}))
    with pytest.raises(ckpt_lib.CheckpointError, match="has not finished"):
        ckpt_lib.drop_resume_state(run_dir)
    assert _steps(run_dir) == [2, 3]


@pytest.mark.slow
def test_tool_gc_drops_older_finished_runs_state_and_info_shows_disk(runs, tmp_path, capsys):
    tool = importlib.import_module("launch.tool")  # launch.tool, the module (launch also has a function tool)

    workdir, run_dir = _copy(runs.kept, runs, tmp_path / "w")
    state = ckpt_lib.resume_state_bytes(run_dir)
    before = ckpt_lib.folder_bytes(run_dir)
    (row,) = tool.cmd_info(workdir)
    out = capsys.readouterr().out
    assert (row["bytes"], row["state_bytes"]) == (before, state)
    assert f"{tool.human_bytes(before)} (state {tool.human_bytes(state)})" in out.splitlines()[2]
    # kept on request: listed, not dropped
    tool.cmd_gc(workdir, apply=True, grace_s=0)
    assert f"kept (train.keep_state=True)  {run_dir.relative_to(workdir)}  {tool.human_bytes(state)}" in \
        capsys.readouterr().out
    assert _steps(run_dir) == [2, 3]
    # A run trained before train.keep_state existed (or with it off) keeps its state: gc lists it,
    # spares it while it finished recently, and drops it with --apply.
    config = json.loads((run_dir / "config.json").read_text())
    del config["train"]["keep_state"]
    (run_dir / "config.json").write_text(json.dumps(config))
    tool.cmd_gc(workdir, grace_s=3600)
    assert "kept (finished less than --grace_s=3600 s ago)" in capsys.readouterr().out
    tool.cmd_gc(workdir, grace_s=0)
    out = capsys.readouterr().out
    assert f"resume state  {run_dir.relative_to(workdir)}  {tool.human_bytes(state)}" in out
    assert f"dry run: the training state of 1 finished run(s) ({tool.human_bytes(state)})" in out
    assert _steps(run_dir) == [2, 3]
    tool.cmd_gc(workdir, apply=True, grace_s=0)
    out = capsys.readouterr().out
    assert f"dropping  {run_dir.relative_to(workdir)}" in out and f"{tool.human_bytes(state)} freed" in out
    assert _steps(run_dir) == [] and ckpt_lib.folder_bytes(run_dir) == pytest.approx(before - state, abs=1024)
    assert json.loads((run_dir / "progress.json").read_text())[ckpt_lib.STATE_DROPPED] is True
    (row,) = tool.run_rows(workdir)
    assert row["status"] == "finished" and row["state_bytes"] == 0
    # evaluation needs the selected parameters only
    _, _, params, progress = load_run(run_dir, workdir)
    assert progress["finished"] and jax.tree_util.tree_leaves(params)
    tool.cmd_gc(workdir, apply=True, grace_s=0)
    assert "no finished run holds a training state to drop" in capsys.readouterr().out
