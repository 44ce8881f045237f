r"""MELD in two stages: a dialogue context head trained on the frozen features of the text
encoders that the ``meld-cpu`` sweep's runs tuned.

    python -m launch.sweep --sweep=meld-cpu --only=/top3-mean-no-context/ --workdir=runs --data_root=DATA
    python benchmarks/meld_two_stage.py --workdir=runs --data_root=DATA \
        [--stage_one=top3-mean-no-context] [--heads=gru,transformer,gru-causal,transformer-causal]

Stage one is a setting of the ``meld-cpu`` sweep (``configs/experiments/meld_cpu.py``; by default
the recipe's, ``top3-mean-no-context``), one finished run per seed, run first with ``launch.sweep`` as
above. For each of them this exports the tuned encoder once (``launch.tool extract-encoders``,
into ``WORKDIR/two-stage/SETTING/seed=S``), then trains each ``--heads`` context head with seed S
on its frozen features: stage one's text path (its pooling, prompt, length and context turns), the
context head's training (lr 5e-4, 64 utterance slots a batch, 15 epochs with the default patience).
The stage-two runs are an ordinary sweep (``two-stage-SETTING``): finished runs are kept, their
table (dev weighted F1 mean and standard deviation over the seeds, minutes a seed) is printed and
written under ``WORKDIR/sweeps`` like any sweep's.
"""
import logging as std_logging
import pathlib
import shutil
import sys

import numpy as np

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402
from configs.experiments import load_sweep  # noqa: E402
from emojax import sweep as sweep_lib  # noqa: E402
from emojax.sweep import report as sweep_report  # noqa: E402
from emojax.inference.standalone import extract_encoders  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs", "The meld-cpu sweep's --workdir (stage two's runs go there too).")
_DATA_ROOT = flags.DEFINE_string("data_root", "datasets", "The meld-cpu sweep's --data_root.")
_STAGE_ONE = flags.DEFINE_string("stage_one", "top3-mean-no-context", "The meld-cpu setting whose runs are stage one.")
_HEADS = flags.DEFINE_list("heads", ["gru"], "Context heads of stage two (context= parts).")
_SEEDS = flags.DEFINE_list("seeds", [], "Only these seeds (default: every finished stage-one run).")
_SET = flags.DEFINE_multi_string("set", [], "key=value: a config field of every stage-two run (e.g. "
                                 "--set=train.lr=1e-4); repeatable. The runs' names carry them.")

# Stage two: the context head's training, on frozen features read the way stage one read its text.
STAGE_TWO = {"train.lr": 5e-4, "train.batch_size": 64, "train.epochs": 15}
TEXT_PATH = ("pooling", "prompt", "max_length", "context_turns")


def export(run: sweep_lib.Run, folder: pathlib.Path) -> str:
    """The tuned text encoder of ``run``, exported once into ``folder``; its path."""
    if not (folder / "encoders.json").exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        extract_encoders(run.run_dir, partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return str((folder / "T").resolve())


def main(argv):
    del argv
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    workdir = pathlib.Path(_WORKDIR.value)
    setting = _STAGE_ONE.value
    stage_one = [run for run in sweep_lib.plan(load_sweep("meld-cpu"), workdir, _DATA_ROOT.value, compose=compose,
                                               only=f"/{setting}/seed=")
                 if not _SEEDS.value or str(run.seed) in _SEEDS.value]
    finished = [run for run in stage_one if run.status() == "finished"]
    for run in stage_one:
        if run not in finished:
            print(f"stage one {run.name}: {run.status()}, not finished; run it with launch.sweep first")
    if not finished:
        raise app.UsageError(f"no finished run of meld-cpu's {setting!r} under {workdir}")
    extra = sweep_lib.parse_assignments(_SET.value)
    variant = "".join(f",{key}={value}" for key, value in extra.items())
    specs, heads = [], {}
    for run in finished:
        model = export(run, workdir / "two-stage" / setting / f"seed={run.seed}")
        for head in _HEADS.value:
            fields = {"encoders.T.model": model, **{f"encoders.T.{key}": run.cfg.encoders.T[key] for key in TEXT_PATH},
                      **STAGE_TWO}
            name = f"MELD--E/two-stage/{setting}/{head}{variant}/seed={run.seed}"
            heads.setdefault(head + variant, []).append(name)
            specs.append(sweep_lib.spec(f"dataset=MELD--E,encoders=T,context={head}", run.seed, name=name,
                                        **{k.replace(".", "__"): v for k, v in fields.items()}))
    sweep_name = f"two-stage-{setting}"
    runs = sweep_lib.plan(specs, workdir, _DATA_ROOT.value, compose=compose, overrides=extra)
    print(f"sweep {sweep_name}: " + sweep_lib.format_plan(runs), flush=True)
    outcomes = sweep_lib.execute(runs, workdir, echo=lambda line: print(line, flush=True))
    sweep_lib.write_report(sweep_name, workdir, runs, outcomes)
    print(summary(setting, heads, {run.name: run for run in runs}))


def summary(setting: str, heads: dict, runs: dict) -> str:
    """Per head: dev weighted F1 of each seed, their mean and standard deviation, dev accuracy,
    minutes a seed (the first head of a seed also computes its features)."""
    lines = [f"stage one: meld-cpu {setting}", "",
             "| stage-two head | dev wF1 per seed | mean ± std | dev acc mean | minutes a seed |",
             "|---|---|---:|---:|---|"]
    for head, names in heads.items():
        scores = [sweep_report.read_scores(runs[n].run_dir) for n in names]
        done = [(runs[n].seed, s["dev"]) for n, s in zip(names, scores) if s and s["dev"]]
        if not done:
            lines.append(f"| {head} | not finished | | | |")
            continue
        wf1 = np.array([d["weighted_f1"] for _, d in done]) * 100
        acc = np.array([d["accuracy"] for _, d in done]) * 100
        minutes = [sweep_report.read_minutes(runs[n].run_dir) or 0.0 for n in names]
        lines.append(f"| {head} | " + " / ".join(f"{seed}: {v:.2f}" for (seed, _), v in zip(done, wf1))
                     + f" | {wf1.mean():.2f} ± {wf1.std():.2f} | {acc.mean():.2f} | "
                     + ", ".join(f"{m:.1f}" for m in minutes) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
