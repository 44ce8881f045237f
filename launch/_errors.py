"""One line, not a traceback, for a user's mistake, in every launcher.

``run(main)`` replaces ``absl.app.run(main)``: a bad flag (an unknown ``--config.*`` key, a config
part that does not exist, a value of the wrong type), a usage mistake, or an error the library
raises about the user's input (config, dataset, checkpoint, weights, paths) ends the program with
``error: <what is wrong>; <what to do>`` on stderr and exit status 1. Anything else is a bug and
keeps its traceback.

It also keeps the libraries' routine chatter out of the output (:func:`quiet_logging`), keeps
compiled programs in JAX's persistent compilation cache so a later start does not compile them
again (:func:`use_compilation_cache`; ``--compilation_cache_dir``, ``--nocompilation_cache``), and
stops the same way on Ctrl-C and on SIGTERM (what a batch scheduler sends before it kills a job):
SIGTERM raises ``KeyboardInterrupt`` in the main thread (between two steps of Python code: a
compilation or device call under way finishes first), so the cleanup that runs on Ctrl-C runs
(files are written to a temporary name and renamed, a folder is built beside its final place,
a sweep stops its runs), and the program ends with one line, ``stopped by SIGTERM; ...``, and exit
status 143 (128 + 15); Ctrl-C ends with ``stopped by Ctrl-C (SIGINT); ...`` and the status it
always had (killed by SIGINT: 130 in a shell). Checkpoints and event files are written and
closed with both signals held (:func:`emojax.interrupts.held`), so a stop takes effect between two whole
writes. A stop that lands in a finalizer (``__del__``, where Python drops any exception) is
delivered again rather than lost, and one that comes after the program's work is done (while the
interpreter shuts down) no longer turns a finished run into a killed one.
"""
from __future__ import annotations

import errno
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

from emojax.files import folder_problem, write_problem
from emojax.progress import bars_shown


_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled programs in JAX's persistent compilation cache, so that a later "
    "start skips compiling them (--nocompilation_cache: compile every time).")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "Folder of the compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else "
    "$XDG_CACHE_HOME/emojax/jax, else ~/.cache/emojax/jax).")


class UserError(ValueError):
    """A flag's value cannot be used (a path that is a file, an output that would overwrite the
    input); the message names the flag and says what to do."""


# The library's errors about the user's input, as (module, class). A module that was never imported
# cannot have raised its error, so they are looked up among the loaded modules only: naming them
# here imports nothing, and a light command such as ``launch.tool info`` does not load JAX.
_LIBRARY_ERRORS = (
    ("emojax.config", "ConfigError"),
    ("emojax.runs.checkpoint", "CheckpointError"),
    ("emojax.data.types", "DatasetError"),
    ("emojax.data.demo", "DemoError"),
    ("emojax.encoders.hub", "WeightError"),
    ("emojax.encoders.export", "ExportError"),
    ("emojax.sweep", "SweepError"),
)


def user_errors(extra: Sequence[type[BaseException]] = ()) -> tuple[type[BaseException], ...]:
    """The exception classes reported as one line: the library's, ``extra`` and a missing file."""
    found: list[type[BaseException]] = [UserError, app.UsageError, FileNotFoundError, *extra]
    for module, name in _LIBRARY_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            found.append(getattr(loaded, name))
    return tuple(found)


def one_line(text: str) -> str:
    """``text`` on one line (a multi-line message's lines joined with ``; ``)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 1."""
    sys.exit(f"error: {one_line(message)}")


def check_folder(path: Optional[str | pathlib.Path], flag: str, *, must_exist: bool = False) -> None:
    """Refuse ``path`` for a folder flag when it, or a folder above it, is a file (or, with
    ``must_exist``, when it does not exist); checked before any work starts."""
    if path is None or str(path) == "":
        return
    path = pathlib.Path(path)
    if must_exist and not path.exists():
        raise UserError(f"{flag}: {path} does not exist; give an existing folder")
    problem = folder_problem(path)
    if problem:
        raise UserError(f"{flag}: {problem}; give a folder (it is created if missing)")


def _unknown_key_message(err: BaseException, argv: Sequence[str]) -> Optional[str]:
    """For an override of a config key that does not exist (``--config.train.epochz=3``;
    ml_collections raises KeyError / AttributeError with a "Did you mean" hint): the flag, the
    key and the hint on one line, or ``None`` when ``err`` is not that."""
    text = err.args[0] if err.args else ""
    while isinstance(text, BaseException):
        text = text.args[0] if text.args else ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return None
    key = lines[0].strip("'\"")
    if not key or " " in key:
        return None
    hint = " ".join(lines[1:]).replace("Did you mean", "did you mean")
    flag = next((arg for arg in argv if arg.startswith("--") and "." in arg.split("=", 1)[0]
                 and key in arg.split("=", 1)[0].lstrip("-").split(".")[1:]), None)
    where = flag or "a --config override"
    return (f"{where}: unknown config key {key!r}; " + (hint if hint else "see configs/train.py for the keys"))


