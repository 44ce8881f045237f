"""JAX's persistent compilation cache in the launchers: a program compiled by one start is read
back by the next (``launch._errors.run``); ``--compilation_cache_dir`` and ``--nocompilation_cache``
choose the folder or turn it off; the library sets no JAX option when it is imported."""
import os
import pathlib
import subprocess
import sys

import pytest

from launch import _errors

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A launcher that compiles one program through launch._errors.run, as every launcher does.
PROGRAM = """
import jax, jax.numpy as jnp
from launch import _errors

def main(argv):
    print(float(jax.jit(lambda x: jnp.sin(x) @ x.T + jnp.cos(x).sum())(jnp.ones((32, 32))).sum()))

_errors.run(main)
"""


def _launch(tmp_path, *flags, environ=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(PYTHONPATH=str(ROOT), JAX_LOG_COMPILES="1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               **(environ or {}))
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    done = subprocess.run([sys.executable, str(script), *flags], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _entries(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_default_folder_follows_the_environment(tmp_path):
    home = pathlib.Path.home()
    assert _errors.default_compilation_cache_dir({}) == home / ".cache" / "emojax" / "jax"
    assert _errors.default_compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "emojax" / "jax"
    assert _errors.default_compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path),
                                                  "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "j")}) == tmp_path / "j"


def test_second_start_reads_the_compiled_program(tmp_path):
    cache = tmp_path / "compiled"
    first = _launch(tmp_path, f"--compilation_cache_dir={cache}")
    assert "Persistent compilation cache hit" not in first.stderr
    written = _entries(cache)
    assert written, first.stderr[-2000:]
    second = _launch(tmp_path, f"--compilation_cache_dir={cache}")
    assert "Persistent compilation cache hit" in second.stderr
    assert second.stdout == first.stdout and _entries(cache) == written


@pytest.mark.slow
def test_default_folder_and_off_switch(tmp_path):
    xdg = tmp_path / "xdg"
    _launch(tmp_path, environ={"XDG_CACHE_HOME": str(xdg)})
    assert _entries(xdg / "emojax" / "jax")
    off = tmp_path / "off"
    done = _launch(tmp_path, "--nocompilation_cache", environ={"XDG_CACHE_HOME": str(off)})
    assert "Persistent compilation cache hit" not in done.stderr and not _entries(off)


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    script = tmp_path / "program.py"
    script.write_text("from launch import _errors\n_errors.run(lambda argv: print('ran'))\n")
    done = subprocess.run([sys.executable, str(script), f"--compilation_cache_dir={tmp_path / 'file'}"],
                          env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "ran" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        f"error: --compilation_cache_dir: {tmp_path / 'file'} is a file, not a folder; give a folder you can write "
        "(it is created if missing), or --nocompilation_cache"]


@pytest.mark.slow
def test_library_sets_no_jax_option_on_import(tmp_path):
    """Importing the library (its training, inference and sweep entry points) leaves JAX's
    compilation cache options and the environment as they were: only launchers set them."""
    code = ("import os, jax\n"
            "before = dict(os.environ)\n"
            "import emojax.training.loop, emojax.training.evaluation, emojax.inference.estimator, emojax.sweep\n"
            "import emojax.benchmark, emojax.runs.store\n"
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,"
            " dict(os.environ) == before)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    done = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "1.0", "True"]
