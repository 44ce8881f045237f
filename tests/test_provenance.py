"""Where a run came from: provenance.json's versions, git state, devices, host, command line and
its starts and ends, checked against git, importlib.metadata and JAX directly."""
import importlib.metadata
import json
import platform
import shutil
import subprocess

import jax
import pytest

from emojax.runs import provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout


@needs_git
def test_git_state_of_a_checkout_names_its_commit_and_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    assert provenance.git_state(repo) == {"commit": commit, "dirty": False}
    (repo / "runs").mkdir()
    (repo / "runs" / "new.json").write_text("{}")  # untracked files: not a change
    assert provenance.git_state(repo) == {"commit": commit, "dirty": False}
    (repo / "a.txt").write_text("two\n")
    assert provenance.git_state(repo) == {"commit": commit, "dirty": True}
    # A folder inside a checkout but not its top (an installed emojax in a venv of another repo): none.
    assert provenance.git_state(repo / "runs") is None


def test_git_state_is_none_without_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run: still no error
    assert provenance.git_state(tmp_path) is None


def test_a_start_records_versions_devices_host_and_command():
    entry = provenance.start_entry(argv=["launch.train", "--config.seed=3"])
    assert entry["emojax"] == importlib.metadata.version("emojax")
    assert entry["packages"]["jax"] == jax.__version__
    assert entry["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert set(entry["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy"}
    assert entry["devices"] == [{"id": d.id, "platform": d.platform, "kind": d.device_kind,
                                 "process": d.process_index} for d in jax.devices()]
    assert entry["host"] == platform.node() and entry["command"] == ["launch.train", "--config.seed=3"]
    assert entry["ended"] is None and entry["started"].endswith("+00:00")
    assert provenance.package_version("no-such-distribution-emojax") is None


def test_starts_append_and_each_end_closes_the_last(tmp_path):
    first = provenance.record_start(tmp_path, provenance.start_entry(argv=["a"], device_list=[]))
    provenance.record_end(tmp_path, finished=False)
    provenance.record_start(tmp_path, provenance.start_entry(argv=["b"], device_list=[]))
    record = json.loads((tmp_path / provenance.PROVENANCE).read_text())
    assert [s["command"] for s in record["starts"]] == [["a"], ["b"]]
    assert record["starts"][0]["finished"] is False and record["starts"][0]["ended"] >= first["started"]
    assert record["starts"][1]["ended"] is None  # a start killed on the way keeps no end
    provenance.record_end(tmp_path, finished=True)
    assert provenance.read_provenance(tmp_path)["starts"][1]["finished"] is True
    assert not [p for p in tmp_path.iterdir() if p.name != provenance.PROVENANCE]  # no temporary file left


def test_a_damaged_record_is_refused_naming_the_file(tmp_path):
    (tmp_path / provenance.PROVENANCE).write_text("[1, 2")
    with pytest.raises(ValueError, match=r"provenance\.json: not a provenance record"):
        provenance.record_start(tmp_path, {"started": "now"})
    with pytest.raises(ValueError, match="no start to end"):
        provenance.record_end(tmp_path / "empty", finished=True)
