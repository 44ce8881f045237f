"""Media paths taken from a CSV, kept inside the folder they are relative to.

A dataset CSV names its media files (IEMOCAP's ``Wav_Path`` / ``Video_Path``, CH-SIMS's
``video_id``, the path columns of a batch-prediction table). Such a path that leads outside its
folder (``../../etc/passwd``, an absolute path) is treated as a missing
file with a warning naming the row, unless the caller opts in (``allow_outside=True``). The
warning never says whether the outside path exists, so a shared prediction service does not
become a way to probe the machine's files.
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Optional

log = logging.getLogger(__name__)

OUTSIDE = ("path leads outside the dataset folder; not read (allow such paths with "
           "--config.dataset.allow_outside_paths=True, or launch.infer --allow_outside_paths)")


def inside(root: pathlib.Path, path: pathlib.Path) -> bool:
    """Whether ``path`` lies in ``root``, judged on the names (``..`` folded, links not followed:
    a release folder linked into the dataset folder is the user's own layout and stays usable)."""
    root_abs = os.path.normpath(os.path.abspath(root))
    path_abs = os.path.normpath(os.path.abspath(path))
    return path_abs == root_abs or path_abs.startswith(root_abs.rstrip(os.sep) + os.sep)


def resolve_media(root: pathlib.Path, value: str, *, where: str, allow_outside: bool = False
                  ) -> tuple[Optional[pathlib.Path], Optional[str]]:
    """``(path, problem)`` of a media path from a CSV cell, relative to ``root``.

    ``path`` is ``None`` for an empty cell or a path outside ``root`` (then ``problem`` says so,
    and a warning naming ``where``, e.g. ``"IEMOCAP_train.csv, row 7"``, is logged). Existence
    is not checked here.
    """
    value = str(value).strip()
    if not value:
        return None, None
    path = root / value  # an absolute ``value`` replaces ``root``
    if allow_outside or inside(root, path):
        return path, None
    log.warning("%s: %r: %s", where, value, OUTSIDE)
    return None, OUTSIDE
