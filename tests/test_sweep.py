"""Sweeps: expansion and ordering of the real sweeps, the dry run, the demo sweep end to end,
skipping finished runs, failures and their students, subprocess scheduling, and the table."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs.compose import compose
from configs.experiments import available_sweeps, load_sweep
from emojax import config as config_lib
from emojax import sweep as sweep_lib
from emojax.data.demo import generate_demo
from launch._commands import checkout_env, train_command

ROOT = pathlib.Path(__file__).resolve().parents[1]

COUNTS = {"baseline/unimodal": 18, "baseline/multimodal": 24, "mdn": 12, "mdn-ablation": 48, "makd": 12,
          "makd-ablation": 48, "moe": 24, "demo": 5,
          "meld-cpu": 48}


def _plan(name, workdir="runs", data_root="datasets", **kwargs):
    return sweep_lib.plan(load_sweep(name), workdir, data_root, compose=compose, **kwargs)


def _parts(run):
    return dict(run.cfg.parts)


# ---------------------------------------------------------------------------------------------
# Expansion, without training
# ---------------------------------------------------------------------------------------------
def test_sweep_list_and_counts_of_the_real_sweeps():
    assert sorted(available_sweeps()) == sorted(COUNTS)
    for name, count in COUNTS.items():
        runs = _plan(name, data_root="/data")
        assert len(runs) == count, name
        assert len({r.run_dir for r in runs}) == count  # every run its own directory
        for run in runs:
            folder = {"MELD--E": "MELD", "IEMOCAP--E": "IEMOCAP", "demo": "demo"}[run.cfg.dataset.name]
            assert run.cfg.dataset.path == f"/data/{folder}"
            assert run.run_dir == config_lib.run_dir(run.cfg, "runs", run.category)


def test_meld_cpu_sweep_changes_one_thing_of_the_joint_setting_each():
    from configs.experiments import meld_cpu

    runs = {r.name: r for r in _plan("meld-cpu", data_root="/data")}
    assert {r.seed for r in runs.values()} == {0, 1, 2}

    def composed(parts, fields):
        cfg = compose(parts)
        for key, value in fields.items():
            sweep_lib.set_field(cfg, key, value)
        return cfg

    def differences(setting, base):
        cfg = runs[f"MELD--E/meld-cpu/{setting}/seed=1"].cfg
        assert cfg.seed == 1 and cfg.dataset.path == "/data/MELD"
        mine, theirs = cfg.to_dict(), base.to_dict()
        return {k for k in set(mine) | set(theirs) if k not in ("seed", "dataset", "parts", "composed")
                and mine.get(k) != theirs.get(k)}, cfg

    joint = composed(meld_cpu.JOINT, meld_cpu.JOINT_TRAINING)
    assert joint.model.context.kind == "gru" and joint.finetune.tune_layers == 2
    assert differences("joint", joint)[0] == set()
    changed, cfg = differences("top3", joint)
    assert changed == {"finetune"} and cfg.finetune.tune_layers == 3
    changed, cfg = differences("previous-turn", joint)
    assert changed == {"encoders"} and cfg.encoders.T.context_turns == 1
    for setting in ("gru-causal", "transformer", "transformer-causal"):
        changed, cfg = differences(setting, joint)
        assert changed == {"model"} and cfg.parts.context == setting
    changed, cfg = differences("focal", joint)
    assert changed == {"loss"} and cfg.loss.classification == "focal"
    alone = composed(meld_cpu.ALONE, meld_cpu.ALONE_TRAINING)
    changed, cfg = differences("no-context", alone)
    assert changed == set() and "context" not in cfg.model and (cfg.train.lr, cfg.train.batch_size) == (1e-3, 32)
    changed, cfg = differences("top3-no-context", alone)
    assert changed == {"finetune"} and cfg.finetune.tune_layers == 3
    changed, six = differences("top3-6-epochs", alone)
    assert changed == {"finetune", "train"} and six.train.epochs == 6 and six.finetune.tune_layers == 3
    top3 = cfg
    changed, other = differences("top5-no-context", top3)
    assert changed == {"finetune"} and other.finetune.tune_layers == 5
    changed, other = differences("top3-focal-no-context", top3)
    assert changed == {"loss"} and other.loss.classification == "focal"
    changed, other = differences("top3-previous-turn-no-context", top3)
    assert changed == {"encoders"} and other.encoders.T.context_turns == 1
    changed, other = differences("top3-spcl-no-context", top3)
    assert changed == {"loss"} and set(other.loss.extras) == {"spcl"} and other.loss.classification == "ce"
    changed, mean = differences("top3-mean-no-context", top3)
    assert changed == {"encoders"} and (mean.encoders.T.pooling, mean.encoders.T.prompt) == ("mean", False)
    changed, other = differences("top3-smoothing-no-context", top3)
    assert changed == {"loss"} and other.loss.label_smoothing == 0.1 and not other.loss.extras
    # The recipe is the setting that did best: the same config, the same run directory.
    recipe = compose("recipe=meld-cpu")
    recipe.seed, recipe.dataset.path = 1, "/data/MELD"
    assert config_lib.config_hash(recipe) == config_lib.config_hash(mean)
    assert runs["MELD--E/meld-cpu/top3-mean-no-context/seed=1"].run_dir == config_lib.run_dir(recipe, "runs")


def test_sweep_contents_match_the_experiments():
    uni = _plan("baseline/unimodal")
    assert {(r.cfg.dataset.name, r.cfg.modalities, r.seed) for r in uni} == {
        (d, m, s) for d in ("MELD--E", "IEMOCAP--E") for m in ("T", "A", "V") for s in (0, 42, 114)}
    multi = _plan("baseline/multimodal")
    assert {r.cfg.modalities for r in multi} == {"T+A", "T+V", "A+V", "T+A+V"}
    assert {r.cfg.fusion.preset for r in multi} == {"vallina"}
    mdn = _plan("mdn")
    assert {(r.cfg.fusion.preset, r.cfg.loss.preset, r.cfg.modalities) for r in mdn} == {
        ("DF-1.0+attn", "focal", "T+A+V"), ("DF-1.0+attn", "weighted", "T+A+V")}
    assert all(r.cfg.fusion.use_cross_attn for r in mdn)
    ablation = _plan("mdn-ablation")
    meld = {r.cfg.fusion.preset for r in ablation if r.cfg.dataset.name == "MELD--E"}
    assert meld == {"DF-0.1+attn", "DF-0.1+concat", "DF-1.0+attn", "DF-1.0+concat", "DF-2.0+attn", "DF-2.0+concat",
                    "private", "shared-meld"}
    assert "shared-iemocap" in {r.cfg.fusion.preset for r in ablation if r.cfg.dataset.name == "IEMOCAP--E"}
    concat = [r for r in ablation if r.cfg.fusion.preset.endswith("+concat")]
    assert concat and not any(r.cfg.fusion.use_cross_attn for r in concat)
    moe = _plan("moe")
    assert {(r.cfg.classifier.preset, int(r.cfg.classifier.experts)) for r in moe} == {
        ("1xE", 1), ("4xE", 4), ("8xE", 8), ("64xE", 64)}


@pytest.mark.parametrize("name", ["makd", "makd-ablation", "demo"])
def test_sweep_teachers_come_first_and_match_their_students(name):
    runs = _plan(name)
    position = {r.name: i for i, r in enumerate(runs)}
    by_name = {r.name: r for r in runs}
    students = [r for r in runs if r.teacher]
    assert students
    for student in students:
        teacher = by_name[student.teacher]
        assert position[teacher.name] < position[student.name]
        assert student.category == "distillation" and teacher.category == "training"
        assert "dist" in student.cfg.loss.extras and "dist" not in teacher.cfg.loss.extras
        assert (teacher.cfg.modalities, teacher.cfg.loss.preset) == ("T", "focal")
        assert (teacher.cfg.dataset.name, teacher.seed) == (student.cfg.dataset.name, student.seed)
        assert student.run_dir.relative_to("runs").parts[:2] == ("checkpoints", "distillation")
    if name == "makd":  # all the teachers first, then the T+A+V DF-1.0+attn focal+dist students
        assert [r.teacher is None for r in runs] == [True] * 6 + [False] * 6
        assert {(r.cfg.modalities, r.cfg.fusion.preset, r.cfg.loss.preset) for r in students} == {
            ("T+A+V", "DF-1.0+attn", "focal+dist")}
    if name == "makd-ablation":  # the same teachers (same run directories) as makd
        makd_teachers = {r.run_dir for r in _plan("makd") if r.teacher is None}
        assert {r.run_dir for r in runs if r.teacher is None} == makd_teachers
        for dataset in ("MELD--E", "IEMOCAP--E"):
            combos = {(r.cfg.fusion.preset, r.cfg.loss.preset) for r in students if r.cfg.dataset.name == dataset}
            assert len(combos) == 7 and len([r for r in students if r.cfg.dataset.name == dataset]) == 21


def test_sweep_only_keeps_the_teachers_it_needs_and_set_overrides(tmp_path):
    runs = _plan("makd", only="IEMOCAP--E/T+A+V", overrides=sweep_lib.parse_assignments(
        ["train.epochs=3", "train.lr=0.01", "encoders.T.model=/models/bert", "progress=false"]))
    assert [r.teacher is None for r in runs] == [True, False] * 3  # each teacher just before its student
    assert {r.cfg.dataset.name for r in runs} == {"IEMOCAP--E"}
    for run in runs:
        assert run.cfg.train.epochs == 3 and run.cfg.train.lr == 0.01 and run.cfg.progress is False
        assert run.cfg.encoders.T.model == "/models/bert"
    # A field of an encoder the run lacks is skipped; the others must exist and parse.
    audio = _plan("baseline/unimodal", only="MELD--E/A/", overrides={"encoders.T.model": "x"})
    assert audio and all("T" not in r.cfg.encoders and "encoders.T.model" not in r.overrides for r in audio)
    with pytest.raises(sweep_lib.SweepError, match="train.epoch"):
        _plan("mdn", overrides={"train.epoch": "3"})
    with pytest.raises(sweep_lib.SweepError, match="train.epochs"):
        _plan("mdn", overrides={"train.epochs": "many"})
    with pytest.raises(sweep_lib.SweepError, match="key=value"):
        sweep_lib.parse_assignments(["train.epochs"])


def test_sweep_bad_specs_name_the_run():
    teacher = sweep_lib.spec("dataset=MELD--E,encoders=T,loss=focal", 0)
    student = sweep_lib.spec("dataset=MELD--E,encoders=T+A+V,loss=focal+dist", 0, teacher=teacher["name"])
    assert student["category"] == "distillation" and student["overrides"] == {"seed": 0}
    cases = [
        ([student], "not a run of this sweep"),
        ([teacher, teacher], "used twice"),
        ([dict(teacher, name="x", teacher="x", category="distillation")], "own teacher"),
        ([teacher, dict(student, category="training")], "a run with a teacher is a distillation run"),
        ([teacher, sweep_lib.spec("dataset=MELD--E,encoders=T+A,loss=focal", 0, teacher=teacher["name"])],
         "needs the dist loss"),
        ([sweep_lib.spec("dataset=MELD--E,encoders=T+A,loss=focal+dist", 0)], "needs a teacher"),
        ([sweep_lib.spec("dataset=MELD--E,encoders=T+A,fusion=DF-3.0", 0)], "DF-3.0"),
        ([sweep_lib.spec("dataset=MELD--E,encoders=T,fusion=DF-1.0", 0)], "fuses at least 2"),
        ([teacher, sweep_lib.spec("dataset=IEMOCAP--E,encoders=T+A,loss=focal+dist", 0, teacher=teacher["name"])],
         "trained on MELD--E"),
        ([teacher, sweep_lib.spec("dataset=MELD--E,encoders=T,loss=focal", 0, name="other")], "are the same run"),
        ([sweep_lib.spec("dataset=MELD--E,encoderz=T", 0)], "run 'MELD--E/T/seed=0': unknown config part 'encoderz'"),
    ]
    for specs, message in cases:
        with pytest.raises(sweep_lib.SweepError, match=message):
            sweep_lib.plan(specs, "runs", compose=compose)
    for parts, message in (("dataset", "'dataset' is not of the form key=value"),
                           ("loss=ce,loss=focal", "given twice")):
        with pytest.raises(sweep_lib.SweepError, match=message):
            sweep_lib.spec(parts, 0)
    with pytest.raises(sweep_lib.SweepError, match="unknown sweep 'nope'.*mdn"):
        load_sweep("nope")


def test_sweep_launcher_command_gives_the_same_run_dir(tmp_path):
    """A subprocess runs ``launch.train`` with the run's parts and overrides: its flags must
    rebuild the same config, hence the same run directory."""
    from absl import flags
    from ml_collections import config_flags

    runs = _plan("makd", tmp_path / "runs", tmp_path / "data", only="MELD--E/T+A+V/DF-1.0+attn/focal+dist/seed=42",
                 overrides={"train.epochs": 2, "train.lr": 0.01, "encoders.T.model": "/m/bert", "progress": False})
    teacher, student = runs
    for run, teacher_dir in ((teacher, None), (student, teacher.run_dir)):
        argv = train_command(run, tmp_path / "runs", teacher_dir)
        assert argv[:3] == [sys.executable, "-m", "launch.train"]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                        sys_argv=["launch.train", *argv[3:]])
        flags.DEFINE_string("workdir", None, "", flag_values=values)
        flags.DEFINE_string("teacher", None, "", flag_values=values)
        values(["launch.train", *argv[3:]])
        assert values.config.to_dict() == run.cfg.to_dict()
        assert config_lib.run_dir(values.config, values.workdir, "distillation" if values.teacher else "training") \
            == run.run_dir
        assert values.teacher == (str(teacher_dir) if teacher_dir else None)


def test_sweep_dry_run_prints_order_dirs_and_status(tmp_path):
    workdir = tmp_path / "runs"
    runs = _plan("makd", workdir, tmp_path / "data")
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "results.json").write_text("{}")
    runs[1].run_dir.mkdir(parents=True)
    (runs[1].run_dir / "progress.json").write_text("{}")
    before = sorted(p for p in tmp_path.rglob("*"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "launch.sweep", "--sweep=makd", "--dry_run", f"--workdir={workdir}",
                          f"--data_root={tmp_path / 'data'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "sweep makd: 12 runs: 1 finished, 1 partial, 10 new"
    for index, run in enumerate(runs):
        status = ["finished", "partial"][index] if index < 2 else "new"
        assert lines[1 + 2 * index].strip().startswith(f"{index + 1}. [{status}] {run.name} ({run.category})")
        assert lines[2 + 2 * index].strip() == str(run.run_dir)
    assert "<- teacher MELD--E/T/focal/seed=0" in lines[1 + 2 * 6]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, nothing run


# ---------------------------------------------------------------------------------------------
# Running: the demo sweep end to end, then finished runs skipped
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("sweep-demo")
    generate_demo(root / "data" / "demo", seed=0, sizes={"train": 32, "dev": 12, "test": 12})
    overrides = {"train.epochs": 2, "train.batch_size": 8, "encoders.T.model": str(tiny_bert),
                 "dataset.generate": False, "progress": False}
    runs = _plan("demo", root / "runs", root / "data", overrides=overrides)
    lines = []
    outcomes = sweep_lib.execute(runs, root / "runs", echo=lines.append)
    text = sweep_lib.write_report("demo", root / "runs", runs, outcomes)
    return root, runs, outcomes, text, lines, overrides


@pytest.mark.slow
def test_sweep_demo_end_to_end(demo_sweep):
    root, runs, outcomes, text, lines, overrides = demo_sweep
    assert {name: o.status for name, o in outcomes.items()} == {r.name: "done" for r in runs}, outcomes
    teacher, student = runs[0], runs[-1]
    assert student.teacher == teacher.name
    record = json.loads((student.run_dir / "teacher.json").read_text())
    assert record["run_dir"] == str(teacher.run_dir.resolve())
    md_path, json_path = sweep_lib.report_paths("demo", root / "runs")
    assert md_path.read_text() == text
    report = json.loads(json_path.read_text())
    assert [g["label"] for g in report["groups"]] == [r.config_label for r in runs]
    for run, group in zip(runs, report["groups"]):
        results = json.loads((run.run_dir / "results.json").read_text())
        for split in ("dev", "test"):
            for metric in ("accuracy", "weighted_f1"):
                assert group[split][metric]["mean"] == pytest.approx(results[split][metric])
                assert group[split][metric]["std"] == 0.0
        row = next(line for line in text.splitlines() if line.startswith(f"| {run.config_label} |"))
        assert f"{100 * results['test']['weighted_f1']:.2f} ± 0.00" in row
    # The label names every override of the sweep's settings (the model by its folder's name).
    model = pathlib.Path(overrides["encoders.T.model"]).name
    assert (f"| demo T+A+V vallina focal+dist 1xE frozen T[pool=mean,ctx=0,len=64] dataset.generate=False "
            f"encoders.T.model={model} train.batch_size=8 train.epochs=2 | distillation | 0 (1/1) |") in text


def test_sweep_second_call_skips_finished_runs(demo_sweep):
    root, runs, _, _, _, overrides = demo_sweep
    replanned = _plan("demo", root / "runs", root / "data", overrides=overrides)
    assert [r.status() for r in replanned] == ["finished"] * len(runs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    lines = []
    outcomes = sweep_lib.execute(replanned, root / "runs", runner=must_not_run, echo=lines.append)
    assert {o.status for o in outcomes.values()} == {"finished"}
    assert all("finished already, skipped" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# Failures: reported, the sweep goes on, students skipped
# ---------------------------------------------------------------------------------------------
def _fake_fit(calls, fail):
    """A stand-in for ``emojax.training.loop.fit``: records the call, fails for the runs in ``fail``,
    otherwise writes a results.json."""

    def fit(cfg, workdir, *, category="training", teacher=None):
        run_dir = config_lib.run_dir(cfg, workdir, category)
        calls.append((config_lib.run_label(cfg), category, teacher))
        if (cfg.dataset.name, cfg.modalities, int(cfg.seed)) in fail:
            raise FileNotFoundError(f"dataset.path: {cfg.dataset.path} does not exist")
        if teacher is not None:
            assert (pathlib.Path(teacher) / "results.json").exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        scores = {"accuracy": 0.5 + 0.01 * int(cfg.seed) / 114, "weighted_f1": 0.4}
        (run_dir / "results.json").write_text(json.dumps({"dev": scores, "test": scores}))
        return run_dir

    return fit


def test_sweep_failed_run_is_reported_and_its_student_skipped(tmp_path):
    workdir = tmp_path / "runs"
    runs = _plan("makd", workdir)
    calls = []
    lines = []
    outcomes = sweep_lib.execute(runs, workdir, runner=_fake_fit(calls, {("MELD--E", "T", 42)}), echo=lines.append)
    failed_teacher = "MELD--E/T/focal/seed=42"
    failed_student = "MELD--E/T+A+V/DF-1.0+attn/focal+dist/seed=42"
    assert outcomes[failed_teacher].status == "failed"
    assert outcomes[failed_teacher].error.startswith("FileNotFoundError: dataset.path")
    assert outcomes[failed_student].status == "skipped"
    assert outcomes[failed_student].error.startswith(f"teacher {failed_teacher} failed: FileNotFoundError")
    others = [r for r in runs if r.name not in (failed_teacher, failed_student)]
    assert all(outcomes[r.name].status == "done" for r in others)
    assert len(calls) == 11  # the skipped student never started
    by_name = {r.name: r for r in runs}
    for label, category, teacher in calls:  # students got their teacher's run directory
        if category == "distillation":
            run = next(r for r in runs if r.label == label)
            assert teacher == by_name[run.teacher].run_dir
    text = sweep_lib.write_report("makd", workdir, runs, outcomes)
    row = next(line for line in text.splitlines()
               if line.startswith("| MELD--E T vallina focal 1xE frozen T[pool=mean,ctx=0,len=64] |"))
    assert "0,42,114 (2/3)" in row and "seed 42 failed: FileNotFoundError: dataset.path" in row
    row = next(line for line in text.splitlines() if line.startswith("| MELD--E T+A+V DF-1.0+attn focal+dist"))
    assert "seed 42 skipped: teacher MELD--E/T/focal/seed=42 failed" in row
    records = json.loads(sweep_lib.report_paths("makd", workdir)[1].read_text())["runs"]
    assert {r["name"]: r["status"] for r in records}[failed_student] == "skipped"
    # Started again, the finished runs are skipped and the failed teacher is tried again.
    calls.clear()
    outcomes = sweep_lib.execute(runs, workdir, runner=_fake_fit(calls, set()), echo=lines.append)
    assert [c[0] for c in calls] == [by_name[failed_teacher].label, by_name[failed_student].label]
    assert all(o.status in ("finished", "done") for o in outcomes.values())


_FAKE_LAUNCH = textwrap.dedent("""
    import json, os, pathlib, sys, time
    run_dir, teacher, record, fail = sys.argv[1:5]
    start = time.time()
    if teacher != "-" and not (pathlib.Path(teacher) / "results.json").exists():
        sys.exit("error: teacher not finished")
    time.sleep(0.3)
    if fail == "1":
        print("some progress", flush=True)
        sys.exit("error: dataset.path: missing folder")
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"dev": {"accuracy": 0.5, "weighted_f1": 0.5},
                                                      "test": {"accuracy": 0.5, "weighted_f1": 0.5}}))
    with open(record, "a") as handle:
        handle.write(json.dumps({"run_dir": str(run_dir), "device": os.environ["CUDA_VISIBLE_DEVICES"],
                                 "mark": os.environ.get("SWEEP_MARK"), "cwd": os.getcwd(),
                                 "start": start, "end": time.time()}) + "\\n")
