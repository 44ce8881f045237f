"""Re-score a finished run directory on dev and test with its selected parameters.

    python -m launch.evaluate --run_dir=runs/checkpoints/training/demo/.../1a2b3c4d--0

Prints the metrics tables and writes ``evaluation.json`` beside ``results.json``. A run directory
that does not exist, is a workdir, is unfinished, has a damaged best checkpoint, cannot be
written, or whose ``config.json`` was edited since training is reported as one ``error:`` line
before anything is scored. So is data that differs from what the run recorded (``data.json``: a
CSV edited, a media file replaced): ``--allow_data_change`` scores the data as it is now, and
``evaluation.json`` then says so.
"""
import pathlib

from absl import flags

from emojax.runs import checkpoint as ckpt_lib
from emojax import metrics as metrics_lib
from emojax.training.evaluation import load_run, score
from emojax.files import write_problem
from launch import _errors

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A run directory written by launch/train.py.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (default: found from run_dir).")
_ALLOW_DATA_CHANGE = flags.DEFINE_bool("allow_data_change", False, "Score the dataset as it is now even where it "
                                       "differs from the run's data record (data.json).")


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    _errors.check_folder(_WORKDIR.value, "--workdir", must_exist=True)
    run_dir = pathlib.Path(_RUN_DIR.value)
    if run_dir.is_dir():
        problem = write_problem(run_dir)
        if problem:
            raise _errors.UserError(f"--run_dir: {problem}; evaluation.json is written there: make the run "
                                    "directory writable, or score a copy (python -m launch.tool create-standalone)")
    allow = _ALLOW_DATA_CHANGE.value
    if allow:
        print("note: --allow_data_change: scoring the data as it is now, which may differ from the run's")
    prep, eval_step, params, progress = load_run(run_dir, _WORKDIR.value, allow_data_change=allow)
    out = {"best_epoch": progress["best_epoch"]}
    if allow:
        out["data_changed_allowed"] = True
    for split in ("dev", "test"):
        if split not in prep.features:
            print(f"{split}: not scored (no {split} split in {prep.cfg.dataset.path})")
            out[split] = {"scored": False}
            continue
        scores = score(eval_step, params, prep.features[split], len(prep.class_names),
                       int(prep.cfg.train.eval_batch_size))
        out[split] = {"scored": True, **scores}
        print(metrics_lib.format_table(scores, prep.class_names, title=split))
        print()
    ckpt_lib.write_json_atomic(prep.run_dir / "evaluation.json", out)


if __name__ == "__main__":
    _errors.run(main)
