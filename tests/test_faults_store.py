"""The encoder store on a full disk: an encoder that cannot be stored does not stop training.

The store's root (``{workdir}/checkpoints/encoders``) is a small tmpfs mounted for the test, so
the run's own files go to the ordinary disk and only the store entry runs out of space. Each
writer of an entry meets the full disk in turn, by the size of the tmpfs: the copy of the source
folder's files (OSError, ENOSPC), the tokenizer's ``tokenizer.json`` (the tokenizers library's
plain Exception) and ``model.safetensors`` (SafetensorError). Mounting needs root (CI runs as
root); elsewhere those tests are skipped, and the writers' errors are also raised on demand.
"""
import contextlib
import json
import logging
import os
import pathlib
import shutil
import subprocess

import pytest
from safetensors import SafetensorError

from emojax.training.loop import fit
from emojax.training.preparation import prepare
from emojax.runs import store
from emojax.runs.checkpoint import CheckpointError
from test_faults import scores, text_config

EPOCHS = 2


@contextlib.contextmanager
def small_tmpfs(folder: pathlib.Path, kib: int):
    """A tmpfs of ``kib`` KiB mounted on ``folder`` (created), unmounted on leaving. Skips the
    test where mounting is not permitted (not root, no ``mount``, or the mount is refused)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to mount a tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("store-fault-cache")


@pytest.fixture(scope="module")
def config(text_meld, tiny_bert, cache):
    return text_config(text_meld, tiny_bert, cache, epochs=EPOCHS)


@pytest.fixture(scope="module")
def featurizer(config, tmp_path_factory):
    """The run's featurizer, as ``fit`` builds it (``prepare``)."""
    return prepare(config, tmp_path_factory.mktemp("store-fault-prepare")).featurizer


def store_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("encoder store:")]


def assert_not_stored(run_dir: pathlib.Path, workdir: pathlib.Path, record: dict, caplog, reason: str) -> None:
    """The encoder went unstored with ``reason`` in its record and one warning line, and the store
    holds nothing: no entry, no temporary folder, no link from the run."""
    assert reason in record["T"]["error"], record
    assert json.loads((run_dir / store.RUN_RECORD).read_text()) == record
    warnings = store_warnings(caplog)
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert "\n" not in line
    assert line.startswith(f"encoder store: the T encoder of {run_dir} was not stored in {store.store_root(workdir)} (")
    assert reason in line and line.endswith("; the run trains on, and evaluation and inference will load this "
                                             f"encoder from its source {record['T']['model']}")
    assert os.listdir(store.store_root(workdir)) == []
    assert not os.path.lexists(run_dir / store.RUN_LINKS / "T")


# Which writer meets the full disk, by the tmpfs's size (pages of 4 KiB): the first copied
# source file, the tokenizer's tokenizer.json, the weights.
FULL_DISKS = [
    pytest.param(4, "OSError: [Errno 28] No space left on device", OSError, id="copy-OSError"),
    pytest.param(12, "cannot write the tokenizer (No space left on device (os error 28))", CheckpointError,
                 id="tokenizer-Exception"),
    pytest.param(48, "SafetensorError: Error while serializing: I/O error: No space left on device", SafetensorError,
                 id="weights-SafetensorError"),
]


@pytest.mark.parametrize("kib,reason,kind", FULL_DISKS)
def test_store_on_a_full_disk_leaves_no_entry(featurizer, tmp_path, caplog, kib, reason, kind):
    workdir, run_dir = tmp_path / "work", tmp_path / "work" / "run"
    with small_tmpfs(store.store_root(workdir), kib):
        with caplog.at_level(logging.WARNING):
            record = store.link_run_encoders(run_dir, featurizer, workdir)
        assert_not_stored(run_dir, workdir, record, caplog, reason)
        with pytest.raises(kind, match=r"No space left on device"):
            store.link_run_encoders(tmp_path / "strict", featurizer, workdir, strict=True)
        assert os.listdir(store.store_root(workdir)) == []


def _tokenizers_error(*args, **kwargs):
    raise Exception("No space left on device (os error 28)")  # what the tokenizers library raises


def _safetensors_error(*args, **kwargs):
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer", ["weights", "tokenizer"])
def test_store_writer_errors_do_not_escape(featurizer, tmp_path, caplog, monkeypatch, writer):
    """The writers' own errors, raised on demand (no tmpfs needed): SafetensorError from
    ``save_file``, the plain Exception of the tokenizers library from ``save_pretrained``."""
    if writer == "weights":
        monkeypatch.setattr(store, "save_file", _safetensors_error)
        reason = "SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)"
    else:
        monkeypatch.setattr(featurizer.encoders["T"].encoder.tokenizer, "save_pretrained", _tokenizers_error)
        reason = "cannot write the tokenizer (No space left on device (os error 28))"
    workdir, run_dir = tmp_path / "work", tmp_path / "work" / "run"
    with caplog.at_level(logging.WARNING):
        record = store.link_run_encoders(run_dir, featurizer, workdir)
    assert_not_stored(run_dir, workdir, record, caplog, reason)


def test_store_bug_is_not_taken_for_a_full_disk(featurizer, tmp_path, monkeypatch):
    """Only what the writers raise is caught: an error of another kind (a bug) still raises,
    and leaves no partial entry either."""
    def bug(*args, **kwargs):
        raise TypeError("save_file() got an unexpected keyword argument")

    monkeypatch.setattr(store, "save_file", bug)
    with pytest.raises(TypeError, match="unexpected keyword"):
        store.link_run_encoders(tmp_path / "run", featurizer, tmp_path)
    assert os.listdir(store.store_root(tmp_path)) == []


@pytest.mark.slow
def test_full_store_disk_does_not_stop_training(config, tmp_path, caplog):
    """A run whose store entry cannot be written trains to the end, with the scores of a clean
    run of the same config, one warning line, and nothing left in the store."""
    clean = fit(config, tmp_path / "clean")
    workdir = tmp_path / "full"
    with small_tmpfs(store.store_root(workdir), 48):
        with caplog.at_level(logging.WARNING):
            run_dir = fit(config, workdir)
        record = store.run_encoders(run_dir)
        assert_not_stored(run_dir, workdir, record, caplog, "SafetensorError: Error while serializing: I/O error: "
                                                            "No space left on device (os error 28)")
    assert scores(json.loads((run_dir / "results.json").read_text())) == \
        scores(json.loads((clean / "results.json").read_text()))
    assert "error" not in store.run_encoders(clean)["T"]
