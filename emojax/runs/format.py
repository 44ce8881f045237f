"""The run format: the version of what a run directory holds, and the migration of earlier ones.

A run records its format in ``meta.json`` (``"format": 3``, written with the rest of that file
at every start: :func:`emojax.training.evaluation.write_meta`); a run without the record was written before
it existed and is format 1. Whatever reads a run (:func:`emojax.runs.records.run_config`, so
``launch.evaluate``, ``launch.infer`` and the ``Estimator``, ``launch.tool info``, a teacher) and
``fit`` refuse a run of another format in one line (:class:`RunFormatError`), and
``python -m launch.tool migrate --workdir=DIR --apply`` brings the runs of a work directory to
:data:`FORMAT` (:func:`migrate`). Renaming anything a run writes or hashes is a new format, with a
step here that rewrites the runs of the format before it: this module is the only place where
earlier names live.

Format 1 -> 2:

- ``config.json`` in today's names: the fine-tuning settings ``encoder`` -> ``finetune``, the loss
  preset ``weight`` -> ``weighted`` (two spellings of one loss); ``finetune.tune_layers`` (0) and
  ``dataset.max_seconds`` (60) written where absent (format 1 left them out of the hash at those
  values, so a run written before they existed shared its directory with one that has them).
- The hash, and so the run directory ``{hash}--{seed}``: format 1 hashed ``finetune`` under
  ``encoder`` and without those two defaults; format 2 hashes the config as it is. The run moves,
  and ``meta.json`` and ``results.json`` carry the new hash.
- Checkpoints (``state/<epoch>/``, ``best/<epoch>/``): the layer keys of fine-tuned wav2vec2,
  VideoMAE and CLIP encoders under their names from before the shared encoder block -> today's.
- The encoder store: those families' weights hashes were taken under the same earlier names; the
  run's encoder is stored again under today's hash, and ``encoders.json`` names that entry (the
  earlier one stays for other runs until ``launch.tool gc`` finds it unlinked).
- The relative ``encoders/{m}`` links, and a ``teacher.json`` naming a teacher moved as well.

Format 2 -> 3 (a run of format 1 takes both steps at once):

- ``config.json`` gains the training options format 3 added, at the values every earlier run
  trained with: ``train.schedule`` (``linear``), ``train.grad_accum_steps`` (1), ``train.min_delta``
  (0), ``loss.label_smoothing`` (0) and ``loss.class_weights`` (none, ``[]``).
- The hash, so the run directory, ``meta.json`` and ``results.json``: the config is hashed with
  those fields (the run moves, its encoder links and a teacher's record with it). Checkpoints and
  the encoder store are unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Iterator, Mapping, Optional

import ml_collections

from emojax.files import read_json_object
from emojax import config as config_lib

FORMAT = 3
RECORD = "meta.json"  # the file whose "format" names a run's format

# Import cost: reading a run's format stays free of JAX (launch.tool info, emojax.runs.records);
# the migration itself loads Orbax and the encoders, imported where it needs them.


class RunFormatError(config_lib.ConfigError):
    """A run of another format than this emojax reads; the message says how to migrate it, and
    ``short`` says it in a few words (a row of ``launch.tool info``)."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message


def run_format(run_dir: str | os.PathLike) -> int:
    """The format of the run in ``run_dir``: ``meta.json``'s ``"format"`` (1 when it has none). A
    run stopped before its ``meta.json`` is told by its ``config.json`` (format 1 kept the
    fine-tuning settings under ``encoder``, format 2 lacks the fields format 3 added); a folder
    with neither is a new run, of :data:`FORMAT`."""
    run_dir = pathlib.Path(run_dir)
    meta = read_json_object(run_dir / RECORD)
    if meta is not None:
        found = meta.get("format", 1)
        return found if isinstance(found, int) and not isinstance(found, bool) else 1
    raw = read_json_object(run_dir / "config.json")
    if raw is None:
        return FORMAT
    if _FINETUNE_1 in raw and "finetune" not in raw:
        return 1
    return 2 if not _has_format_3_fields(raw) else FORMAT


def workdir_of(run_dir: str | os.PathLike) -> Optional[pathlib.Path]:
    """``{workdir}/checkpoints/{category}/...`` -> ``workdir`` (``None`` outside a work directory)."""
    path = pathlib.Path(run_dir)
    parts = path.parts if "checkpoints" in path.parts else path.absolute().parts
    if "checkpoints" not in parts:
        return None
    return pathlib.Path(*parts[:len(parts) - 1 - parts[::-1].index("checkpoints")])


