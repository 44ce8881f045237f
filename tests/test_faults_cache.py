"""Clearing the feature cache never loses data: a folder that is not a cache is refused and left as
it is, only the files the cache wrote are deleted (and said before), foreign files survive, and a
writer at work during a clear (a shard being written, an input set being built) keeps working."""
import io
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from emojax import files
from emojax.features import cache as cache_lib
from emojax.features.cache import MARKER, TEMP_GRACE_S, FeatureCache, NotACacheError
from emojax.files import building_folder, digest
from launch.tool import ToolError, cmd_cache, human_bytes

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS_A = digest("namespace", "a")[:24]
NS_B = digest("namespace", "b")[:24]
SET_KEY = digest("inputs", "a")[:32]
OTHER_KEY = digest("inputs", "b")[:32]
REFUSED_TAIL = ("nothing in it was changed; give the cache folder itself (WORKDIR/cache/features, or the run's "
                "cache.dir)")


def _rows(keys, dim=4):
    return np.stack([np.full(dim, float(k.split("-")[1]), np.float32) for k in keys])


def _snapshot(folder: pathlib.Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (``None`` for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def _write(path: pathlib.Path, text: str = "mine") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _age(path: pathlib.Path, seconds: float) -> None:
    """Set the modification time of ``path`` (and what a folder holds) ``seconds`` back."""
    then = time.time() - seconds
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (then, then))


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _shard_temp(folder: pathlib.Path, pid: int) -> pathlib.Path:
    """A temporary file named as put_many's write_bytes_atomic names it, of process ``pid``."""
    return _write(folder / f".shard-{time.time_ns()}-{pid}-0badcafe.safetensors.1234abcd.tmp", "half a shard")


def _cache(root: pathlib.Path) -> FeatureCache:
    """A cache with two namespaces: NS_A holds 2 shards, NS_B one."""
    cache = FeatureCache(root)
    cache.put_many(NS_A, ["k-1", "k-2"], _rows(["k-1", "k-2"]))
    cache.put_many(NS_A, ["k-3"], _rows(["k-3"]))
    cache.put_many(NS_B, ["k-4"], _rows(["k-4"]))
    return cache


def _clear(root, clear) -> list[str]:
    out = io.StringIO()
    cmd_cache(root, clear=clear, out=out)
    return out.getvalue().splitlines()


def _shards(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.glob("shard-*.safetensors"))


def _hidden_set(root: pathlib.Path, key: str) -> pathlib.Path:
    """An input set as fine-tuning stores it (emojax.training.finetune_text.store_hidden_states)."""
    from emojax.training.finetune_text import store_hidden_states

    ids = [[1, 2, 3], [4, 5]]
    store_hidden_states(root, key, ids, lambda input_ids, mask: np.ones(input_ids.shape + (2,), np.float32),
                        [4], pad_id=0, progress=False)
    return root / key


def test_a_folder_of_notes_is_refused_and_every_file_survives(tmp_path):
    notes = tmp_path / "notes"
    _write(notes / "drafts" / "plan.md")
    _write(notes / "drafts" / "old" / "ideas.md")
    _write(notes / "todo.txt")
    before = _snapshot(notes)
    with pytest.raises(ToolError) as err:
        cmd_cache(notes, clear="all", out=io.StringIO())
    assert str(err.value) == (f"--cache_dir: {notes} is not a feature cache emojax wrote (no {MARKER} marker; it holds "
                              f"drafts/ (not a namespace: 24 hex digits), todo.txt (a file)); {REFUSED_TAIL}")
    with pytest.raises(ToolError):  # showing it is refused as well: it is never scanned
        cmd_cache(notes, out=io.StringIO())
    for call in (lambda c: c.clear(), lambda c: c.clear("drafts"), lambda c: c.clear_inputs()):
        with pytest.raises(NotACacheError, match="is not a feature cache emojax wrote"):
            call(FeatureCache(notes))
    assert _snapshot(notes) == before  # no file lost, and no marker written into it


def test_a_workdir_of_runs_is_refused_and_survives(tmp_path):
    workdir = tmp_path / "runs"
    run = workdir / "checkpoints" / "training" / "MELD--E" / "frozen--16--ce" / "1xE--T" / "ee5bf385--0"
    _write(run / "data.json", json.dumps({"path": "/data/MELD", "kind": "meld"}))
    _write(run / "config.json", "{}")
    entry = workdir / "checkpoints" / "encoders" / digest("weights")
    _write(entry / "model.safetensors", "weights")
    _write(entry / "config.json", "{}")
    cache = _cache(workdir / "cache" / "features")
    del cache
    before = _snapshot(workdir)
    with pytest.raises(ToolError) as err:
        _clear(workdir, "all")
    assert str(err.value) == (
        f"--cache_dir: {workdir} is not a feature cache emojax wrote (no {MARKER} marker; it holds "
        f"cache/ (not a namespace: 24 hex digits), checkpoints/ (not a namespace: 24 hex digits)); {REFUSED_TAIL}")
    with pytest.raises(ToolError) as err:  # the encoder store: hex-named folders, but not of shards
        _clear(entry.parent, "all")
    assert f"it holds {entry.name}/ (not a namespace: 24 hex digits)); " in str(err.value)
    assert _snapshot(workdir) == before


def test_clear_removes_exactly_the_shards_and_keeps_a_foreign_file(tmp_path):
    root = tmp_path / "features"
    _cache(root)
    foreign = _write(root / NS_A / "notes.txt", "my notes")
    kept_b = _snapshot(root / NS_B)
    shards = _shards(root / NS_A)
    size = sum(p.stat().st_size for p in shards)
    lines = _clear(root, NS_A[:6])
    assert lines[:5] == [
        f"to remove from {root}:",
        f"  {NS_A}  2 shard(s)  {human_bytes(size)}",
        f"total: 2 shard(s) in 1 namespace(s), {human_bytes(size)}",
        f"left alone: {foreign}: not a file the feature cache writes",
        f"removed 2 shard(s) of 1 namespace(s) from {root}",
    ]
    assert not any(p.exists() for p in shards)
    assert foreign.read_text() == "my notes"  # and its folder stays, since it still holds something
    assert sorted(p.name for p in (root / NS_A).iterdir()) == ["notes.txt"]
    assert _snapshot(root / NS_B) == kept_b  # another namespace is untouched
    assert (root / MARKER).is_file()
    # --clear=all: the rest of the shards; a foreign folder beside the namespaces is named and kept.
    scratch = _write(root / "scratch" / "a.txt")
    lines = _clear(root, "all")
    assert f"left alone: {root / 'scratch'}: not a namespace the feature cache makes (24 hex digits)" in lines
    assert f"removed 1 shard(s) of 2 namespace(s) from {root}" in lines
    assert not (root / NS_B).exists() and scratch.read_text() == "mine" and foreign.read_text() == "my notes"


def test_a_writers_temporary_file_survives_a_clear(tmp_path):
    root = tmp_path / "features"
    _cache(root)
    folder = root / NS_A
    dead = _dead_pid()
    live = _shard_temp(folder, os.getpid())  # a write in progress in this process...
    _age(live, 2 * TEMP_GRACE_S)  # ...even one that has been running for long
    young = _shard_temp(folder, dead)  # a writer on another host, or one that just died
    stale = _shard_temp(folder, dead)
    _age(stale, 2 * TEMP_GRACE_S)
    stale_size = stale.stat().st_size
    size = sum(p.stat().st_size for p in _shards(folder)) + stale_size
    lines = _clear(root, NS_A)
    assert lines[1] == f"  {NS_A}  2 shard(s), 1 temporary file(s) of writers that are gone  {human_bytes(size)}"
    assert f"left alone: {live}: temporary file of a write in progress (process {os.getpid()} is running)" in lines
    assert any(line.startswith(f"left alone: {young}: temporary file of a write that may be in progress (modified ")
               and line.endswith(f"s ago; kept for {TEMP_GRACE_S:.0f} s)") for line in lines)
    assert live.read_text() == "half a shard" and young.read_text() == "half a shard"
    assert not stale.exists() and _shards(folder) == []
    assert folder.is_dir()  # never removed while it holds a writer's file


def test_a_write_racing_a_clear_of_its_namespace_still_succeeds(tmp_path, monkeypatch):
    root = tmp_path / "features"
    writer = FeatureCache(root)
    writer.put_many(NS_A, ["k-1"], _rows(["k-1"]))
    other = FeatureCache(root)  # e.g. `launch.tool cache --clear` in another process
    real_open = os.open
    raced = []

    def open_after_a_clear(path, *args, **kwargs):
        # The clear lands between write_bytes_atomic's mkdir and its temporary file.
        if str(path).endswith(".tmp") and pathlib.Path(path).parent == root / NS_A and not raced:
            raced.append(other.clear(NS_A))
            raced.append((root / NS_A).exists())
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", open_after_a_clear)
    shard = writer.put_many(NS_A, ["k-2", "k-3"], _rows(["k-2", "k-3"]))
    monkeypatch.undo()
    assert raced == [1, False]  # the clear removed the old shard and the empty folder under the writer
    assert _shards(root / NS_A) == [shard]
    for reader in (writer, FeatureCache(root)):
        found = reader.get_many(NS_A, ["k-1", "k-2", "k-3"])
        assert sorted(found) == ["k-2", "k-3"]
        np.testing.assert_array_equal(np.stack([found["k-2"], found["k-3"]]), _rows(["k-2", "k-3"]))


def test_clear_all_removes_only_input_sets_emojax_wrote(tmp_path):
    root = tmp_path / "features"
    _cache(root)
    inputs = root / "_inputs"
    stored = _hidden_set(inputs, SET_KEY)
    assert sorted(p.name for p in stored.iterdir()) == ["hidden.bin", "index.json"]
    stored_size = sum(p.stat().st_size for p in stored.iterdir())
    readme = _write(inputs / "README.txt", "about my inputs")
    mixed = _hidden_set(inputs, OTHER_KEY)
    _write(mixed / "notes.md", "mine")
    mixed_before = _snapshot(mixed)
    stale = inputs / f".{SET_KEY}.partial-{_dead_pid()}-00c0ffee"
    _write(stale / "hidden.bin", "half")
    _age(stale, 2 * TEMP_GRACE_S)
    building = inputs / f".{SET_KEY}-q1w2e3r4"  # tempfile.mkdtemp's name for a media input set being built
    _write(building / "frames.bin", "half")
    with building_folder(inputs / digest("inputs", "c")[:32]) as work:  # a live writer's partial folder
        _write(work / "hidden.bin", "half")
        _age(work, 2 * TEMP_GRACE_S)
        shard_size = sum(p.stat().st_size for ns in (NS_A, NS_B) for p in _shards(root / ns))
        lines = _clear(root, "all")
        assert work.is_dir() and (work / "hidden.bin").read_text() == "half"
    assert f"  _inputs/{SET_KEY}  stored input set  {human_bytes(stored_size)}" in lines
    assert f"  _inputs/{stale.name}  temporary input folder of a writer that is gone  4 B" in lines
    assert f"total: 3 shard(s) in 2 namespace(s), 1 input set(s), {human_bytes(shard_size + stored_size + 4)}" in lines
    assert f"left alone: {mixed}: holds notes.md, which the input store never writes" in lines
    assert f"left alone: {readme}: not an input set emojax writes" in lines
    assert f"left alone: {work}: temporary folder of a write in progress (process {os.getpid()} is running)" in lines
    assert any(line.startswith(f"left alone: {building}: temporary folder of a write that may be in progress")
               for line in lines)
    assert "removed 1 stored fine-tuning input set(s)" in lines
    assert not stored.exists() and not stale.exists()
    assert readme.read_text() == "about my inputs" and _snapshot(mixed) == mixed_before
    assert (building / "frames.bin").read_text() == "half"
    assert sorted(p.name for p in inputs.iterdir()) == sorted([building.name, OTHER_KEY, "README.txt"])


def test_an_earlier_version_cache_without_marker_is_accepted(tmp_path):
    root = tmp_path / "features"
    _cache(root)
    _hidden_set(root / "_inputs", SET_KEY)
    old_temp = _write(root / NS_A / f".shard-1-{os.getpid()}-0badcafe.safetensors.tmp")  # earlier temp name
    (root / MARKER).unlink()  # written before the marker existed
    lines = _clear(root, "all")
    assert f"removed 3 shard(s) of 2 namespace(s) from {root}" in lines
    assert "removed 1 stored fine-tuning input set(s)" in lines
    assert json.loads((root / MARKER).read_text()) == {"what": "emojax feature cache", "format": 1}
    assert old_temp.exists() and list((root / "_inputs").iterdir()) == []
    # Without the marker, one file the cache never writes makes the folder not a cache: refused.
    earlier = tmp_path / "earlier"
    _cache(earlier)
    (earlier / MARKER).unlink()
    foreign = _write(earlier / NS_B / "model.safetensors", "weights")
    before = _snapshot(earlier)
    with pytest.raises(ToolError) as err:
        _clear(earlier, "all")
    assert str(err.value) == (f"--cache_dir: {earlier} is not a feature cache emojax wrote (no {MARKER} marker; "
                              f"it holds {NS_B}/model.safetensors (not a shard)); {REFUSED_TAIL}")
    assert _snapshot(earlier) == before and foreign.read_text() == "weights"
    # A new cache on an empty folder is marked; on a folder that holds other things it is not.
    assert (FeatureCache(tmp_path / "new").root / MARKER).is_file()
    assert cache_lib.cache_problem(tmp_path / "new") is None
    _write(tmp_path / "mixed" / "todo.txt")
    FeatureCache(tmp_path / "mixed")
    assert not (tmp_path / "mixed" / MARKER).exists()


def test_the_tool_refuses_a_folder_of_notes_in_one_line(tmp_path):
    notes = tmp_path / "notes"
    _write(notes / "drafts" / "plan.md")
    _write(notes / "todo.txt")
    before = _snapshot(notes)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "launch.tool", "cache", f"--cache_dir={notes}", "--clear=all"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --cache_dir: {notes} is not a feature cache emojax wrote (no {MARKER} marker; it "
                      f"holds drafts/ (not a namespace: 24 hex digits), todo.txt (a file)); {REFUSED_TAIL}"]
    assert _snapshot(notes) == before
