"""Ctrl-C and SIGTERM held back while a checkpoint or an event file is being written.

Python delivers a signal to its handler between two steps of the main thread's Python code,
wherever that is: a ``KeyboardInterrupt`` raised inside Orbax's save (on its own event loop and
worker threads) or inside tensorboardX's close leaves their threads half-stopped, and the program
then prints their tracebacks as it exits, fails on a second close of the same file, or waits on a
thread that never ends. :func:`held` runs a block with SIGINT and SIGTERM recorded instead of
handled; the first one recorded is delivered again to the handler that was in place (the
launchers' Ctrl-C / SIGTERM stop, Python's own ``KeyboardInterrupt``, or the default: ended by
the signal) as the outermost held block ends, so the stop takes effect between two whole writes.

A second Ctrl-C while one is held is not held: it is delivered at once (a user who presses it
twice means it). A signal ignored before the block (SIGINT in a program started with ``cmd &``)
stays ignored in it. Outside the main thread (where Python runs no signal handler) :func:`held`
changes nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_depth = 0
_previous: dict[int, object] = {}  # the handlers in place when the outermost held block began
_pending: list[int] = []  # the signals recorded while held, first first


def _record(signum, frame) -> None:
    if _previous.get(signum) is signal.SIG_IGN:  # ignored before the block: ignored in it
        return
    if signum == signal.SIGINT and signal.SIGINT in _pending:
        handler = _previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        else:
            raise KeyboardInterrupt
    if signum not in _pending:
        _pending.append(signum)


def holding() -> bool:
    """Whether a :func:`held` block is running (in the main thread)."""
    return _depth > 0


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held; one that arrived is delivered when the
    outermost held block ends (also when it ends by an exception: the stop still happens)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _pending.clear()
        for signum in HELD_SIGNALS:
            _previous[signum] = signal.signal(signum, _record)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for signum in HELD_SIGNALS:
                previous = _previous.pop(signum)
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
            if _pending:
                signum = _pending[0]
                _pending.clear()
                # Delivered as the signal itself, so the handler now in place decides what it does
                # (its Python handler runs before the next line of the caller).
                signal.raise_signal(signum)