def migrate_command(workdir) -> str:
    return f"python -m launch.tool migrate --workdir={workdir} --apply"


def format_error(run_dir: str | os.PathLike, found: int) -> RunFormatError:
    """What to say about the run in ``run_dir``, of format ``found`` (not :data:`FORMAT`)."""
    if found > FORMAT:
        return RunFormatError(f"{run_dir}: written by a newer emojax (run format {found}; this one reads format "
                              f"{FORMAT}); read it with that version", f"run format {found}: a newer emojax")
    workdir = workdir_of(run_dir)
    how = (f"run {migrate_command(workdir)}" if workdir is not None else
           f"migrate the run it was copied from ({migrate_command('WORKDIR')}) and copy it again")
    return RunFormatError(f"{run_dir}: written by an earlier emojax (run format {found}); {how}",
                          f"run format {found}: run launch.tool migrate")


def check_format(run_dir: str | os.PathLike) -> None:
    """:class:`RunFormatError` unless the run in ``run_dir`` is of :data:`FORMAT`."""
    found = run_format(run_dir)
    if found != FORMAT:
        raise format_error(run_dir, found)


def refuse_earlier(cfg, run_dir: pathlib.Path, workdir: str | os.PathLike) -> None:
    """Before ``fit`` does any work: :class:`RunFormatError` for a run directory of another format,
    or when a run of ``cfg`` written by format 1 or 2 sits in that format's directory (migrated,
    it is the run this one resumes or has finished)."""
    run_dir = pathlib.Path(run_dir)
    if (run_dir / "config.json").exists():
        check_format(run_dir)
        return
    second = format_2_hash(cfg)
    for found, digest in [(1, d) for d in sorted(format_1_hashes(cfg))] + ([(2, second)] if second else []):
        earlier = run_dir.parent / f"{digest}--{cfg.seed}"
        if (earlier / "config.json").is_file() and run_format(earlier) == found:
            raise RunFormatError(f"{earlier}: this config's run, written by an earlier emojax (run format {found}); "
                                 f"run {migrate_command(workdir)}, then start the command again")


# ---------------------------------------------------------------------------------------------
# Format 1: its names and its hash
# ---------------------------------------------------------------------------------------------
_FINETUNE_1 = "encoder"  # format 1's name of the fine-tuning settings
_LOSS_PRESETS_1 = {"weight": "weighted"}  # format 1's spelling -> today's
_DEFAULTS_1 = (("finetune", "tune_layers", 0), ("dataset", "max_seconds", 60.0))  # hashed away by format 1
_UNHASHED_1 = ("seed", "dataset.path", "dataset.allow_outside_paths", "cache", "progress", "workdir", "train.devices",
               "encoder.remat")
# Encoder layer keys before the families shared one transformer block (format 1's checkpoints
# and weights hashes): family -> {earlier name: today's}.
LAYER_KEYS_1 = {
    "wav2vec2": {"final_norm": "mlp_norm", "intermediate": "fc1", "output": "fc2"},
    "videomae": {"norm_before": "attn_norm", "norm_after": "mlp_norm", "intermediate": "fc1", "output": "fc2"},
    "clip": {"norm1": "attn_norm", "norm2": "mlp_norm"},
}


def _plain(cfg) -> dict:
    return copy.deepcopy(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)


def format_1_hash(cfg) -> str:
    """The hash format 1 gave ``cfg`` (in today's names or in format 1's)."""
    tree = _without_format_3_fields(_plain(cfg))
    if "finetune" in tree:
        tree[_FINETUNE_1] = tree.pop("finetune")
    # Fields today's hash leaves out were never hashed: those added since format 1 as well.
    for dotted in _UNHASHED_1 + tuple(d for d in config_lib._UNHASHED if d not in _UNHASHED_1):
        *path, last = dotted.split(".")
        node = tree
        for key in path:
            node = node.get(key, {})
        node.pop(last, None)
    for section, key, value in _DEFAULTS_1:
        node = tree.get(_FINETUNE_1 if section == "finetune" else section)
        if isinstance(node, dict) and node.get(key) == value:
            node.pop(key)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _respell_loss(tree: dict, names: dict[str, str]) -> Optional[dict]:
    """``tree`` with the loss presets in ``parts.loss`` / ``loss.preset`` renamed by ``names``
    (``None`` when none of them is there)."""
    tree = copy.deepcopy(tree)
    changed = False
    for node, key in ((tree.get("parts"), "loss"), (tree.get("loss"), "preset")):
        if isinstance(node, dict) and isinstance(node.get(key), str):
            spelled = "+".join(names.get(name, name) for name in node[key].split("+"))
            changed |= spelled != node[key]
            node[key] = spelled
    return tree if changed else None


