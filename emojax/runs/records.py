"""What a run directory records about itself, read without JAX (``launch.tool info`` lists many).

:func:`run_config` reads a run's ``config.json`` after checking the run's format (a run of an
earlier format is refused in one line that says how to migrate it: :mod:`emojax.runs.format`),
and checks it against the hash the run was made with, so that a config edited by hand after
training is refused rather than silently used.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Optional

import ml_collections

from emojax.files import read_json_object
from emojax import config as config_lib
from emojax.runs import format as format_lib


class RunConfigError(config_lib.ConfigError):
    """A run's ``config.json`` is not the config the run was made with; the message names it, and
    ``short`` says it in a few words (a row of ``launch.tool info``)."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message


STANDALONE_MANIFEST = "standalone.json"  # written by emojax.runs.standalone into a run's self-contained copy
_RUN_NAME = re.compile(r"^(?P<hash>[0-9a-f]{8})--(?P<seed>\d+)$")  # {hash}--{seed}, config.run_dir's last part


def run_config(run_dir: str | pathlib.Path):
    """The config of the run in ``run_dir`` (its ``config.json``), of a run of today's format
    (else :class:`emojax.runs.format.RunFormatError`), checked against what the run was made
    with: the hash in ``meta.json`` (else ``results.json``) and the run directory's name
    ``{hash}--{seed}``. A config edited by hand after training (a pooling, a token budget) would
    change every prediction while the stored parameters and scores stay those of the original:
    :class:`RunConfigError` names the file and both hashes instead.

    In a self-contained copy (``standalone.json``) the encoder paths point at the copy's own
    folders; the check hashes the config with the paths the run was trained with."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / "config.json"
    format_lib.check_format(run_dir)
    cfg = config_lib.load_config(path)
    hashed = cfg
    manifest = read_json_object(run_dir / STANDALONE_MANIFEST)
    if manifest is not None:
        hashed = ml_collections.ConfigDict(cfg.to_dict())
        for modality, info in (manifest.get("encoders") or {}).items():
            if modality in hashed.encoders and info.get("model"):
                hashed.encoders[modality].model = info["model"]
    try:
        now = config_lib.config_hash(hashed)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise RunConfigError(f"{path}: not a run config ({err}); restore the file the run wrote") from None
    recorded = []
    for name in ("meta.json", "results.json"):
        payload = read_json_object(run_dir / name)
        if payload is not None and payload.get("hash"):
            recorded.append((str(payload["hash"]), name))
            break
    if manifest is not None and manifest.get("hash"):
        recorded.append((str(manifest["hash"]), STANDALONE_MANIFEST))
    match = _RUN_NAME.match(run_dir.name)
    if match:
        recorded.append((match["hash"], "the run directory's name"))
        if int(match["seed"]) != int(cfg.get("seed", -1)):
            raise RunConfigError(f"{path}: seed is {cfg.get('seed')}, but the run was made with seed "
                                  f"{match['seed']} (the run directory's name); undo the edit of {path.name}",
                                  f"config.json edited (seed {cfg.get('seed')}, run made with {match['seed']})")
    for made, source in recorded:
        if made != now:
            raise RunConfigError(f"{path}: edited since the run was made (its hash is now {now}; {source} says "
                                  f"{made}), so its settings are not those the parameters were trained with; undo "
                                  f"the edit, or train a run with the new settings",
                                  f"config.json edited (hash {now}, run made as {made})")
    return cfg


