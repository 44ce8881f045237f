"""A content-addressed store of the frozen encoders runs were trained with, linked from each run.

Layout under the work directory::

    checkpoints/encoders/{hash}/          one entry per encoder weight hash, written once
        model.safetensors                 the weights (PyTorch names, added token rows included)
        config.json, vocab.txt, tokenizer_config.json, tokenizer.json, special_tokens_map.json, ...
                                          the Hugging Face folder it was loaded from, with the
                                          tokenizer's added special tokens (speaker tokens) saved
        store.json                        hash, source model name, family, added tokens, the
                                          text encoder's vocab_size before them, time
    checkpoints/training/.../{hash}--{seed}/
        encoders/T -> ../../../../../../encoders/{hash}   relative link, per neural modality
        encoders.json                     modality -> {"hash", "model", "family"} (+ "error" if not stored)

Neural media encoders (Whisper, wav2vec2, VideoMAE, CLIP: ``encoders.A`` / ``encoders.V``) are
stored the same way: their source folder's files (config, preprocessor) and tensors.

``{hash}`` is the encoder's ``weights_hash`` as the run used it (parameters with the added rows,
architecture, vocabulary). Every entry is loaded back once when written and must reproduce the
parameters in memory. An entry is a plain Hugging Face folder: ``TextEncoder.from_pretrained``
(or ``--config.encoders.T.model=<entry>``) loads it with the speaker tokens already in the
vocabulary and the embedding matrix, and computes the same features as the run's encoder.
(Its ``config.json`` states the grown ``vocab_size``, so an encoder reloaded from an entry with
added tokens hashes differently from the in-memory encoder that named the entry;
:func:`stored_hashes` computes the hash the entry was stored under from a reloaded encoder, and
:func:`check_loaded_encoder` compares it with what a run recorded.)

Entries are written to a temporary folder beside the store and renamed into place, so a reader
never sees half an entry; of two processes storing the same encoder at once, the one that loses
the rename uses the winner's entry. An existing entry is never rewritten. An entry that cannot be
written (:data:`STORE_ERRORS`: a full disk, an unwritable folder, a source that is gone) leaves no
temporary folder behind and, from :func:`link_run_encoders`, does not stop the run: it is logged
in one warning line and the run's encoder is later loaded from its source. Links are relative, so
the whole work directory can be moved or copied. Classic (librosa / OpenCV) encoders have no
weights and are not stored.

Wiring: ``emojax.training.fit`` calls ``link_run_encoders(run_dir, prep.featurizer, workdir)`` on
process 0 once the run directory holds its config and meta.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from emojax.runs.checkpoint import CheckpointError
from emojax.encoders import export, hub
from emojax.encoders.text import TextEncoder
from emojax.features.featurizer import resolve_model_path
from emojax.files import building_folder, publish_folder, write_json_atomic, write_json_if_changed

log = logging.getLogger(__name__)

STORE = ("checkpoints", "encoders")
MANIFEST = "store.json"
RUN_LINKS = "encoders"
RUN_RECORD = "encoders.json"
_TMP_PREFIX = ".tmp-"
# Files of a source folder never copied into an entry: the weights (written anew) and indices.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".h5", ".pt", ".pth", ".ckpt", ".onnx", ".ot", ".gguf")
_REQUIRED = ("model.safetensors", "config.json")
# What writing an entry can raise: the store's own checks (CheckpointError, and the weight and
# export errors, all ValueError: an unreadable source, a family that cannot be rebuilt), file
# system errors of copies, JSON files, renames and links (OSError: ENOSPC, EACCES, EROFS, ...),
# the SafeTensors writer's (SafetensorError: "Error while serializing: I/O error: ..."), a source
# JSON file that does not parse (JSONDecodeError is a ValueError) and a key the source lacks. The
# tokenizers library's own errors (a plain Exception) become CheckpointError in
# :func:`_save_tokenizer`.
STORE_ERRORS = (CheckpointError, OSError, SafetensorError, ValueError, KeyError)


def store_root(workdir: str | os.PathLike) -> pathlib.Path:
    """``{workdir}/checkpoints/encoders``."""
    return pathlib.Path(workdir).joinpath(*STORE)


# ---------------------------------------------------------------------------------------------
# Which encoders have weights
# ---------------------------------------------------------------------------------------------
def neural_encoders(featurizer) -> dict[str, tuple[Any, str]]:
    """``modality -> (encoder, model name)`` for the encoders of ``featurizer`` that have weights:
    the text encoder (``featurizer.encoders["T"].encoder``) and neural media encoders (objects
    with ``params`` and ``weights_hash`` themselves). Classic audio / video encoders have none."""
    out = {}
    for modality, wrapper in featurizer.encoders.items():
        encoder = getattr(wrapper, "encoder", wrapper)
        if not hasattr(encoder, "weights_hash") or not hasattr(encoder, "params"):
            continue
        spec = getattr(wrapper, "spec", None)
        try:
            name = str(spec["model"])
        except (KeyError, TypeError):
            name = str(getattr(encoder, "model", "") or getattr(encoder, "name", ""))
        out[modality] = (encoder, name)
    return out


def encoder_family(encoder) -> str:
    """``whisper``, ``clip``, ... for media encoders; the config's ``model_type`` (or class) for text."""
    config = getattr(encoder, "config", None)
    return str(getattr(encoder, "family", "") or getattr(config, "model_type", "")
               or (type(config).__name__.removesuffix("Config").lower() if config is not None else ""))