def format_1_hashes(cfg) -> set[str]:
    """The hashes format 1 may have given a run of ``cfg``: as it is, and with its loss preset
    spelled as format 1 could also spell it."""
    tree = _plain(cfg)
    spelled = _respell_loss(tree, {today: earlier for earlier, today in _LOSS_PRESETS_1.items()})
    return {format_1_hash(tree)} | ({format_1_hash(spelled)} if spelled is not None else set())


# ---------------------------------------------------------------------------------------------
# Format 2: the training options format 3 added, and its hash
# ---------------------------------------------------------------------------------------------
# (section, key, the value every run of format 1 and 2 trained with)
_DEFAULTS_2 = (("train", "schedule", "linear"), ("train", "grad_accum_steps", 1), ("train", "min_delta", 0.0),
               ("loss", "label_smoothing", 0.0), ("loss", "class_weights", []))


def _same(value, default) -> bool:
    return (list(value) if isinstance(value, (list, tuple)) else value) == default


def _has_format_3_fields(tree: dict) -> bool:
    return all(isinstance(tree.get(section), dict) and key in tree[section] for section, key, _ in _DEFAULTS_2)


def _without_format_3_fields(tree: dict) -> dict:
    """``tree`` without the fields format 3 added where they hold their earlier values (as format
    1 and 2 hashed a config)."""
    for section, key, value in _DEFAULTS_2:
        node = tree.get(section)
        if isinstance(node, dict) and key in node and _same(node[key], value):
            node.pop(key)
    return tree


def format_2_hash(cfg) -> Optional[str]:
    """The hash format 2 gave a run of ``cfg`` (``None`` when ``cfg`` sets a field format 3 added
    to another value than every earlier run trained with: no earlier run is of that config)."""
    tree = _plain(cfg)
    if any(isinstance(tree.get(section), dict) and key in tree[section] and not _same(tree[section][key], value)
           for section, key, value in _DEFAULTS_2):
        return None
    return config_lib.config_hash(_without_format_3_fields(tree))


def config_of_format_3(tree: dict) -> tuple[dict, list[str]]:
    """A format-2 ``config.json`` with the fields format 3 added written, and what changed, in words."""
    tree, changes = _plain(tree), []
    for section, key, value in _DEFAULTS_2:
        if isinstance(tree.get(section), dict) and key not in tree[section]:
            tree[section][key] = copy.deepcopy(value)
            changes.append(f"{section}.{key}={value} written")
    return tree, changes


def config_of_format_2(tree: dict) -> tuple[dict, list[str]]:
    """A format-1 ``config.json`` in today's names, and what changed, in words."""
    tree, changes = _plain(tree), []
    if _FINETUNE_1 in tree and "finetune" not in tree:
        tree["finetune"] = tree.pop(_FINETUNE_1)
        changes.append(f"{_FINETUNE_1} -> finetune")
    spelled = _respell_loss(tree, _LOSS_PRESETS_1)
    if spelled is not None:
        tree = spelled
        changes.append(", ".join(f"loss {a} -> {b}" for a, b in _LOSS_PRESETS_1.items()))
    for section, key, value in _DEFAULTS_1:
        if isinstance(tree.get(section), dict) and key not in tree[section]:
            tree[section][key] = value
            changes.append(f"{section}.{key}={value} written")
    return tree, changes


_ADAPTER = re.compile(r"layers\.(\d+)\.(\w+)")  # a LoRA adapter's module path


