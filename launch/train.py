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

``--print_config`` prints every field of the run config, its value and where it came from
(``default``: ``configs/default.py``; ``part=preset``: the part of ``configs/compose.py`` that set it;
``--config.x.y``: the command line; ``compose``: derived by ``configs/compose.py``), then exits
without training. ``loss.class_weights`` naming a file is read here, and the run's config holds
its numbers (so its hash and ``config.json`` name the weights, not the file).
"""
import json
import logging as std_logging

import jax
from absl import flags, logging
from ml_collections import config_flags

from configs import compose as compose_lib
from configs import default as default_lib
from emojax import config as config_lib
from emojax.model import losses as losses_lib
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
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every field of the run config with its value and where it came from (default, "
    "the part that set it, or a --config.* override), then exit without training.")


def _part_fields(part: str, preset: dict) -> list[str]:
    """The dotted config fields the preset of ``part`` sets, as ``configs/compose.py`` places them."""
    keys = [key for key, _ in config_lib.leaves(preset)]
    if part == "dataset":
        return ["dataset.name"] + [f"encoders.T.{k[5:]}" if k.startswith("text.") else f"dataset.{k}" for k in keys]
    if part == "mode":
        places = {"encoder_lr": "finetune.lr", "lora.": "finetune.lora.", "finetune.": "finetune.",
                  "text.": "encoders.T."}
        return [next((to + k[len(at):] for at, to in places.items() if k == at or (at.endswith(".") and
                                                                                    k.startswith(at))), k)
                for k in keys]
    if part == "dropout":
        return ["modality_dropout"]
    if part == "encoders":
        return ["modalities"] + [f"encoders.{k}" for k in keys]
    into = compose_lib.PARTS[part].into or {"experts": "classifier"}.get(part, part)
    preset_field = [f"{into}.preset"] if part in ("fusion", "loss", "experts") else []
    return preset_field + [f"{into}.{k}" if into else k for k in keys]


def field_sources(cfg, named: dict, overrides) -> dict[str, str]:
    """Dotted field of ``cfg`` -> where its value came from: ``--config.<field>`` (``overrides``),
    ``part=preset`` (the part that set it; ``named``: the parts the command line names, the others
    took their default preset), ``default`` (``configs/default.py``) or ``compose`` (derived by
    ``configs/compose.py``, such as an encoder's default pooling)."""
    defaults = dict(config_lib.leaves(default_lib.get_config()))
    set_by = {}
    # In the order compose() writes them: an encoders preset's text fields give way to the
    # dataset's, those to the mode's.
    order = ["encoders", "dataset", "mode"] + [p for p in cfg.parts if p not in ("encoders", "dataset", "mode")]
    for part in order:
        if part in cfg.parts:
            value = cfg.parts[part]
            label = f"{part}={value}" + ("" if part in named else " (default preset)")
            for key in _part_fields(part, compose_lib.resolve(part, value)):
                set_by[key] = label
    sources = {}
    for key, _ in config_lib.leaves(cfg):
        if key in overrides:
            sources[key] = f"--config.{key}"
        elif key.startswith("parts."):
            part = key.split(".", 1)[1]
            sources[key] = f"--config=...:{part}=" + str(cfg.parts[part]) if part in named else "default"
        elif key in set_by:
            sources[key] = set_by[key]
        else:
            sources[key] = "default" if key in defaults else "compose"
    return sources


def print_config(cfg, named: dict, overrides) -> None:
    sources = field_sources(cfg, named, overrides)
    rows = [(key, json.dumps(value, default=str)) for key, value in config_lib.leaves(cfg)]
    width = max(len(key) for key, _ in rows)
    values = max(len(value) for _, value in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:<{values}}  {sources[key]}")


def read_class_weights(cfg) -> None:
    """``loss.class_weights`` naming a file: replaced by the weights it holds (checked)."""
    weights = losses_lib.class_weights(cfg)
    given = list(cfg.loss.get("class_weights", ()) or ())
    if weights is not None and len(given) == 1 and isinstance(given[0], str):
        cfg.loss.class_weights = tuple(float(w) for w in weights)


def main(argv):
    if len(argv) > 1:
        raise _errors.UserError(f"unexpected arguments: {argv[1:]}; give options as --flag=value")
    cfg = _CONFIG.value
    validate_config(cfg)
    read_class_weights(cfg)
    if _PRINT_CONFIG.value:
        config_flag = flags.FLAGS["config"]
        arg = config_flags.get_config_filename(config_flag).partition(":")[2]
        print_config(cfg, compose_lib.parse_parts(arg), config_flags.get_override_values(config_flag))
        return
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
