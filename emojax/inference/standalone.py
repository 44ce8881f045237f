"""Self-contained copies of a finished run, and its encoders on their own.

``create_standalone(run_dir, output)`` writes a folder that scores new inputs without the work
directory, the dataset or the hub::

    output/
        config.json       the run's config; encoders.{m}.model -> output/encoders/{m} (absolute)
        meta.json, results.json, progress.json, history.json, metrics.md, preprocessing/
        best/<epoch>/     the selected parameters (Orbax), as in the run
        state/            empty (the Orbax manager of the training state expects the folder)
        encoders/{m}/     the run's encoder folders, real copies of the store entries
        standalone.json   source run, label, hash, per modality the encoder hash, source model
                          name and relative folder

``Estimator(output)`` (and ``launch.infer --run_dir=output``) load it as they load a run. The
encoder paths in ``config.json`` are absolute; after moving the folder, load it with
:func:`load_standalone`, which points them at the folder's new place first.

``extract_encoders(run_dir, output)`` copies only the encoder folders, to ``output/{m}/`` (for a
run that fine-tuned encoders, their folders hold the tuned weights, LoRA merged), and
writes ``output/encoders.cfg`` (``encoders.T.model=<path>`` lines) and ``output/encoders.flags``
(the same as ``--config.encoders.T.model=<path>``, for ``launch.train --flagfile=...``).

A run trained before its encoders were linked into the store (no ``encoders/`` links) has its
encoders rebuilt from its config and ``meta.json`` speaker tokens and written directly.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

from emojax import config as config_lib
from emojax.runs.checkpoint import CheckpointError
from emojax.runs.records import STANDALONE_MANIFEST
from emojax.features.featurizer import Featurizer
from emojax.files import building_folder, publish_folder, write_json_atomic
from emojax.inference.estimator import Estimator
from emojax.runs.store import RUN_LINKS, export_encoder, neural_encoders, resolve_run_encoder, run_encoders

MANIFEST = STANDALONE_MANIFEST
_RUN_FILES = ("config.json", "meta.json", "results.json", "progress.json", "history.json", "metrics.md")


def _finished_run(run_dir: pathlib.Path) -> dict:
    """The run's progress, after checking it is a finished run directory."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    for name in ("config.json", "meta.json", "progress.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir / name}: missing; {run_dir} is not a finished run directory")
    try:
        progress = json.loads((run_dir / "progress.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{run_dir / 'progress.json'}: unreadable ({err})") from err
    if not progress.get("finished") or not (run_dir / "results.json").is_file():
        raise CheckpointError(f"{run_dir}: the run has not finished (epoch {progress.get('epoch')}); "
                              "resume it with launch/train.py first")
    best = run_dir / "best" / str(progress["best_epoch"])
    if not best.is_dir():
        raise CheckpointError(f"{best}: the best checkpoint named in progress.json is missing")
    return progress


def _empty_output(output: pathlib.Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output}: exists and is not empty; choose a new folder")


def _neural_modalities(cfg) -> list[str]:
    return [m for m in config_lib.modalities(cfg) if not str(cfg.encoders[m].get("family", "")).startswith("classic")]


def _copy_encoders(run_dir: pathlib.Path, target: pathlib.Path, cfg) -> dict:
    """Copy the run's encoder folders to ``target/{m}``; returns ``m -> {"hash", "model"}``."""
    record = run_encoders(run_dir)
    wanted = _neural_modalities(cfg)
    out = {}
    rebuilt = None
    for modality in wanted:
        link = run_dir / RUN_LINKS / modality
        folder = target / modality
        if link.exists() or link.is_symlink():
            source = resolve_run_encoder(run_dir, modality)  # raises for a dangling link
            shutil.copytree(source, folder, symlinks=False)
            info = record.get(modality, {})
            out[modality] = {"hash": info.get("hash", source.name), "model": info.get("model", "")}
            continue
        # Never linked (trained before the store): rebuild the encoder as the run used it.
        if rebuilt is None:
            meta = json.loads((run_dir / "meta.json").read_text())
            cfg_copy = config_lib.load_config(run_dir / "config.json")
            cfg_copy.progress = False
            rebuilt = Featurizer(cfg_copy, meta.get("speaker_tokens", []), cache=None)
        wrapper = rebuilt.encoders[modality]
        encoder = getattr(wrapper, "encoder", wrapper)
        model = str(cfg.encoders[modality].model)
        export_encoder(encoder, folder, model=model)
        out[modality] = {"hash": encoder.weights_hash, "model": model}
    return out


def create_standalone(run_dir: str | os.PathLike, output: str | os.PathLike) -> pathlib.Path:
    """Copy a finished run into a self-contained folder (see the module docstring)."""
    run_dir, output = pathlib.Path(run_dir), pathlib.Path(output)
    progress = _finished_run(run_dir)
    _empty_output(output)
    cfg = config_lib.load_config(run_dir / "config.json")
    with building_folder(output, prefix=f".{output.name}.tmp-") as tmp:
        for name in _RUN_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        if (run_dir / "preprocessing").is_dir():
            shutil.copytree(run_dir / "preprocessing", tmp / "preprocessing")
        best = str(progress["best_epoch"])
        shutil.copytree(run_dir / "best" / best, tmp / "best" / best)
        (tmp / "state").mkdir()
        encoders = _copy_encoders(run_dir, tmp / RUN_LINKS, cfg)
        manifest = {"source_run": str(run_dir.resolve()), "label": config_lib.run_label(cfg),
                    "hash": config_lib.config_hash(cfg), "best_epoch": progress["best_epoch"],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "encoders": {m: {**info, "path": f"{RUN_LINKS}/{m}"} for m, info in encoders.items()}}
        write_json_atomic(tmp / MANIFEST, manifest)
        if not publish_folder(tmp, output):
            raise FileExistsError(f"{output}: was filled by something else while the run was copied; "
                                  "choose a new folder")
    _point_config(output)
    return output


def _point_config(folder: pathlib.Path) -> bool:
    """Set ``encoders.{m}.model`` in ``folder/config.json`` to the folder's own encoder copies
    (absolute paths); returns whether the file changed."""
    manifest = json.loads((folder / MANIFEST).read_text())
    raw = json.loads((folder / "config.json").read_text())
    changed = False
    for modality, info in manifest.get("encoders", {}).items():
        path = str((folder / info["path"]).resolve())
        if raw["encoders"][modality].get("model") != path:
            raw["encoders"][modality]["model"] = path
            changed = True
    if changed:
        write_json_atomic(folder / "config.json", raw)
    return changed


def load_standalone(folder: str | os.PathLike):
    """An :class:`~emojax.inference.Estimator` of a folder written by :func:`create_standalone`,
    wherever the folder now is (its ``config.json`` is re-pointed at its encoders if it moved)."""
    folder = pathlib.Path(folder)
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(f"{folder / MANIFEST}: missing; {folder} was not written by create-standalone")
    manifest = json.loads((folder / MANIFEST).read_text())
    for info in manifest.get("encoders", {}).values():
        if not (folder / info["path"] / "model.safetensors").is_file():
            raise CheckpointError(f"{folder / info['path']}: encoder folder missing or incomplete")
    _point_config(folder)

    return Estimator(folder)


def _export_tuned(run_dir: pathlib.Path, output: pathlib.Path, cfg) -> dict:
    """The fine-tuned encoders of the run's selected epoch (LoRA adapters merged) as plain
    Hugging Face folders ``output/{m}``, in place of the base encoders copied there."""

    estimator = Estimator(run_dir)
    encoders = neural_encoders(estimator.featurizer)
    out = {}
    for modality in estimator.tuned_modalities:
        encoder, _ = encoders[modality]
        folder = output / modality
        shutil.rmtree(folder, ignore_errors=True)
        model = str(cfg.encoders[modality].model)
        export_encoder(encoder, folder, model=model, from_params=True)
        out[modality] = {"hash": encoder.weights_hash, "model": model, "tuned": str(cfg.mode)}
    return out


def extract_encoders(run_dir: str | os.PathLike, output: str | os.PathLike) -> dict:
    """Copy a run's encoder folders to ``output/{m}/`` and write the config snippets
    (see the module docstring); returns ``m -> {"hash", "model", "path"}``."""
    run_dir, output = pathlib.Path(run_dir), pathlib.Path(output)
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir / 'config.json'}: missing; {run_dir} is not a run directory")
    if not (run_dir / "meta.json").is_file():
        raise CheckpointError(f"{run_dir / 'meta.json'}: missing; the run has not got past its features yet")
    _empty_output(output)
    cfg = config_lib.load_config(run_dir / "config.json")
    if not _neural_modalities(cfg):
        raise CheckpointError(f"{run_dir}: the run's encoders ({cfg.modalities}) have no weights to extract")
    output.mkdir(parents=True, exist_ok=True)
    encoders = _copy_encoders(run_dir, output, cfg)
    if cfg.mode != "frozen":
        encoders.update(_export_tuned(run_dir, output, cfg))
    for modality, info in encoders.items():
        info["path"] = str((output / modality).resolve())
    (output / "encoders.cfg").write_text("".join(f"encoders.{m}.model={i['path']}\n" for m, i in encoders.items()))
    (output / "encoders.flags").write_text(
        "".join(f"--config.encoders.{m}.model={i['path']}\n" for m, i in encoders.items()))
    write_json_atomic(output / "encoders.json", {"source_run": str(run_dir.resolve()), "encoders": encoders})
    return encoders
