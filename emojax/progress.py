"""Progress bars that suit where the output goes.

On a terminal and in a notebook a bar redraws in place. Sent to a file (a cluster job's log, a
sweep's per-run log) every redraw becomes one more line, so there the bars are off and only the
summary lines (``tqdm.write``) remain.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

from tqdm import autonotebook, std
from tqdm.auto import tqdm


def bars_shown(enabled: bool = True) -> bool:
    """Whether a bar would redraw in place: ``enabled``, and a notebook or stderr a terminal."""
    if not enabled:
        return False
    if autonotebook.tqdm is not std.tqdm:  # a notebook's widget bar
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, off unless :func:`bars_shown` (``enabled`` is the caller's
    own switch, e.g. ``cfg.progress``)."""
    return tqdm(iterable, disable=not bars_shown(enabled), **kwargs)


def write_line(message: str) -> None:
    """Print a summary line (an epoch's scores, a stage's result) above any bar being drawn, so
    the bar is not broken; shown wherever the output goes, bars or not."""
    tqdm.write(message)
