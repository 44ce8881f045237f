"""Re-score a finished run directory on dev and test with its selected parameters.

    python -m launch.evaluate --run_dir=runs/checkpoints/training/demo/.../1a2b3c4d--0

Prints the metrics tables and writes ``evaluation.json`` beside ``results.json``. A run directory
that does not exist, is a workdir, is unfinished or has a damaged best checkpoint is reported as
one ``error:`` line.
"""
from absl import flags

from emojax.runs import checkpoint as ckpt_lib
from emojax import metrics as metrics_lib
from emojax.evaluation import load_run, score
from launch import _errors

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A run directory written by launch/train.py.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (default: found from run_dir).")


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    _errors.check_folder(_WORKDIR.value, "--workdir", must_exist=True)
    prep, eval_step, params, progress = load_run(_RUN_DIR.value, _WORKDIR.value)
    out = {"best_epoch": progress["best_epoch"]}
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
