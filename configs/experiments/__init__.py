"""Sweeps: one module per sweep, each with ``get_sweep()`` returning its run specs.

A sweep's name is its module path with ``/`` for dots and ``-`` for underscores:
``baseline/unimodal`` is ``baseline/unimodal.py``, ``mdn-ablation`` is ``mdn_ablation.py``. Run one
with ``python -m launch.sweep --sweep=mdn``; ``emojax.sweep.spec`` builds a spec, and the module
docstring of ``emojax.sweep`` describes the fields. The seeds are those of the PyTorch suite's
experiment files (0, 42, 114); the per-config tables report mean and standard deviation over them.
"""