def layer_keys_renamed(tree, families: dict[str, str]) -> tuple[object, int]:
    """``(tree, count)``: a checkpoint's tree (nested mappings and lists, as Orbax restores it or
    its metadata) with the layer keys of the encoders under ``encoder/{m}`` (their parameters and
    optimizer moments: ``.../layers/<i>/<key>``; LoRA adapters: ``.../layers.<i>.<key>``) renamed
    from format 1's names to today's, for the family of each modality in ``families``; ``count``
    keys were renamed."""
    count = 0

    def walk(node, names: dict, where: Optional[str]):
        # where: "encoder" (the modalities' encoders), "layers" (an encoder's layers), "layer" (one)
        nonlocal count
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v, names, "layer" if where == "layers" else None) for v in node)
        if not isinstance(node, Mapping):
            return node
        out = {}
        for key, value in node.items():
            new, adapter = key, _ADAPTER.fullmatch(str(key))
            if where == "layer":
                new = names.get(key, key)
            elif adapter and names:
                new = f"layers.{adapter[1]}.{names.get(adapter[2], adapter[2])}"
            count += new != key
            below = LAYER_KEYS_1.get(families.get(key, ""), {}) if where == "encoder" else names
            inner = {"encoder": "encoder", "layers": "layers"}.get(key, "layer" if where == "layers" else None)
            out[new] = walk(value, below, inner)
        return out

    return walk(tree, {}, None), count


def weights_view_1(params, family: str):
    """Encoder parameters with their layer keys as format 1 hashed them (its weights hash)."""
    names = {today: earlier for earlier, today in LAYER_KEYS_1.get(family, {}).items()}
    if not names or "layers" not in params:
        return params
    return {**params, "layers": [{names.get(k, k): v for k, v in layer.items()} for layer in params["layers"]]}


# ---------------------------------------------------------------------------------------------
# The migration
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Migration:
    """One run of an earlier format: where it is, where it goes, its config in today's names,
    what changes (in words) and, for a run left as it is, why."""

    source: pathlib.Path
    target: pathlib.Path
    config: dict = dataclasses.field(default_factory=dict)
    changes: list[str] = dataclasses.field(default_factory=list)
    refused: Optional[str] = None
    done: bool = False
    earlier_format: int = 1  # the run's format before the migration
    rehashed: list[str] = dataclasses.field(default_factory=list)  # modalities stored under a new hash


def _holder(run_dir: pathlib.Path) -> Optional[str]:
    """Who holds the run's lock (:class:`emojax.runs.checkpoint.RunLock`), or ``None``; the lock
    file is read, never written."""
    import fcntl

    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        from emojax.runs.checkpoint import RunLock

        return RunLock.holder(fd)
    finally:
        os.close(fd)


def _families(cfg: dict) -> dict[str, str]:
    """Modality -> family of the encoders whose layer keys format 2 renamed."""
    return {m: spec.get("family") for m, spec in (cfg.get("encoders") or {}).items()
            if isinstance(spec, dict) and spec.get("family") in LAYER_KEYS_1}


