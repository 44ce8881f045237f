"""Under faults: damaged checkpoints, two commands on one run, and users' mistakes.

A damaged last training state is moved aside and the run resumes from the newest intact epoch,
ending where an uninterrupted run ends; a damaged best checkpoint, a run directory in use, and
every mistake in flags, config or paths end a launcher with one ``error:`` line (no traceback)
before any expensive work.

The launcher commands run forked from a server that imported the libraries once (the ``launcher``
fixture, see ``launchers.py``); one command of each launcher also runs in a fresh interpreter.
Tests that train a run or start a fresh interpreter are marked slow.
"""
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.runs import checkpoint as ckpt_lib
from configs.compose import compose
from emojax import config as config_lib
from emojax.training.loop import fit, progress_at
from launchers import fresh

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3


def text_config(data, bert, cache_dir, epochs=EPOCHS):
    cfg = compose("dataset=MELD--E,encoders=T")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.update(epochs=epochs, batch_size=16, lr=1e-2, patience=100)
    cfg.cache.dir = str(cache_dir)
    cfg.progress = False
    return cfg


def train_flags(cfg) -> list[str]:
    """The launch.train flags of ``text_config``'s run."""
    return ["--config=configs/train.py:dataset=MELD--E,encoders=T", f"--config.dataset.path={cfg.dataset.path}",
            f"--config.encoders.T.model={cfg.encoders.T.model}", f"--config.train.epochs={cfg.train.epochs}",
            "--config.train.batch_size=16", "--config.train.lr=0.01", "--config.train.patience=100",
            f"--config.cache.dir={cfg.cache.dir}", "--config.progress=False"]


def one_error_line(done) -> str:
    """The launcher failed with exactly one ``error:`` line and no traceback; returns the line."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Traceback" not in output and "ImportError" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One feature cache for every run here: the text features are computed once."""
    return tmp_path_factory.mktemp("fault-cache")


@pytest.fixture(scope="session")
def run_config(text_meld, tiny_bert, cache_dir):
    """The config of every run here (nothing trained)."""
    return text_config(text_meld, tiny_bert, cache_dir)


@pytest.fixture(scope="session")
def whole_run(tmp_path_factory, run_config):
    """An uninterrupted run: ``(cfg, workdir, run_dir)``."""
    workdir = tmp_path_factory.mktemp("whole")
    return run_config, workdir, fit(run_config, workdir)


@pytest.fixture(scope="session")
def unfinished_run(tmp_path_factory, run_config):
    """A run stopped after its first epoch: ``(workdir, run_dir)``."""
    workdir = tmp_path_factory.mktemp("unfinished")
    return workdir, fit(run_config, workdir, max_epochs=1)


@pytest.fixture(scope="session")
def second_epoch_run(tmp_path_factory, run_config, unfinished_run):
    """A copy of the unfinished run carried on to its second epoch: ``(workdir, run_dir)``."""
    workdir, run_dir = copied_run(unfinished_run, tmp_path_factory.mktemp("second-epoch"))
    assert fit(run_config, workdir, max_epochs=1) == run_dir  # one epoch more
    return workdir, run_dir


def copied_run(run, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """A copy of a run's workdir to damage (``run``: ``(workdir, run_dir)`` or ``(cfg, workdir,
    run_dir)``): ``(workdir, run_dir)``."""
    workdir, run_dir = run[-2:]
    shutil.copytree(workdir, tmp_path / "work", symlinks=True)
    return tmp_path / "work", tmp_path / "work" / run_dir.relative_to(workdir)


def damage(step_dir: pathlib.Path, part: str) -> None:
    """Damage an Orbax step folder's metadata files or its array files."""
    item = step_dir / "default"
    if part == "metadata":
        (item / "_METADATA").write_text('{"tree_metadata": {"params": ')
        for path in (item / "array_metadatas").iterdir():
            path.write_bytes(b"\x00garbage")
    else:
        chunks = [path for path in item.rglob("*") if path.is_file() and path.parent.name == "d"]
        assert chunks
        for path in chunks:
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def scores(results: dict) -> dict:
    return {"best_epoch": results["best_epoch"],
            **{f"{split}_{key}": results[split][key] for split in ("dev", "test")
               for key in ("accuracy", "weighted_f1", "macro_f1")}}


# ---------------------------------------------------------------------------------------------
# A damaged training state: moved aside, the run resumes from the newest intact epoch
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("part", ["metadata", "arrays"])
def test_damaged_latest_state_resumes_from_intact_epoch(whole_run, second_epoch_run, tmp_path, part, caplog):
    cfg, _, whole = whole_run
    cfg = cfg.copy_and_resolve_references()
    cfg.train.keep_state = True  # the states the resumed run saves are looked at below (same run: not hashed)
    workdir, run_dir = copied_run(second_epoch_run, tmp_path)
    assert json.loads((run_dir / "progress.json").read_text())["epoch"] == 2
    damage(run_dir / "state" / "2", part)
    with caplog.at_level(logging.WARNING):
        assert fit(cfg, workdir) == run_dir
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(run_dir / "state" / "2") in m and "damaged" in m for m in warned), warned
    # The same numbers as the uninterrupted run: epoch 2 was replayed from epoch 1's state.
    resumed = json.loads((run_dir / "results.json").read_text())
    assert scores(resumed) == scores(json.loads((whole / "results.json").read_text()))
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["train_loss"] for row in history] == \
        [row["train_loss"] for row in json.loads((whole / "history.json").read_text())]
    # Moved aside, not deleted, and out of Orbax's way.
    kept = list((run_dir / ckpt_lib.SET_ASIDE).glob("state-2.damaged-*"))
    assert len(kept) == 1 and (kept[0] / "default").is_dir()
    assert sorted(int(p.name) for p in (run_dir / "state").iterdir() if p.name.isdigit()) == [2, 3]


