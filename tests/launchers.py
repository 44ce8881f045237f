"""Launcher commands (``python -m launch.<name> ARGS``) as the tests run them, two ways:

``fresh``: a new interpreter, as a user's shell starts it.

``LauncherServer.run``: a child forked from a server process that imported the heavy libraries
(JAX, Flax, Orbax, transformers, emojax) once and started no JAX backend, so no thread, before
forking. The child sets ``sys.argv``, runs the launcher module as ``__main__`` (``runpy``) and
exits with the status the interpreter would give: a command that stops on a user's mistake costs
a fork instead of the seconds of the imports. Its stdout and stderr are those of the command.

Both return a ``subprocess.CompletedProcess``. The server protocol is one JSON line each way per
command: the request ``{"module", "argv", "cwd", "out", "err"}``, then ``{"pid"}`` once forked and
``{"returncode"}`` once the child is reaped.
"""
from __future__ import annotations

import json
import os
import pathlib
import select
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Imported by the server before it forks (each if it exists): what the launchers spend their
# start-up on. No launch.* module: they define absl flags, which each command defines afresh.
PRELOAD = ("jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "ml_collections.config_flags",
           "absl.app", "absl.flags", "transformers", "matplotlib.figure", "configs.compose",
           "emojax.training.loop", "emojax.training.evaluation", "emojax.inference", "emojax.benchmark", "emojax.sweep",
           "emojax.runs.store", "emojax.inference.standalone")

_SERVER = r"""
import importlib, json, os, runpy, sys, traceback
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
requests, replies = sys.stdin, sys.stdout
for line in requests:
    request = json.loads(line)
    replies.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            for fd, target in ((null, 0), (out, 1), (err, 2)):
                os.dup2(fd, target)
            sys.stdin = open(0, closefd=False)
            sys.argv = [request["module"], *request["argv"]]
            try:
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as stop:
                # What the interpreter does with an uncaught SystemExit.
                if stop.code is None:
                    code = 0
                elif isinstance(stop.code, int):
                    code = stop.code
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout on ``PYTHONPATH`` (configs/ and launch/ are
    not installed), plus ``extra``."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def host_devices_env(devices: int, **extra: str) -> dict[str, str]:
    """:func:`checkout_env` for a program on ``devices`` CPU devices: this process's ``XLA_FLAGS``
    (the suite's compile settings, see conftest.py) kept, a device count in them replaced."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return checkout_env(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", **extra)


def fresh(name: str, *args, timeout: float = 600, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    """``python -m launch.<name> ARGS`` in a new interpreter."""
    return subprocess.run([sys.executable, "-m", f"launch.{name}", *map(str, args)], cwd=cwd,
                          env=env if env is not None else checkout_env(), capture_output=True, text=True,
                          timeout=timeout)


class LauncherServer:
    """Forks launcher commands from one pre-loaded process (see the module docstring)."""

    def __init__(self, scratch: pathlib.Path | None = None):
        self.scratch = pathlib.Path(scratch or tempfile.mkdtemp(prefix="launchers-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.process = subprocess.Popen([sys.executable, "-c", _SERVER, *PRELOAD], cwd=ROOT, env=checkout_env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher server exited (status {self.process.poll()})")
        return json.loads(line)

    def run(self, name: str, *args, timeout: float = 600, cwd=ROOT) -> subprocess.CompletedProcess:
        """``python -m launch.<name> ARGS``, forked from the server."""
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        argv = [str(a) for a in args]
        request = {"module": f"launch.{name}", "argv": argv, "cwd": str(cwd), "out": str(out), "err": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = self._reply(timeout=120)["pid"]
        try:
            code = self._reply(timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, 9)
            self._reply(timeout=60)
            raise subprocess.TimeoutExpired([f"launch.{name}", *argv], timeout) from None
        return subprocess.CompletedProcess([f"launch.{name}", *argv], code, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
