"""Checks on the folders a user names (workdir, cache, outputs), made before any work starts.

Kept free of heavy imports (JAX, Orbax) so the light launchers (``launch.tool``, a sweep's
``--dry_run``) can check their flags without loading them.
"""
from __future__ import annotations

import pathlib
from typing import Optional


def folder_problem(path: str | pathlib.Path) -> Optional[str]:
    """Why ``path`` cannot be used as a folder (it, or a folder above it, is a file), or ``None``
    when it is a folder or can be created. Checked before any work, so a mistyped path fails at
    once rather than after the features are computed."""
    path = pathlib.Path(path)
    if path.exists():
        return None if path.is_dir() else f"{path} is a file, not a folder"
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} (above {path}) is a file, not a folder"
    return None