@pytest.mark.slow
def test_no_intact_state_starts_the_run_again(whole_run, unfinished_run, tmp_path):
    cfg, _, whole = whole_run
    workdir, run_dir = copied_run(unfinished_run, tmp_path)
    damage(run_dir / "state" / "1", "arrays")
    fit(cfg, workdir)
    assert scores(json.loads((run_dir / "results.json").read_text())) == \
        scores(json.loads((whole / "results.json").read_text()))
    assert len(list((run_dir / ckpt_lib.SET_ASIDE).glob("state-1.damaged-*"))) == 1


def test_another_models_state_is_an_error_not_damage(tmp_path):
    """Readable checkpoints of other arrays keep today's clear error; nothing is moved."""
    checkpoints = ckpt_lib.RunCheckpoints(tmp_path)
    saved = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    checkpoints.save_epoch(1, saved, {"epoch": 1})
    checkpoints.close()
    with ckpt_lib.RunCheckpoints(tmp_path) as checkpoints:
        with pytest.raises(ckpt_lib.CheckpointError, match=r"state/1: does not match this config's model \(w has "
                                                            r"shape \(4, 3\), the model's has \(4, 5\)\)"):
            checkpoints.restore_latest(1, {"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)})
        with pytest.raises(ckpt_lib.CheckpointError, match="not in the model, e.g. w"):
            checkpoints.restore_latest(1, {"b": jnp.zeros(3)})
        epoch, state = checkpoints.restore_latest(1, {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
    assert epoch == 1 and float(np.asarray(state["w"]).sum()) == 12.0
    assert not (tmp_path / ckpt_lib.SET_ASIDE).exists()


def test_progress_at_replays_selection_and_patience():
    rows = [{"epoch": e, "dev": {"weighted_f1": f}} for e, f in enumerate([0.2, 0.5, 0.4, 0.6], 1)]
    progress = {"epoch": 4, "history": rows, "best_epoch": 4, "best_score": 0.6, "bad_epochs": 0,
                "finished": True, "other": 1}
    assert progress_at(progress, 3, "weighted_f1") == {
        "epoch": 3, "history": rows[:3], "best_epoch": 2, "best_score": 0.5, "bad_epochs": 1, "finished": False,
        "other": 1}


# ---------------------------------------------------------------------------------------------
# A damaged best checkpoint: one line from train, evaluate and infer
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "evaluate", "infer"])
def test_damaged_best_checkpoint_is_one_line(whole_run, tmp_path, name):
    """In a fresh interpreter, as a user starts each launcher."""
    cfg = whole_run[0]
    workdir, run_dir = copied_run(whole_run, tmp_path)
    best = run_dir / "best" / str(json.loads((run_dir / "results.json").read_text())["best_epoch"])
    damage(best, "arrays")
    args = {"train": [*train_flags(cfg), f"--workdir={workdir}"],
            "evaluate": [f"--run_dir={run_dir}"],
            "infer": [f"--run_dir={run_dir}", "--text=i am so happy"]}[name]
    line = one_error_line(fresh(name, *args))
    assert line.startswith(f"error: {best}: damaged checkpoint") and "unreadable array files" in line
    assert f"move {run_dir} aside" in line


# ---------------------------------------------------------------------------------------------
# One run at a time
# ---------------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from emojax.runs.checkpoint import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_second_command_is_refused_and_a_killed_holder_does_not_block(run_config, tmp_path):
    cfg = run_config
    run_dir = config_lib.run_dir(cfg, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_error_line(fresh("train", *train_flags(cfg), f"--workdir={tmp_path}"))
        assert line.startswith(f"error: {run_dir}: another process is training this run (pid {holder.pid} on ")
        assert not (run_dir / "config.json").exists()  # refused before any work
        with pytest.raises(ckpt_lib.RunBusyError, match=f"pid {holder.pid}"):
            ckpt_lib.RunLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The lock file outlives its holder but not the lock: kill -9 leaves nothing stuck.
    assert f'"pid": {holder.pid}' in (run_dir / ckpt_lib.LOCK_FILE).read_text()
    with ckpt_lib.RunLock(run_dir) as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()


# ---------------------------------------------------------------------------------------------
# One line for every user error, before any expensive work
# ---------------------------------------------------------------------------------------------
def _train_case(case, tmp_path, cfg):
    base = [*train_flags(cfg), f"--workdir={tmp_path / 'work'}"]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {
        "unknown key": ([*base, "--config.train.epochz=3"],
                        '--config.train.epochz=3: unknown config key \'epochz\'; did you mean "epochs"'),
        "bad part": (["--config=configs/train.py:dataset=MELD--E,encoderz=T", *base[1:]],
                     "--config=configs/train.py:dataset=MELD--E,encoderz=T: unknown config part 'encoderz'"),
        "workdir is a file": ([*base, f"--workdir={a_file}"], f"--workdir: {a_file} is a file, not a folder"),
        "cache dir is a file": ([*base, f"--config.cache.dir={a_file}"], f"cache.dir: {a_file} is a file"),
        "demo folder is a file": (["--config=configs/train.py:dataset=demo,encoders=T",
                                   f"--config.dataset.path={a_file}", f"--workdir={tmp_path / 'work'}"],
                                  f"dataset.path: {a_file} is a file"),
        "lr nan": ([*base, "--config.train.lr=nan"], "train.lr: must be a positive number, got nan"),
        "lr negative": ([*base, "--config.train.lr=-0.1"], "train.lr: must be a positive number, got -0.1"),
        "batch negative": ([*base, "--config.train.batch_size=-8"], "train.batch_size: must be a whole number"),
        "epochs negative": ([*base, "--config.train.epochs=-1"], "train.epochs: must be a whole number"),
    }[case]


@pytest.mark.parametrize("case", ["unknown key", "bad part", "workdir is a file", "cache dir is a file",
                                  "demo folder is a file", "lr nan", "lr negative", "batch negative",
                                  "epochs negative"])
def test_train_user_errors_are_one_line_before_work(run_config, launcher, tmp_path, case):
    args, expected = _train_case(case, tmp_path, run_config)
    line = one_error_line(launcher.run("train", *args))
    assert line.startswith(f"error: {expected}"), line
    assert not (tmp_path / "work").exists()  # nothing computed or written


@pytest.mark.parametrize("name", ["evaluate", "infer"])
@pytest.mark.parametrize("case", ["missing", pytest.param("workdir", marks=pytest.mark.slow),
                                  pytest.param("unfinished", marks=pytest.mark.slow)])
def test_run_dir_errors_are_one_line(request, launcher, tmp_path, name, case):
    if case == "missing":
        run_dir, expected = tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: no such run directory"
    else:  # these need a trained run
        workdir, unfinished = request.getfixturevalue("unfinished_run")
        run_dir, expected = {
            "workdir": (workdir, f"{workdir}: is a workdir, not a run directory"),
            "unfinished": (unfinished, f"{unfinished}: the run has not finished (epoch 1 of {EPOCHS})"),
        }[case]
    extra = ["--text=hi"] if name == "infer" else []
    line = one_error_line(launcher.run(name, f"--run_dir={run_dir}", *extra))
    assert line.startswith(f"error: {expected}"), line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["folder", "same file"])
def test_infer_output_refused_before_scoring(whole_run, launcher, tmp_path, text_meld, case):
    source = tmp_path / "dev_sent_emo.csv"
    shutil.copyfile(text_meld / "dev_sent_emo.csv", source)
    before = source.read_bytes()
    output = {"folder": tmp_path / "out", "same file": source}[case]
    if case == "folder":
        output.mkdir()
    line = one_error_line(launcher.run("infer", f"--run_dir={whole_run[2]}", f"--input_csv={source}",
                                       f"--output={output}", "--noprogress"))
    expected = {"folder": f"--output: {output} is a folder",
                "same file": f"--output: {output} is the input CSV"}[case]
    assert line.startswith(f"error: {expected}"), line
    assert source.read_bytes() == before
    if case == "folder":
        assert list(output.iterdir()) == []


OTHER_LAUNCHER_ERRORS = [
    ("sweep", ["--sweep=demo", "--workdir={a_file}", "--dry_run"], "--workdir: {a_file} is a file"),
    ("sweep", ["--swep=demo"], "Unknown command line flag 'swep'"),
    ("tool", ["infoo"], "unknown command 'infoo'"),
    ("tool", ["info", "--workdr=runs"], "Unknown command line flag 'workdr'"),
    ("benchmark", ["--config=configs/train.py:encoders=T", "--config.train.epochz=3"],
     "--config.train.epochz=3: unknown config key 'epochz'"),
    ("benchmark", ["--run={tmp}/nowhere"], "{tmp}/nowhere: no such run directory"),
    ("benchmark", ["--run={tmp}/nowhere", "--output_dir={a_file}"], "--output_dir: {a_file} is a file"),
]


def _other_launcher_error(run, tmp_path, name, args, expected):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    fill = {"a_file": a_file, "tmp": tmp_path}
    line = one_error_line(run(name, *[arg.format(**fill) for arg in args]))
    assert line.startswith(f"error: {expected.format(**fill)}"), line


@pytest.mark.parametrize("name,args,expected", OTHER_LAUNCHER_ERRORS)
def test_other_launchers_user_errors_are_one_line(launcher, tmp_path, name, args, expected):
    _other_launcher_error(launcher.run, tmp_path, name, args, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name,args,expected", [OTHER_LAUNCHER_ERRORS[i] for i in (1, 2, 5)])
def test_other_launchers_user_errors_in_a_fresh_interpreter(tmp_path, name, args, expected):
    _other_launcher_error(fresh, tmp_path, name, args, expected)


def test_unexpected_failure_keeps_its_traceback():
    from launch import _errors

    def bug(argv):
        raise KeyError("an internal bug")

    def mistake(argv):
        raise config_lib.ConfigError("train.lr: must be a positive number, got nan\nsecond line")

    with pytest.raises(KeyError, match="an internal bug"):
        _errors.guarded(bug)([])
    with pytest.raises(SystemExit) as stop:
        _errors.guarded(mistake)([])
    assert stop.value.code == "error: train.lr: must be a positive number, got nan; second line"


# Checkpoints of format 1: encoder layer keys under their earlier names

def test_format_1_layer_keys_map_to_todays_one_to_one():
    """The migration renames a format-1 checkpoint's ``layers/<i>/<key>`` arrays of a tuned
    encoder (and their optimizer moments, and LoRA adapters keyed by module path) from the key's
    earlier name, as its family had it, to today's; nothing else is renamed."""
    from emojax.runs.format import layer_keys_renamed

    def layer(*names):
        return {name: {"w": name} for name in names}

    saved = {"encoder": {"V": {"layers": [layer("norm_before", "intermediate", "query")],
                               "final_norm": {"scale": "final_norm"}, "intermediate": {"w": "outside"}},
                         "A": {"layers.0.intermediate": {"a": "lora"}, "layers.0.query": {"a": "lora"}},
                         "T": {"layers": [layer("intermediate", "output")]}},
             "opt": {"mu": {"encoder": {"V": {"layers": [layer("intermediate")]}}}},
             "params": {"V": {"layers": [layer("intermediate")]}}, "step": 3}
    wanted = {"encoder": {"V": {"layers": [{"attn_norm": {"w": "norm_before"}, "fc1": {"w": "intermediate"},
                                            "query": {"w": "query"}}],
                                "final_norm": {"scale": "final_norm"}, "intermediate": {"w": "outside"}},
                          "A": {"layers.0.fc1": {"a": "lora"}, "layers.0.query": {"a": "lora"}},
                          "T": {"layers": [layer("intermediate", "output")]}},
              "opt": {"mu": {"encoder": {"V": {"layers": [{"fc1": {"w": "intermediate"}}]}}}},
              "params": {"V": {"layers": [layer("intermediate")]}}, "step": 3}
    families = {"V": "videomae", "A": "wav2vec2", "T": "bert"}
    assert layer_keys_renamed(saved, families) == (wanted, 4)
    # a key renamed outside an encoder layer, a text encoder's keys, a head's: not earlier names
    assert layer_keys_renamed(wanted, families) == (wanted, 0)
    # CLIP's earlier norms
    assert layer_keys_renamed({"encoder": {"V": {"layers": [layer("norm1", "norm2")]}}}, {"V": "clip"}) == (
        {"encoder": {"V": {"layers": [{"attn_norm": {"w": "norm1"}, "mlp_norm": {"w": "norm2"}}]}}}, 2)