""")


def test_sweep_parallel_subprocesses_pinned_to_devices_students_wait(tmp_path):
    workdir = tmp_path / "runs"
    runs = _plan("makd", workdir, only="seed=0") + _plan("demo", workdir)
    record = tmp_path / "record.jsonl"
    failing = {r.run_dir for r in runs if r.name == "IEMOCAP--E/T/focal/seed=0"}

    def command(run, workdir_, teacher_dir):
        return [sys.executable, "-c", _FAKE_LAUNCH, str(run.run_dir), str(teacher_dir or "-"), str(record),
                "1" if run.run_dir in failing else "0"]

    lines = []
    outcomes = sweep_lib.execute(runs, workdir, parallel=3, devices=["3", "5"], command=command,
                                 env={"SWEEP_MARK": "given"}, log_dir=tmp_path / "logs", echo=lines.append,
                                 poll_seconds=0.05)
    rows = {row["run_dir"]: row for row in map(json.loads, record.read_text().splitlines())}
    by_name = {r.name: r for r in runs}
    assert {row["device"] for row in rows.values()} == {"3", "5"}
    # The command's environment is this process's plus env, in this process's directory.
    assert {(row["mark"], row["cwd"]) for row in rows.values()} == {("given", os.getcwd())}
    for run in runs:
        if run.teacher and outcomes[run.name].status == "done":
            assert rows[str(run.run_dir)]["start"] >= rows[str(by_name[run.teacher].run_dir)]["end"]
    assert outcomes["IEMOCAP--E/T/focal/seed=0"].status == "failed"
    assert "error: dataset.path: missing folder" in outcomes["IEMOCAP--E/T/focal/seed=0"].error
    assert outcomes["IEMOCAP--E/T+A+V/DF-1.0+attn/focal+dist/seed=0"].status == "skipped"
    assert sum(o.status == "done" for o in outcomes.values()) == len(runs) - 2 == len(rows)
    # At most three at once: never more than three runs overlap in time.
    spans = sorted((row["start"], row["end"]) for row in rows.values())
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 3
    log_file = pathlib.Path(outcomes["IEMOCAP--E/T/focal/seed=0"].log)
    assert "some progress" in log_file.read_text()
    with pytest.raises(sweep_lib.SweepError, match="need command"):
        sweep_lib.execute(runs, workdir, parallel=2)


def test_sweep_launcher_subprocess_finds_the_checkout(tmp_path):
    """The runs' ``python -m launch.train`` starts from any working directory: the checkout is
    on its PYTHONPATH (configs/ and launch/ are not installed)."""
    run = _plan("demo", tmp_path / "runs", tmp_path / "data")[0]
    argv = train_command(run, tmp_path / "runs", None)
    assert pathlib.Path(argv[3].split("=", 1)[1].split(":", 1)[0]) == ROOT / "configs" / "train.py"
    env = {**os.environ, **checkout_env()}
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    code = "import configs.train, launch._errors; print(configs.train.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert pathlib.Path(out.stdout.strip()) == ROOT / "configs" / "train.py"


# ---------------------------------------------------------------------------------------------
# The table: mean and standard deviation over seeds
# ---------------------------------------------------------------------------------------------
def test_sweep_aggregate_matches_numpy():
    rng = np.random.default_rng(0)
    records, expected = [], {}
    for category, config in (("training", "a"), ("training", "b"), ("distillation", "a")):
        values = rng.uniform(0.3, 0.7, size=(3, 2, 2))  # seed, split, metric
        expected[(category, config)] = values
        for i, seed in enumerate((0, 42, 114)):
            scores = {split: {metric: float(values[i, s, m]) for m, metric in enumerate(("accuracy", "weighted_f1"))}
                      for s, split in enumerate(("dev", "test"))}
            records.append({"name": f"{config}/{seed}", "seed": seed, "label": f"config {config}", "category": category,
                            "hash": config, "status": "done", "error": None, "scores": scores,
                            "minutes": 2.0 + i})
    records.append({"name": "a/7", "seed": 7, "label": "config a", "category": "training", "hash": "a",
                    "status": "failed", "error": "ValueError: boom", "scores": None})
    groups = sweep_lib.aggregate(records)
    assert [(g["category"], g["hash"]) for g in groups] == list(expected)
    for group in groups:
        values = expected[(group["category"], group["hash"])]
        for s, split in enumerate(("dev", "test")):
            for m, metric in enumerate(("accuracy", "weighted_f1")):
                stats = group[split][metric]
                assert stats["mean"] == pytest.approx(np.mean(values[:, s, m]), abs=1e-12)
                assert stats["std"] == pytest.approx(np.std(values[:, s, m]), abs=1e-12)
                assert stats["n"] == 3
    first = groups[0]
    assert first["seeds"] == [0, 42, 114, 7] and (first["scored"], first["runs"]) == (3, 4)
    assert first["notes"] == ["seed 7 failed: ValueError: boom"]
    assert first["minutes"]["mean"] == pytest.approx(3.0) and first["minutes"]["n"] == 3
    text = sweep_lib.format_report("x", groups, records)
    values = expected[("training", "a")]
    cell = f"{100 * np.mean(values[:, 1, 1]):.2f} ± {100 * np.std(values[:, 1, 1]):.2f}"
    row = next(line for line in text.splitlines() if line.startswith("| config a | training |"))
    assert row.split(" | ")[6] == cell and "seed 7 failed: ValueError: boom" in row
    assert row.split(" | ")[7] == "3.0"
    assert "| a/114 | done |" in text and "| 4.0 |" in text
    assert "| a/7 | failed | - | - | - | - | - | ValueError: boom |" in text


def test_read_minutes_sums_the_epochs_and_the_features(tmp_path):
    assert sweep_lib.read_minutes(tmp_path) is None
    (tmp_path / "progress.json").write_text(json.dumps({"history": [
        {"epoch": 1, "seconds": 90.0, "feature_seconds": 30.0}, {"epoch": 2, "seconds": 60.0}]}))
    assert sweep_lib.read_minutes(tmp_path) == pytest.approx(3.0)
    (tmp_path / "progress.json").write_text(json.dumps({"epoch": 0, "history": []}))
    assert sweep_lib.read_minutes(tmp_path) is None