def _checkpoint_items(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(step / "default" for kind in ("state", "best") if (run_dir / kind).is_dir()
                  for step in (run_dir / kind).iterdir() if step.name.isdigit())


def _renamed_in(item: pathlib.Path, families: dict[str, str]) -> int:
    """How many layer keys of the Orbax checkpoint ``item`` format 2 renames."""
    import orbax.checkpoint as ocp

    if not families or not item.is_dir():
        return 0
    handler = ocp.StandardCheckpointHandler()
    try:
        metadata = handler.metadata(item)
        return layer_keys_renamed(getattr(metadata, "tree", metadata), families)[1]  # its nested dicts and lists
    finally:
        handler.close()


def _recorded_hashes(run_dir: pathlib.Path) -> list[str]:
    """The hashes a run was made with: ``meta.json``'s, ``results.json``'s, its directory's name."""
    recorded = [(read_json_object(run_dir / name) or {}).get("hash") for name in ("meta.json", "results.json")]
    return [str(digest) for digest in recorded if digest] + [run_dir.name.split("--")[0]]


def _plan_run(run: pathlib.Path, workdir: pathlib.Path, found: int = 1) -> Migration:
    """Where the run of format ``found`` (1 or 2) in ``run`` goes and what changes, or why it is
    left as it is."""
    move = Migration(run, run, earlier_format=found)
    raw = read_json_object(run / "config.json") or {}
    try:
        second, changes = config_of_format_2(raw)
        move.config, added = config_of_format_3(second)
        changes += added
        cfg = ml_collections.ConfigDict(move.config)
        move.target = config_lib.run_dir(cfg, workdir, run.relative_to(workdir / "checkpoints").parts[0])
        digest = config_lib.config_hash(cfg)
        # The hashes the run may have been made with: format 1's, format 2's, today's (a run whose
        # config.json, or directory, was rewritten before a kill).
        made = {format_1_hash(raw), config_lib.config_hash(second), digest, format_2_hash(cfg)} | format_1_hashes(cfg)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        move.refused = f"config.json is not a run config ({err})"
        return move
    recorded = _recorded_hashes(run)
    edited = [recorded_hash for recorded_hash in recorded if recorded_hash not in made]
    holder = _holder(run)
    if edited:
        now = format_1_hash(raw) if found == 1 else config_lib.config_hash(second)
        move.refused = (f"config.json was edited since the run was made as {edited[0]} (its format-{found} hash is now "
                        f"{now}); undo the edit and migrate again")
    elif holder:
        move.refused = f"a process holds the run ({holder}); migrate again once it has finished"
    elif move.target != run and move.target.exists():
        move.refused = f"its directory in format {FORMAT}, {move.target}, exists; move one of the two aside"
    if move.refused:
        return move
    families = _families(move.config) if found == 1 else {}
    renamed = [f"{item.parent.parent.name}/{item.parent.name}" for item in _checkpoint_items(run)
               if _renamed_in(item, families)]
    move.rehashed = [m for m, info in _encoder_record(run).items() if m in families and "error" not in info]
    move.changes = ([f"config.json: {', '.join(changes)}"] if changes else []) \
        + ([f"hash {recorded[0]} -> {digest}"] if recorded[0] != digest else []) \
        + ([f"layer keys of {', '.join(renamed)}"] if renamed else []) \
        + ([f"encoder {'+'.join(move.rehashed)} stored under today's weights hash"] if move.rehashed else []) \
        + [f"format {FORMAT}"]
    return move


def plan(workdir: str | os.PathLike) -> tuple[list[Migration], int]:
    """The runs under ``workdir`` of an earlier format, each with where it goes and what changes
    (or why it is left as it is: a process holds it, its target is taken, its config was edited),
    and how many runs are of :data:`FORMAT` already."""
    from emojax.runs.store import find_runs  # import cost: JAX

    workdir = pathlib.Path(workdir)
    plans, current = [], 0
    for run in find_runs(workdir):
        found = run_format(run)
        if found == FORMAT:
            current += 1
        elif found > FORMAT:
            plans.append(Migration(run, run, refused=format_error(run, found).short))
        else:
            plans.append(_plan_run(run, workdir, found))
    return plans, current


def _encoder_record(run_dir: pathlib.Path) -> dict:
    return read_json_object(run_dir / "encoders.json") or {}


def migrate(workdir: str | os.PathLike, *, apply: bool = False) -> Iterator[Migration]:
    """Every run under ``workdir`` of an earlier format, migrated to :data:`FORMAT` with ``apply``
    (``done``), else only planned; yielded one at a time, as each is done. Refused runs are left
    as they are. Running it again finds nothing left to do; a migration stopped half-way (a kill)
    is finished by running it again."""
    from emojax.runs.checkpoint import CheckpointError

    workdir = pathlib.Path(workdir)
    plans, _ = plan(workdir)
    moved = {str(p.source.resolve()): str(p.target.resolve()) for p in plans if not p.refused}
    for move in plans:
        if apply and not move.refused:
            try:
                _migrate_run(move, workdir, moved)
                move.done = True
            except CheckpointError as err:  # a run locked meanwhile, an altered store entry
                move.refused = f"{err}; what was done is kept: migrate again once that is fixed"
        yield move


def migrate_checkpoint(item: pathlib.Path, families: dict[str, str]) -> int:
    """Rewrite the Orbax checkpoint in the folder ``item`` (``state/<epoch>/default``) with format
    1's encoder layer keys under today's names; returns how many keys were renamed (0: the folder
    is left as it is). The new checkpoint is written beside it and swapped in, so a kill leaves
    one of the two (the next migration finishes the swap)."""
    import orbax.checkpoint as ocp

    fresh, earlier = item.with_name(f".{item.name}.format-{FORMAT}"), item.with_name(f".{item.name}.format-1")
    if not item.exists() and fresh.exists():
        os.rename(fresh, item)
    shutil.rmtree(fresh, ignore_errors=True)
    if item.exists():
        shutil.rmtree(earlier, ignore_errors=True)
    if not _renamed_in(item, families):
        return 0
    checkpointer = ocp.StandardCheckpointer()
    try:
        tree, count = layer_keys_renamed(checkpointer.restore(item), families)
        checkpointer.save(fresh, tree)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    os.rename(item, earlier)
    os.rename(fresh, item)
    shutil.rmtree(earlier)
    return count


def _rehash_encoders(run_dir: pathlib.Path, cfg: dict, workdir: pathlib.Path) -> None:
    """Store the run's encoders of the families in :data:`LAYER_KEYS_1` under today's weights hash
    (loaded from their entries, checked against the hash format 1 recorded) and name those entries
    in ``encoders.json``."""
    import jax.numpy as jnp

    from emojax.encoders.bert import params_hash
    from emojax.encoders.media_encoders import media_encoder
    from emojax.files import write_json_atomic
    from emojax.runs import store
    from emojax.runs.checkpoint import CheckpointError

    record = _encoder_record(run_dir)
    for modality, family in _families(cfg).items():
        info = record.get(modality) or {}
        if not info.get("hash") or "error" in info:
            continue
        entry = store.check_entry(store.store_root(workdir) / info["hash"])
        dtype = jnp.bfloat16 if cfg.get("precision") == "bfloat16" else jnp.float32
        encoder = media_encoder(modality, {**cfg["encoders"][modality], "model": str(entry)}, dtype)
        if encoder.weights_hash == info["hash"]:
            continue  # stored again by a migration stopped after it
        if params_hash(weights_view_1(encoder.params, family), repr(encoder.config)) != info["hash"]:
            raise CheckpointError(f"{entry}: does not hold the {modality} encoder {run_dir} recorded "
                                  f"({info['hash'][:12]}); restore the entry, or train the run again")
        store.store_encoder(encoder, workdir, model=info.get("model", ""))
        record[modality] = {**info, "hash": encoder.weights_hash}
        write_json_atomic(run_dir / store.RUN_RECORD, record)


def _migrate_run(move: Migration, workdir: pathlib.Path, moved: dict[str, str]) -> None:
    """Migrate one planned run, its lock held. Every step can be done again, the run is moved
    after its files are rewritten, and its format recorded last: a migration stopped anywhere
    leaves a run of its earlier format that the next one finishes."""
    from emojax.files import write_json_if_changed
    from emojax.runs import store
    from emojax.runs.checkpoint import RunLock

    cfg = ml_collections.ConfigDict(move.config)
    digest = config_lib.config_hash(cfg)
    with RunLock(move.source):
        if move.earlier_format == 1:  # the layer keys and weights hashes format 2 renamed
            families = _families(move.config)
            for item in _checkpoint_items(move.source):
                migrate_checkpoint(item, families)
            _rehash_encoders(move.source, move.config, workdir)
        config_lib.save_config(cfg, move.source / "config.json")
        # Each link to the entry encoders.json names (stored again above, or by a migration
        # stopped after that), else where it points now.
        record, links, entries = _encoder_record(move.source), move.source / store.RUN_LINKS, {}
        for link in (sorted(links.iterdir()) if links.is_dir() else []):
            named = store.store_root(workdir) / str((record.get(link.name) or {}).get("hash"))
            if named.is_dir():
                entries[link.name] = named
            elif link.is_symlink() and link.exists():
                entries[link.name] = pathlib.Path(os.path.realpath(link))
        if move.target != move.source:
            move.target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(move.source, move.target)
        for modality, entry in entries.items():
            store.link_entry(move.target, modality, entry)
        teacher = read_json_object(move.target / "teacher.json")
        if teacher and str(teacher.get("run_dir")) in moved:
            write_json_if_changed(move.target / "teacher.json", {**teacher, "run_dir": moved[teacher["run_dir"]]})
        results = read_json_object(move.target / "results.json")
        if results is not None:
            write_json_if_changed(move.target / "results.json", {**results, "hash": digest})
        meta = read_json_object(move.target / RECORD)
        if meta is not None:
            write_json_if_changed(move.target / RECORD, {**meta, "hash": digest, "format": FORMAT})
