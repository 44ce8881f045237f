"""emojax installed from its wheel, as ``pip install .`` installs it: the commands on the PATH, the
packaged configs, a sweep's run command; and the ``--config`` paths the installed commands read."""
import ast
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

import launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = ("train", "evaluate", "infer", "tool", "sweep", "benchmark")


# -- --config paths of the installed commands -----------------------------------------------------

def test_config_path_missing_here_is_read_from_the_package(tmp_path):
    # The package is the checkout's configs/ here (pytest puts the repository root on the path).
    args = launch.resolve_config_args("train", ["--config=configs/train.py:dataset=demo,encoders=T",
                                                "--config.train.epochs=1", "--workdir=runs"], cwd=tmp_path)
    assert args == [f"--config={ROOT / 'configs' / 'train.py'}:dataset=demo,encoders=T", "--config.train.epochs=1",
                    "--workdir=runs"]
    spaced = launch.resolve_config_args("benchmark", ["--config", "configs/train.py:dataset=demo"], cwd=tmp_path)
    assert spaced == ["--config", f"{ROOT / 'configs' / 'train.py'}:dataset=demo"]


def test_config_default_is_read_from_the_package_for_train_only(tmp_path):
    assert launch.resolve_config_args("train", ["--workdir=runs"], cwd=tmp_path) == [
        f"--config={ROOT / 'configs' / 'train.py'}", "--workdir=runs"]
    for name in ("benchmark", "evaluate", "sweep"):
        assert launch.resolve_config_args(name, ["--run=r"], cwd=tmp_path) == ["--run=r"]


def test_config_paths_left_as_given(tmp_path):
    mine = tmp_path / "configs" / "train.py"
    mine.parent.mkdir()
    mine.write_text("def get_config(arg=None):\n    return {}\n")
    kept = [["--config=configs/train.py:dataset=demo"],   # the working folder holds it: a path is a path
            [f"--config={ROOT / 'configs' / 'train.py'}:dataset=demo"],  # absolute
            ["--config=my/train.py"],                          # not under configs/
            ["--config=configs/nope.py"],                      # in neither (ml_collections names it)
            ["--", "--config=configs/train.py"],               # positional after --
            ["--config.train.epochs=1", "--config=configs/"]]  # an override; a folder
    for args in kept:
        assert launch.resolve_config_args("evaluate", args, cwd=tmp_path) == args, args
    assert launch.resolve_config_args("train", [], cwd=tmp_path) == []  # its default is here


def _config_defaults() -> dict[str, str]:
    """launcher -> the default of its ``--config`` file flag, read from launch/*.py."""
    found = {}
    for path in sorted((ROOT / "launch").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "DEFINE_config_file" and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value is not None):
                found[path.stem] = node.args[1].value
    return found


def test_config_defaults_match_the_launchers():
    assert _config_defaults() == launch.CONFIG_DEFAULTS


# -- the wheel in a fresh environment --------------------------------------------------------------

def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    """The wheel ``pip install .`` builds, from a copy of the checkout's sources (building in the
    checkout would leave build/ and *.egg-info there)."""
    if int(importlib.metadata.version("setuptools").split(".")[0]) < 77:
        pytest.fail("the build backend, setuptools>=77, is not installed: pip install -e '.[test]'")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(ROOT / name, source / name)
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*.")
        shutil.copytree(ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(dist), str(source)], check=True, env=_pip_env(), timeout=300)
    (wheel,) = dist.glob("emojax-*.whl")
    return wheel


def _pip_env() -> dict[str, str]:
    """No pip configuration files (indexes, find-links) and no PYTHONPATH leading to the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PIP_")}
    return dict(env, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")


def _fresh_venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """A new virtual environment that sees this environment's third-party packages (through a
    ``.pth`` file naming a folder of links to them) but not its emojax: no editable-install hook,
    no emojax metadata, no configs or launch. Returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = pathlib.Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                          check=True, capture_output=True, text=True).stdout.strip())
    links = tmp_path / "third-party"
    links.mkdir()
    for site in dict.fromkeys(pathlib.Path(sysconfig.get_path(kind)) for kind in ("purelib", "platlib")):
        for entry in site.iterdir():
            name = entry.name.lower()
            if (name.startswith(("emojax", "__editable__")) or name.endswith(".pth")
                    or entry.stem in ("configs", "launch") or (links / entry.name).exists()):
                continue
            (links / entry.name).symlink_to(entry)
    (purelib / "third-party.pth").write_text(f"{links}\n")
    return python


