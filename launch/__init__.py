"""The command-line apps (absl), on top of the ``emojax`` library and the configs in ``configs/``.

From a checkout each runs as ``python -m launch.<name>`` in the repository root. Installed (``pip
install .``), each is also a command on the PATH, ``emojax-<name>`` (``[project.scripts]`` in
pyproject.toml: the ``<name>_main`` functions at the end of this module, named so that they
never hide the submodules), which runs the same module as
``__main__``, as ``python -m`` does: the same flags, help, output and exit status.

``configs/`` is installed as the package ``configs``, so a config path under ``configs/`` that the
working folder does not hold is read from the installed package: ``emojax-train
--config=configs/train.py:dataset=demo`` works in any folder, and so does the default of
``--config``. A file the working folder does hold is read from there, as any path is.

Every ``python -m launch.<name>`` runs this module first: it loads only the standard library
(``configs`` only when a command resolves a ``--config`` path).
"""
from __future__ import annotations

import os
import pathlib
import runpy
import sys
from typing import Optional, Sequence

CONFIGS = "configs"  # the package that holds the experiment configs, and its folder's name
# The launchers whose --config flag (an ml_collections config file) has a default, and that default.
CONFIG_DEFAULTS = {"train": "configs/train.py"}


def packaged_config(path: str, cwd: Optional[os.PathLike] = None) -> Optional[pathlib.Path]:
    """The installed file that ``path`` (``configs/...``, relative) names when ``cwd`` (default:
    the working folder) does not hold it; ``None`` for any other path."""
    relative = pathlib.PurePath(path)
    if relative.is_absolute() or relative.parts[:1] != (CONFIGS,) or len(relative.parts) < 2:
        return None
    if pathlib.Path(cwd or os.getcwd(), relative).exists():
        return None
    import configs  # only the package's own __init__: a docstring

    packaged = pathlib.Path(configs.__file__).parent.joinpath(*relative.parts[1:])
    return packaged if packaged.is_file() else None


def resolve_config_args(name: str, args: Sequence[str], cwd: Optional[os.PathLike] = None) -> list[str]:
    """``args`` of ``emojax-<name>`` with each ``--config`` file under ``configs/`` that ``cwd``
    lacks replaced by the installed one (the text after its ``:`` kept), and the default of
    ``--config`` (:data:`CONFIG_DEFAULTS`) given as such a path when no ``--config`` is."""
    out = list(args)
    given = False
    i = 0
    while i < len(out):
        arg = out[i]
        if arg == "--":  # absl: what follows is positional
            break
        flag, eq, value = arg.partition("=")
        if flag in ("--config", "-config"):
            given = True
            index = i if eq else i + 1
            if not eq:
                if index >= len(out):
                    break
                value = out[index]
            path, colon, rest = value.partition(":")
            packaged = packaged_config(path, cwd)
            if packaged is not None:
                out[index] = f"{flag}={packaged}{colon}{rest}" if eq else f"{packaged}{colon}{rest}"
            i = index
        i += 1
    default = CONFIG_DEFAULTS.get(name)
    if not given and default is not None:
        packaged = packaged_config(default, cwd)
        if packaged is not None:
            out.insert(0, f"--config={packaged}")
    return out


def _run(name: str) -> None:
    """``python -m launch.<name> ARGS`` for the command ``emojax-<name> ARGS``."""
    sys.argv[1:] = resolve_config_args(name, sys.argv[1:])
    runpy.run_module(f"{__name__}.{name}", run_name="__main__", alter_sys=True)


def train_main() -> None:
    _run("train")


def evaluate_main() -> None:
    _run("evaluate")


def infer_main() -> None:
    _run("infer")


def tool_main() -> None:
    _run("tool")


def sweep_main() -> None:
    _run("sweep")


def benchmark_main() -> None:
    _run("benchmark")
