"""Sweeps: many runs described as data, ordered, run (one by one or several at once) and tabulated.

A sweep is a list of run specs, plain dicts (the repository's sweeps are the ``get_sweep()``
functions of ``configs/experiments/``, loaded by ``configs.experiments.load_sweep``)::

    {"name": "MELD--E/T+A+V/DF-1.0+attn/focal+dist/seed=0",
     "parts": "dataset=MELD--E,encoders=T+A+V,fusion=DF-1.0+attn,loss=focal+dist",
     "overrides": {"seed": 0},                  # dotted config fields
     "category": "distillation",                # or "training"
     "teacher": "MELD--E/T/focal/seed=0"}       # the name of another spec, or None

:func:`spec` builds one with a readable name. From the specs, :func:`plan` composes every config
with the ``compose`` it is given (``parts`` string -> ``ConfigDict``; the repository's is
``configs.compose.compose``), sets ``dataset.path`` = ``data_root/<the dataset's folder>``, then
the spec's overrides, then the command line's, checks it, places each run
(``emojax.config.run_dir``) and orders them so every teacher comes before its students.
:func:`execute` runs them: in this process through ``emojax.training.fit`` (one after another), or
as subprocesses (the ``command`` it is given; ``launch.sweep`` starts ``python -m launch.train``),
N at a time, each pinned to a GPU with ``CUDA_VISIBLE_DEVICES``. A finished run (``results.json``) is
skipped, an interrupted one resumes (``fit`` does that), a failed one is recorded with its error
and its students are skipped with the reason. :func:`aggregate` and :func:`format_report` turn the
runs' ``results.json`` into a table: per config (everything but the seed), the mean and standard
deviation over seeds of dev/test accuracy and weighted F1.

    specs.py     run specs and their checks
    planning.py  specs -> composed, checked, placed configs, teachers first
    execution.py running them, here or as subprocesses
    report.py    the results table over seeds
"""
from __future__ import annotations

from emojax.sweep.specs import OK, SEEDS, SweepError, check_specs, part_values, spec
from emojax.sweep.planning import (Run, build_run, dataset_folder, format_plan, parse_assignments, plan, run_status,
                                  set_field)
from emojax.sweep.execution import Outcome, execute
from emojax.sweep.report import (METRICS, SPLITS, aggregate, collect, format_report, read_minutes, read_scores,
                                 report_paths, write_report)

__all__ = [
    "METRICS", "OK", "Outcome", "Run", "SEEDS", "SPLITS", "SweepError", "aggregate", "build_run",
    "check_specs", "collect", "dataset_folder", "execute", "format_plan", "format_report",
    "parse_assignments", "part_values", "plan", "read_minutes", "read_scores", "report_paths", "run_status",
    "set_field", "spec", "write_report",
]
