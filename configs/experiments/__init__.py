"""Sweeps: one module per sweep, each with ``get_sweep()`` returning its run specs.

A sweep's name is its module path with ``/`` for dots and ``-`` for underscores:
``baseline/unimodal`` is ``baseline/unimodal.py``, ``mdn-ablation`` is ``mdn_ablation.py``. Run one
with ``python -m launch.sweep --sweep=mdn``, or in Python::

    from configs.compose import compose
    from configs.experiments import load_sweep
    from emojax import sweep
    runs = sweep.plan(load_sweep("mdn"), "runs", compose=compose)

``emojax.sweep.spec`` builds a spec, and the module docstring of ``emojax.sweep`` describes the
fields. The seeds are those of the PyTorch suite's experiment files (0, 42, 114); the per-config
tables report mean and standard deviation over them.
"""
import importlib
import pkgutil

from emojax.sweep import SweepError

_PREFIX = __name__ + "."


def sweep_module_name(name: str) -> str:
    """``baseline/unimodal`` -> ``configs.experiments.baseline.unimodal``; ``mdn-ablation`` -> ``...mdn_ablation``."""
    return _PREFIX + name.strip("/").replace("/", ".").replace("-", "_")


def available_sweeps() -> list[str]:
    """The sweep names in this folder (``baseline/unimodal``, ``mdn``, ...)."""
    names = []
    for info in pkgutil.walk_packages(__path__, prefix=_PREFIX):
        if info.ispkg:
            continue
        module = importlib.import_module(info.name)
        if callable(getattr(module, "get_sweep", None)):
            names.append(info.name[len(_PREFIX):].replace(".", "/").replace("_", "-"))
    return sorted(names)


def load_sweep(name: str) -> list[dict]:
    """The run specs of the sweep ``name`` (its module's ``get_sweep()``)."""
    module_name = sweep_module_name(name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise SweepError(f"unknown sweep {name!r} (no module {module_name}); "
                             f"sweeps: {', '.join(available_sweeps())}") from None
        raise
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"sweep {name!r}: {module_name} has no get_sweep() function")
    return list(module.get_sweep())