# ---------------------------------------------------------------------------------------------
# Writing an encoder as a Hugging Face folder
# ---------------------------------------------------------------------------------------------
# Word-embedding tensors of the text families (BERT / RoBERTa, ModernBERT), after any prefix.
_WORD_EMBEDDINGS = ("embeddings.word_embeddings.weight", "embeddings.tok_embeddings.weight")
# Output heads over the vocabulary: dropped when tokens were added (they no longer fit).
_VOCAB_HEADS = ("cls.", "lm_head.", "decoder.")
_PREFIXES = ("bert.", "roberta.", "model.")


def _hf_config(config) -> dict:
    """A Hugging Face ``config.json`` for a :class:`BertConfig` (when the source folder is gone)."""
    return {"model_type": config.model_type, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_positions,
            "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
            "hidden_act": config.hidden_act, "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.attention_dropout, "pad_token_id": config.pad_token_id}


def _source_folder(encoder, name: str) -> Optional[pathlib.Path]:
    """The folder ``encoder`` was loaded from (its ``folder``, else ``name`` resolved again)."""
    folder = getattr(encoder, "folder", None)
    if folder is not None and pathlib.Path(folder).is_dir():
        return pathlib.Path(folder)
    if not name:
        return None
    try:
        folder = resolve_model_path(name)
        return folder if folder.is_dir() else None
    except Exception as err:  # noqa: BLE001 - reported by the caller's fallback
        log.warning("encoder store: cannot find the source folder of %s (%s)", name, err)
        return None


def _copy_side_files(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copy the non-weight files of ``source`` (config, tokenizer, preprocessor, sentence-transformers
    module files), following links (a hub snapshot links into its blob store)."""
    for path in sorted(source.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            _copy_side_files(path, target / path.name)
            continue
        if path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".index.json"):
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)


def _short(name: str) -> str:
    head, _, rest = name.partition(".")
    return rest if rest and f"{head}." in _PREFIXES else name


def _trees_equal(a, b) -> bool:
    fa, ta = jax.tree_util.tree_flatten(a)
    fb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(fa, fb))


def _reloads_identically(encoder, folder: pathlib.Path) -> bool:
    """Whether ``folder`` loads back to ``encoder``'s parameters (and vocabulary)."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is not None:
        back = TextEncoder.from_pretrained(str(folder), pooling=encoder.pooling, max_length=encoder.max_length)
        return back.tokenizer.get_vocab() == tokenizer.get_vocab() and _trees_equal(back.params, encoder.params)
    spec = getattr(encoder, "spec", None)
    if spec is None:
        return True  # no way to rebuild it: trust the copy of the source weights
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    spec["model"] = str(folder)
    back = type(encoder)(spec, getattr(encoder, "dtype", None) or np.float32)
    return back.weights_hash == encoder.weights_hash


def export_encoder(encoder, folder: str | os.PathLike, *, model: str = "", verify: bool = True,
                   from_params: bool = False) -> pathlib.Path:
    """Write ``encoder`` to ``folder`` as a Hugging Face folder: the source folder's files (config,
    tokenizer, preprocessor) and its tensors as ``model.safetensors`` (PyTorch names, float32); for
    a text encoder also the tokenizer with its added tokens, the grown word-embedding matrix and
    ``vocab_size``. ``model`` names the source (default: the encoder's own record of it). With
    ``verify`` the folder is loaded back and must give the encoder's parameters exactly.

    ``from_params``: the tensors the encoder's loader reads come from the parameters in memory
    (a fine-tuned encoder: :mod:`emojax.encoders.export` writes them back under the checkpoint's
    names), the source folder's other tensors are kept."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model or str(getattr(encoder, "model", "") or getattr(encoder, "name", ""))
    config = getattr(encoder, "config", None)
    tokenizer = getattr(encoder, "tokenizer", None)
    source = _source_folder(encoder, model)
    source_rows = None
    if source is not None:
        _copy_side_files(source, folder)
        state = hub.load_state_dict(source)
        key = next((k for k in state if _short(k) in _WORD_EMBEDDINGS), None)
        source_rows = state[key].shape[0] if key is not None else None
        if from_params:
            shapes = config
            if tokenizer is not None:  # added tokens grew the word embeddings beyond the config's vocabulary
                rows = int(np.shape(encoder.params["embeddings"]["word"])[0])
                shapes = dataclasses.replace(config, vocab_size=rows)
            try:
                written = export.state_dict_from_params(encoder.params, shapes, state, source=str(source))
            except export.ExportError as err:
                raise CheckpointError(f"{folder}: cannot write the tuned weights of {model!r}: {err}") from err
            for name in export.replaced_names(state, written):
                del state[name]
            state.update(written)
    elif tokenizer is not None and type(config).__name__ == "BertConfig":
        # The source folder is gone: the tensors under the names the loader reads first.
        rows = int(np.shape(encoder.params["embeddings"]["word"])[0])
        try:
            state = export.state_dict_from_params(encoder.params, dataclasses.replace(config, vocab_size=rows), None,
                                                  source=model)
        except export.ExportError as err:
            raise CheckpointError(f"{folder}: cannot write encoder {model!r}: {err}") from err
        (folder / "config.json").write_text(json.dumps(_hf_config(config), indent=2, sort_keys=True))
    else:
        raise CheckpointError(f"{folder}: cannot write encoder {model!r}: its source folder is gone and its "
                              f"family ({encoder_family(encoder) or '?'}) cannot be rebuilt from the parameters")
    if tokenizer is not None:
        _save_tokenizer(tokenizer, folder)
        word = np.ascontiguousarray(np.asarray(encoder.params["embeddings"]["word"], np.float32))
        key = next((k for k in state if _short(k) in _WORD_EMBEDDINGS), None)
        if key is None:
            raise CheckpointError(f"{source}: no word-embedding tensor ({' / '.join(_WORD_EMBEDDINGS)}) to "
                                  "write the added tokens' rows into")
        rows = state[key].shape[0] if source_rows is None else source_rows
        state[key] = word
        if rows != word.shape[0]:  # added tokens: heads over the old vocabulary no longer fit
            for name in list(state):
                if _short(name).startswith(_VOCAB_HEADS) and np.shape(state[name])[:1] == (rows,):
                    del state[name]
        config_path = folder / "config.json"
        hf = json.loads(config_path.read_text())
        hf["vocab_size"] = int(word.shape[0])
        config_path.write_text(json.dumps(hf, indent=2, sort_keys=True))
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    if verify and not _reloads_identically(encoder, folder):
        raise CheckpointError(f"{folder}: the written encoder does not load back to the weights in memory "
                              f"(has {source or model} changed since the encoder was loaded?)")
    return folder


def _save_tokenizer(tokenizer, folder: pathlib.Path) -> None:
    """``tokenizer.save_pretrained(folder)``. The files ``transformers`` writes itself raise
    OSError; ``tokenizer.json`` is written by the tokenizers library, whose errors (a full disk
    included: ``No space left on device (os error 28)``) are plain ``Exception`` instances: those,
    and only those, become :class:`CheckpointError` naming the folder."""
    try:
        tokenizer.save_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - narrowed below to the tokenizers library's plain Exception
        if type(err) is not Exception:
            raise
        raise CheckpointError(f"{folder}: cannot write the tokenizer ({err})") from err


def _added_tokens(encoder) -> list[str]:
    """Tokens added on top of the base vocabulary (speaker tokens), in id order."""
    try:
        added = encoder.tokenizer.get_added_vocab()
        base = int(encoder.tokenizer.vocab_size)
        return [t for t, i in sorted(added.items(), key=lambda kv: kv[1]) if i >= base]
    except Exception:  # noqa: BLE001 - informative only
        return []


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------
def check_entry(entry: str | os.PathLike) -> pathlib.Path:
    """``entry`` when it is a complete encoder folder; else :class:`CheckpointError` naming it."""
    entry = pathlib.Path(entry)
    if not entry.is_dir():
        raise CheckpointError(f"{entry}: encoder store entry is missing")
    missing = [name for name in _REQUIRED if not (entry / name).is_file()]
    if missing:
        raise CheckpointError(f"{entry}: incomplete encoder folder (no {', '.join(missing)}); delete it so the "
                              "next run writes it again")
    return entry


def store_encoder(encoder, workdir: str | os.PathLike, *, model: str = "") -> pathlib.Path:
    """The store entry of ``encoder`` under ``workdir``, written now if absent (atomically);
    an existing entry is returned untouched."""
    digest = encoder.weights_hash
    root = store_root(workdir)
    final = root / digest
    if final.exists():
        return check_entry(final)
    with building_folder(final, prefix=f"{_TMP_PREFIX}{digest[:16]}-") as tmp:
        export_encoder(encoder, tmp, model=model)
        manifest = {"hash": digest, "model": model or getattr(encoder, "name", ""),
                    "family": encoder_family(encoder), "added_tokens": _added_tokens(encoder),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if getattr(encoder, "tokenizer", None) is not None:
            # The entry's config.json states the grown rows; the hash was taken with this size.
            manifest["vocab_size"] = int(encoder.config.vocab_size)
        write_json_atomic(tmp / MANIFEST, manifest)
        if publish_folder(tmp, final, sync=True):
            log.info("encoder store: wrote %s", final)
        else:
            log.info("encoder store: %s was written by another process; using it", final)
    return check_entry(final)


def _manifest(entry: pathlib.Path) -> dict:
    """``entry/store.json`` (``{}`` when absent or unreadable: a folder exported outside the store)."""
    try:
        return json.loads((entry / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def stored_hashes(encoder, entry: str | os.PathLike) -> set[str]:
    """The weights hash ``encoder``, loaded from the encoder folder ``entry``, had when it was
    stored: one hash, or for a text entry written without the manifest's ``vocab_size`` the
    (at most two) hashes it can have had.

    A text encoder that added tokens kept its source's ``vocab_size`` in its config and grew only
    its embedding matrix; the entry's ``config.json`` states the grown rows, so the reloaded
    encoder's own ``weights_hash`` differs although its parameters and vocabulary are the same.
    The hash is therefore recomputed with the source's ``vocab_size``: the manifest's, else the
    rows less the added tokens (or all rows, when the tokens took spare rows of a padded matrix)."""
    if getattr(encoder, "tokenizer", None) is None:
        return {encoder.weights_hash}
    rows = int(encoder.config.vocab_size)
    known = _manifest(pathlib.Path(entry)).get("vocab_size")
    sizes = {int(known)} if known is not None else {rows, rows - len(_added_tokens(encoder))}
    hashes = set()
    for size in sizes:
        if size == rows:
            hashes.add(encoder.weights_hash)
            continue
        twin = copy.copy(encoder)
        twin.config = dataclasses.replace(encoder.config, vocab_size=size)
        twin.params = encoder.params  # the setter drops the copied cached hash
        hashes.add(twin.weights_hash)
    return hashes


def check_loaded_encoder(encoder, entry: str | os.PathLike, recorded: str, *, record: str | os.PathLike) -> None:
    """:class:`CheckpointError` naming ``entry`` unless ``encoder``, loaded from it, has the weights
    hash ``recorded`` (what the run wrote in ``record`` when it trained with that encoder)."""
    hashes = stored_hashes(encoder, entry)
    if recorded not in hashes:
        raise CheckpointError(f"{entry}: the encoder there (weights hash {min(hashes)[:12]}) is not the one the "
                              f"run trained with ({recorded[:12]} in {record}); the folder was changed or replaced: "
                              "restore it, or train the run again")


def _link(link: pathlib.Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` (relative), replacing another link atomically."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        raise CheckpointError(f"{link}: exists and is not a link into the encoder store; move it away to relink")
    tmp = link.parent / f".{link.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    os.symlink(target, tmp, target_is_directory=True)
    try:
        os.replace(tmp, link)
    except BaseException:
        if tmp.is_symlink():
            tmp.unlink()
        raise


def link_entry(run_dir: str | os.PathLike, modality: str, entry: str | os.PathLike) -> pathlib.Path:
    """Point ``run_dir/encoders/{modality}`` at the store entry ``entry`` with a relative link
    (another link there is replaced atomically); returns the link."""
    links = pathlib.Path(run_dir) / RUN_LINKS
    links.mkdir(parents=True, exist_ok=True)
    _link(links / modality, os.path.relpath(os.path.realpath(entry), os.path.realpath(links)))
    return links / modality


def _reason(err: BaseException) -> str:
    """Why an encoder was not stored, on one line (the error's type named unless it is ours)."""
    text = " ".join(str(err).split())
    return text if isinstance(err, CheckpointError) else f"{type(err).__name__}: {text}"


def link_run_encoders(run_dir: str | os.PathLike, featurizer, workdir: str | os.PathLike, *,
                      strict: bool = False) -> dict:
    """Store each neural encoder of ``featurizer`` under ``workdir`` (once) and link it from the run:
    ``run_dir/encoders/{modality} -> <relative path>/checkpoints/encoders/{hash}``; writes
    ``run_dir/encoders.json`` and returns it (``modality -> {"hash", "model", "family"}``).

    Call it from process 0 only in a multi-host run. Safe to call again (a resumed run): an
    existing entry is reused and an up-to-date link is left as it is. An encoder that cannot be
    written (any of :data:`STORE_ERRORS`: its source folder gone, an unreadable file, a full disk
    whichever writer meets it) raises with ``strict``; otherwise it is logged in one warning line,
    left unlinked with no partial entry in the store, and its record carries ``"error"``, so
    training goes on (evaluation and inference then load that encoder from its source, and
    ``create-standalone`` rebuilds it from the run's config).
    """
    run_dir = pathlib.Path(run_dir)
    links = run_dir / RUN_LINKS
    record: dict[str, dict] = {}
    encoders = neural_encoders(featurizer)
    if encoders:
        links.mkdir(parents=True, exist_ok=True)
    for modality, (encoder, name) in encoders.items():
        record[modality] = {"hash": encoder.weights_hash, "model": name, "family": encoder_family(encoder)}
        link = links / modality
        try:
            entry = store_encoder(encoder, workdir, model=name)
            target = os.path.relpath(os.path.realpath(entry), os.path.realpath(links))
            _link(link, target)
            if not link.exists():
                raise CheckpointError(f"{link}: the new link to {target} does not resolve")
        except STORE_ERRORS as err:
            if strict:
                raise
            reason = _reason(err)
            log.warning("encoder store: the %s encoder of %s was not stored in %s (%s); the run trains on, and "
                        "evaluation and inference will load this encoder from its source %s", modality, run_dir,
                        store_root(workdir), reason, name or "(the run's config)")
            record[modality]["error"] = reason
    write_json_if_changed(run_dir / RUN_RECORD, record)  # not rewritten when unchanged (a restart)
    return record


def run_encoders(run_dir: str | os.PathLike) -> dict:
    """``run_dir/encoders.json`` (``{}`` for a run that was never linked)."""
    path = pathlib.Path(run_dir) / RUN_RECORD
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def resolve_run_encoder(run_dir: str | os.PathLike, modality: str) -> pathlib.Path:
    """The encoder folder of ``modality`` in a run (the store entry its link points to, or a real
    folder in a standalone copy); :class:`CheckpointError` naming the path for a missing or
    dangling link, or a missing or incomplete store entry."""
    link = pathlib.Path(run_dir) / RUN_LINKS / modality
    if link.is_symlink():
        if not link.exists():
            raise CheckpointError(f"{link}: dangling link to {os.readlink(link)} (store entry "
                                  f"{os.path.normpath(link.parent / os.readlink(link))} is missing); train the run "
                                  "again or restore the entry")
    elif not link.exists():
        record = run_encoders(run_dir)
        if "error" in record.get(modality, {}):
            raise CheckpointError(f"{link}: the {modality} encoder was not stored ({record[modality]['error']})")
        known = ", ".join(sorted(m for m, v in record.items() if "error" not in v)) or "none"
        raise CheckpointError(f"{link}: no {modality} encoder linked in this run (linked: {known})")
    return check_entry(link.resolve())


# ---------------------------------------------------------------------------------------------
# Runs and garbage
# ---------------------------------------------------------------------------------------------
def find_runs(workdir: str | os.PathLike) -> list[pathlib.Path]:
    """Run directories (holding ``config.json``) under ``{workdir}/checkpoints/{category}/``."""
    root = pathlib.Path(workdir) / "checkpoints"
    if not root.is_dir():
        return []
    runs = []
    for category in sorted(root.iterdir()):
        if category.name == STORE[-1] or category.name.startswith(".") or not category.is_dir():
            continue
        runs.extend(path.parent for path in category.glob("*/*/*/*/config.json"))
    return sorted(runs)


def references(workdir: str | os.PathLike) -> dict[str, list[pathlib.Path]]:
    """``hash -> runs`` linking (or naming in ``encoders.json``) each store entry."""
    store = os.path.realpath(store_root(workdir))
    refs: dict[str, list[pathlib.Path]] = {}
    for run in find_runs(workdir):
        names = set()
        links = run / RUN_LINKS
        if links.is_dir():
            for link in links.iterdir():
                if link.is_symlink():
                    target = os.path.realpath(link)
                    if os.path.dirname(target) == store:
                        names.add(os.path.basename(target))
        try:
            names.update(str(v.get("hash")) for v in run_encoders(run).values() if v.get("hash"))
        except CheckpointError as err:
            log.warning("%s", err)
        for name in names:
            refs.setdefault(name, []).append(run)
    return refs


def _size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _age(path: pathlib.Path) -> float:
    stat = path.stat()
    return time.time() - max(stat.st_mtime, stat.st_ctime)


def store_entries(workdir: str | os.PathLike) -> list[dict]:
    """Every store entry: ``{"hash", "path", "bytes", "model", "runs", "age_s", "temporary"}``."""
    root = store_root(workdir)
    if not root.is_dir():
        return []
    refs = references(workdir)
    out = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        temporary = path.name.startswith(_TMP_PREFIX)
        model = ""
        if not temporary and (path / MANIFEST).exists():
            try:
                model = json.loads((path / MANIFEST).read_text()).get("model", "")
            except json.JSONDecodeError:
                model = "?"
        out.append({"hash": path.name, "path": path, "bytes": _size(path), "model": model,
                    "runs": [] if temporary else refs.get(path.name, []), "age_s": _age(path),
                    "temporary": temporary})
    return out


def garbage(workdir: str | os.PathLike, *, grace_s: float = 600.0) -> list[dict]:
    """Store entries no run under ``workdir`` links to (and temporary folders of writers that
    died), older than ``grace_s`` seconds (temporary folders: at least an hour), so an entry a
    run is linking right now is spared."""
    out = []
    for entry in store_entries(workdir):
        if entry["runs"]:
            continue
        if entry["age_s"] < (max(grace_s, 3600.0) if entry["temporary"] else grace_s):
            continue
        out.append(entry)
    return out


def remove_entries(entries: list[dict]) -> int:
    """Delete the given store entries; returns the bytes freed."""
    freed = 0
    for entry in entries:
        path = pathlib.Path(entry["path"])
        # Rename first, so no reader sees a half-deleted entry under its hash.
        doomed = path.parent / f"{_TMP_PREFIX}gc-{path.name[:16]}-{secrets.token_hex(4)}"
        os.rename(path, doomed)
        shutil.rmtree(doomed)
        freed += int(entry["bytes"])
    return freed