# Run in the fresh environment: where each package comes from, the demo set (small), and the
# command a sweep starts for its first demo run, pointed at a file as its workdir.
_PREPARE = r"""
import importlib.metadata, json, os, sys, sysconfig
import configs, emojax, launch
from configs.compose import compose
from configs.experiments import load_sweep
from emojax import sweep
from emojax.data.demo import generate_demo
from launch import _commands

data_root, blocked = sys.argv[1:3]
generate_demo(os.path.join(data_root, "demo"), seed=0, sizes={"train": 28, "dev": 14, "test": 14})
run = sweep.plan(load_sweep("demo"), "runs", data_root, compose=compose)[0]
print(json.dumps({
    "purelib": sysconfig.get_path("purelib"),
    "files": {m.__name__: m.__file__ for m in (emojax, configs, launch)},
    "metadata": [str(d.locate_file("")) for d in importlib.metadata.distributions() if d.metadata["Name"] == "emojax"],
    "child": _commands.train_command(run, blocked), "child_env": _commands.checkout_env(),
}))
"""


@pytest.mark.slow
def test_installed_wheel_trains_evaluates_and_infers(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {name.split("/")[0] for name in names}
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {top for top in tops if not top.endswith(".dist-info")} == {"emojax", "configs", "launch"}
    assert "configs/experiments/demo.py" in names and "launch/train.py" in names
    assert sorted(line for line in entry_points.splitlines() if line.startswith("emojax-")) == sorted(
        f"emojax-{name} = launch:{name}_main" for name in COMMANDS)

    python = _fresh_venv(tmp_path)
    env = _pip_env()
    install = subprocess.run([python, "-m", "pip", "install", "--no-index", str(wheel)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    bin_dir = python.parent
    assert all((bin_dir / f"emojax-{name}").is_file() for name in COMMANDS)

    work = tmp_path / "work"  # no configs/ here: the installed commands read the packaged configs
    work.mkdir()
    blocked = work / "a-file"
    blocked.write_text("")
    prepare = subprocess.run([python, "-c", _PREPARE, "data", str(blocked)], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    found = json.loads(prepare.stdout.strip().splitlines()[-1])
    purelib = pathlib.Path(found["purelib"])
    assert purelib.is_relative_to(tmp_path / "venv")
    for module, file in found["files"].items():  # the installed copies, not the checkout's
        assert pathlib.Path(file).parent == purelib / module, (module, file)
    assert [pathlib.Path(p) for p in found["metadata"]] == [purelib]

    # A sweep's run as the installed sweep starts it: the child finds launch.train and the packaged
    # config, and stops at the flag that is wrong.
    child = subprocess.run(found["child"], cwd=work, env=dict(env, **found["child_env"]), capture_output=True,
                           text=True, timeout=300)
    assert found["child"][:3] == [str(python), "-m", "launch.train"]
    assert found["child"][3].startswith(f"--config={purelib / 'configs' / 'train.py'}:dataset=demo")
    assert child.returncode == 1 and child.stderr.strip().splitlines()[-1].startswith("error: --workdir:"), \
        child.stderr[-2000:]

    # The installed command is `python -m launch.<name>`: the same help (the module's docstring and
    # flags) and exit status; the tool's, which loads no JAX.
    installed, module = (subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)
                         for argv in ([bin_dir / "emojax-tool", "--helpshort"],
                                      [python, "-m", "launch.tool", "--helpshort"]))
    assert "launch.tool info" in installed.stdout and f"{purelib / 'launch' / 'tool.py'}:" in installed.stdout
    assert (installed.returncode, installed.stdout, installed.stderr) == (module.returncode, module.stdout,
                                                                          module.stderr)

    def command(name, *args):
        done = subprocess.run([bin_dir / f"emojax-{name}", *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"emojax-{name}: {done.stderr[-3000:]}"
        return done.stdout

    out = command("train", "--config=configs/train.py:dataset=demo,encoders=T+A+V,fusion=vallina,loss=ce",
                  "--config.dataset.path=data/demo", "--config.dataset.generate=False", "--config.train.epochs=1",
                  "--config.progress=False", "--workdir=runs")
    run_dir = work / out.strip().splitlines()[-1]
    assert run_dir.relative_to(work / "runs").parts[:5] == ("checkpoints", "training", "demo", "frozen--32--ce",
                                                            "1xE--T+A+V")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["best_epoch"] == 1

    command("evaluate", f"--run_dir={run_dir}")
    rescored = json.loads((run_dir / "evaluation.json").read_text())
    for split in ("dev", "test"):
        assert rescored[split]["accuracy"] == results[split]["accuracy"]
        assert rescored[split]["weighted_f1"] == results[split]["weighted_f1"]

    audio = sorted((work / "data" / "demo" / "audios" / "test").glob("*.flac"))[0]
    lines = command("infer", f"--run_dir={run_dir}", "--text=Oh my God, you did it!", f"--audio={audio}") \
        .strip().splitlines()
    rows = [line.split() for line in lines[:-1]]
    assert sorted(name for name, _ in rows) == sorted(["neutral", "joy", "surprise", "anger", "sadness", "disgust",
                                                       "fear"])
    assert abs(sum(float(p) for _, p in rows) - 1.0) < 1e-3
    assert lines[-1] == f"predicted: {rows[0][0]}"

    listed = [line for line in command("tool", "info", "--workdir=runs").splitlines()
              if line.rstrip().endswith(str(run_dir.relative_to(work / "runs")))]
    assert len(listed) == 1 and " finished " in listed[0]
