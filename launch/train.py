r"""Train and evaluate one run.

    python -m launch.train \
      --config=configs/train.py:dataset=MELD--E,encoders=T+A+V,loss=focal \
      --config.seed=114 --config.dataset.path=datasets/MELD --workdir=runs

Prints the dev and test metrics of the epoch selected on dev; the last line printed is the run
directory. ``--teacher=RUN_DIR`` distils a finished (text) run into this one in the same training
run (``loss=...+dist``); the teacher's dev and test scores are printed first. Started again with the
same config, a killed run resumes from its last epoch.

One run directory is trained by one process at a time: a second identical command is refused with
the first one's pid. A mistake in the flags, config or paths is reported as one ``error:`` line
before any work starts.
"""
import logging as std_logging

import jax
from absl import flags, logging
from ml_collections import config_flags

from emojax import config as config_lib
from emojax.training import distributed
from emojax.runs.checkpoint import finished_run
from emojax.training.loop import fit
from emojax.training.plan import validate_config
from launch import _errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/train.py", "Run config: configs/train.py:key=value,... (see configs/train.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Folder for checkpoints and the feature cache.")
_TEACHER = flags.DEFINE_string(
    "teacher", None, "A finished run directory (e.g. a text-only run) to distil from: the run goes under "
    "checkpoints/distillation/ and needs the dist loss (loss=focal+dist).")


_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-host run (jax.distributed): with no other flag the cluster is detected "
    "(SLURM, Open MPI, cloud TPU/GPU); otherwise give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (0 writes the files), for --distributed.")


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    cfg = _CONFIG.value
    validate_config(cfg)
    _errors.check_folder(_WORKDIR.value, "--workdir")
    if _TEACHER.value is not None:
        finished_run(_TEACHER.value)
    if _DISTRIBUTED.value:
        try:
            distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        except (RuntimeError, ValueError) as err:
            _errors.fail(str(err))
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    logging.info("run: %s", config_lib.run_label(cfg))
    run_dir = fit(cfg, _WORKDIR.value, teacher=_TEACHER.value)
    if jax.process_index() != 0:
        return
    print((run_dir / "metrics.md").read_text() if (run_dir / "metrics.md").exists()
          else "training stopped before the run finished; start the same command again to resume")
    print(run_dir)


if __name__ == "__main__":
    _errors.run(main)