def _flag_error_message(err: flags.Error) -> str:
    """A flag error in one line. A config file that raised while being read is reported by absl
    with the whole traceback inside the message: keep the flag and the exception's own line."""
    text = str(err).removeprefix("flag ")
    if "Traceback (most recent call last)" not in text:
        return one_line(text)
    head = text.split(": Error whilst", 1)[0] if ": Error whilst" in text else "--config"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if not line.startswith("Pass --help")), lines[-1])
    # "emojax.config.ConfigError: unknown config part ..." -> "unknown config part ..."
    exception, sep, message = last.partition(": ")
    if sep and " " not in exception:
        last = message
    return f"{head}: {last}"


def parse_flags(argv: list[str]) -> list[str]:
    """``absl.flags`` parsing with a bad flag reported as one line (absl's default prints the usage
    and, for a config file, an embedded traceback)."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as err:
        fail(_flag_error_message(err))
    except (KeyError, AttributeError) as err:
        message = _unknown_key_message(err, argv)
        if message is None:
            raise
        fail(message)
    for name in list(flags.FLAGS):
        value = flags.FLAGS[name].value
        # ml_collections defers a config file that cannot be loaded to the first use of the
        # config (deep inside the program); report it now.
        if type(value).__name__ == "_ErrorConfig":
            lines = [line.strip() for line in str(value.__dict__.get("_error", "")).splitlines() if line.strip()]
            fail(f"--{name}: cannot load the config file ({lines[-1] if lines else 'unknown error'}); "
                 "give e.g. --config=configs/train.py:key=value,... from the repository root")
    return remaining


# Loggers whose INFO lines say nothing a user acts on: Orbax (through absl's logger) reports every
# checkpoint manager it creates and every read; JAX reports each accelerator backend it did not
# find ("Unable to initialize backend 'tpu'") and the platform it fell back to;
# emojax.runs.store reports each encoder it writes into the store (bookkeeping); matplotlib, the
# font cache it builds on its first use on a machine.
_CHATTY_LOGGERS = {"absl": logging.WARNING, "orbax": logging.WARNING, "jax._src.xla_bridge": logging.ERROR,
                   "emojax.runs.store": logging.WARNING, "matplotlib.font_manager": logging.WARNING}


def quiet_logging() -> None:
    """Keep the chatter of :data:`_CHATTY_LOGGERS` out of the output, unless the user asked for a
    log level (``--verbosity`` / ``-v``): then every line stays. The program's own warnings and
    progress lines are untouched, and which devices JAX uses is not changed."""
    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    for name, level in _CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if bars_shown():
        # On a terminal each modality and split of the feature extraction draws a progress bar
        # that says what its INFO line says; in a log file (no bars) the lines stay.
        logging.getLogger("emojax.features.featurizer").setLevel(logging.WARNING)
    # transformers prints, when it is imported (the encoders import it on first use), that PyTorch
    # was not found: emojax uses it for tokenizers and preprocessors only.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# A program that compiles in less than this many seconds is compiled again rather than cached.
# JAX's default (1 s) would leave out nearly all of a run's programs, which compile in well under a
# second each; reading one back takes a fraction of its compile time, so every program is cached.
MIN_CACHED_COMPILE_SECONDS = 0.0
_FALSE = ("0", "false", "no", "off")


def default_compilation_cache_dir(environ=None) -> pathlib.Path:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``emojax/jax`` in the user's cache folder
    (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return pathlib.Path(environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "emojax" / "jax"


def use_compilation_cache(enabled: bool = True, folder: Optional[str | pathlib.Path] = None) -> Optional[pathlib.Path]:
    """Keep compiled programs in JAX's persistent compilation cache in ``folder`` (default
    :func:`default_compilation_cache_dir`), or turn the cache off; returns the folder used, or
    ``None`` when off. ``JAX_ENABLE_COMPILATION_CACHE=false`` in the environment turns it off too.

    Set in JAX's config when JAX is loaded, and in this process's environment, which JAX reads
    when it is imported later (``launch.tool`` loads it on demand) and which the programs this one
    starts (a sweep's runs) inherit. Launchers only: the library sets no process-wide option."""
    if os.environ.get("JAX_ENABLE_COMPILATION_CACHE", "").strip().lower() in _FALSE:
        enabled = False
    path = None
    if enabled and folder:
        path = pathlib.Path(folder).expanduser()
        problem = write_problem(path)
        if problem:
            raise UserError(f"--compilation_cache_dir: {problem}; give a folder you can write (it is created if "
                            "missing), or --nocompilation_cache")
    elif enabled:  # the default folder: a cache that cannot be written there is only a missed speed-up
        path = default_compilation_cache_dir()
        enabled = write_problem(path) is None
    settings = {"JAX_ENABLE_COMPILATION_CACHE": "true" if enabled else "false"}
    if enabled:
        settings["JAX_COMPILATION_CACHE_DIR"] = str(path)
        settings["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = os.environ.get(
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_CACHED_COMPILE_SECONDS))
    os.environ.update(settings)
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_enable_compilation_cache", enabled)
        if enabled:
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_compile_time_secs",
                              float(settings["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    return path if enabled else None


def guarded(main: Callable[[list[str]], None],
            extra: Sequence[type[BaseException]] = ()) -> Callable[[list[str]], None]:
    """``main`` with the user errors (:func:`user_errors`) reported as one line."""
    def wrapper(argv: list[str]) -> None:
        quiet_logging()
        try:
            if flags.FLAGS.is_parsed():  # parsed by run(); a caller of guarded() alone may not have
                use_compilation_cache(_COMPILATION_CACHE.value, _COMPILATION_CACHE_DIR.value)
            return main(argv)
        except user_errors(extra) as err:
            fail(str(err))
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            # The disk, not the program: every file is written aside and renamed, so what was
            # there is intact; the user frees space (or remounts) and starts the same command.
            fail(f"{err.filename or 'a file'}: {err.strerror}; every file written before is intact: free space "
                 "(or make the folder writable) and start the same command again to go on")

    return wrapper


# The signal that stopped the program, once one has (SIGTERM: set by its handler).
_STOPPED_BY: list[int] = []


def _on_sigterm(signum, frame) -> None:
    """SIGTERM handled as Ctrl-C: ``KeyboardInterrupt`` in the main thread. A SIGTERM while the
    program is already stopping (a scheduler that signals every process of a job, and a sweep
    that forwards it to its runs) is ignored, so the cleanup it started runs to its end."""
    if _STOPPED_BY:
        return
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


_REDELIVER_SECONDS = 0.05


def _redeliver_dropped_stops(hook):
    """``sys.unraisablehook`` that delivers again a stop Python dropped: a ``KeyboardInterrupt``
    raised in a finalizer (``__del__``, a weakref callback) cannot propagate, so the signal it
    stood for is raised anew in the main thread, quietly; anything else goes to ``hook``."""
    def unraisablehook(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            return hook(unraisable)
        signum = _STOPPED_BY.pop() if _STOPPED_BY else signal.SIGINT
        # Sent to the main thread a moment later, from another: handled here, in the finalizer's
        # frame, it would be dropped again. A real signal, so a sleep or a wait under way ends.
        later = threading.Timer(_REDELIVER_SECONDS, signal.pthread_kill, (threading.main_thread().ident, signum))
        later.daemon = True
        later.start()

    return unraisablehook


def handle_sigterm() -> None:
    """Install the SIGTERM handler (:func:`_on_sigterm`) and the hook that delivers again a stop
    dropped in a finalizer (:func:`_redeliver_dropped_stops`); from the main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        sys.unraisablehook = _redeliver_dropped_stops(sys.unraisablehook)


def _quiet_interrupt(hook):
    """``sys.excepthook`` that prints nothing for ``KeyboardInterrupt`` (its line was printed)."""
    def excepthook(kind, value, traceback):
        if not issubclass(kind, KeyboardInterrupt):
            hook(kind, value, traceback)

    return excepthook


def stopped() -> NoReturn:
    """End a program that a signal stopped, with one line on stderr: exit status 143 for SIGTERM;
    for Ctrl-C the interpreter's own ending (killed by SIGINT, after its exit handlers ran)."""
    sigterm = bool(_STOPPED_BY)
    name = "SIGTERM" if sigterm else "Ctrl-C (SIGINT)"
    sys.stdout.flush()
    print(f"stopped by {name}; what was finished is kept: start the same command again to resume",
          file=sys.stderr, flush=True)
    if sigterm:
        sys.exit(128 + signal.SIGTERM)
    sys.excepthook = _quiet_interrupt(sys.excepthook)
    raise KeyboardInterrupt


def run(main: Callable[[list[str]], None], extra: Sequence[type[BaseException]] = ()) -> None:
    """``absl.app.run(main)`` with every user error, from the flags on, reported as one line, and
    SIGTERM handled as Ctrl-C (:func:`handle_sigterm`), either ending in one line (:func:`stopped`)."""
    handle_sigterm()
    try:
        app.run(guarded(main, extra), flags_parser=parse_flags)
    except KeyboardInterrupt:
        stopped()
    except SystemExit as done:
        if done.code in (None, 0):
            # The work is done and written: a SIGTERM while the interpreter shuts down (which gives
            # the signal back its default action) would report a finished program as killed.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
