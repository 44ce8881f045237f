"""Command lines of the launchers, for the programs that start them as subprocesses (a sweep's
runs, ``python -m launch.sweep --parallel=N``). No flags are defined here, so any program may
import it."""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the checkout: configs/ and launch/ beside emojax/


def train_command(run, workdir, teacher_dir: Optional[pathlib.Path] = None) -> list[str]:
    """The ``python -m launch.train`` command line of a sweep's run (``emojax.sweep.Run``): its
    parts and overrides rebuild the run's config, hence its run directory."""
    argv = [sys.executable, "-m", "launch.train", f"--config={ROOT / 'configs' / 'train.py'}:{run.parts}"]
    for key, value in run.overrides.items():
        argv.append(f"--config.{key}={value}")
    argv.append(f"--workdir={pathlib.Path(workdir).absolute()}")
    if teacher_dir is not None:
        argv.append(f"--teacher={pathlib.Path(teacher_dir).absolute()}")
    return argv


def checkout_env() -> dict[str, str]:
    """The environment a launcher subprocess needs beside this process's: the checkout on
    ``PYTHONPATH`` (``configs`` and ``launch`` are not installed with the package), whatever the
    working directory."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
