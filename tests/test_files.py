"""Value and file fingerprints, atomic file writes and folders built aside (emojax.files)."""
import hashlib
import io
import json
import pathlib

import numpy as np
import pytest

from emojax import files
from emojax.files import (building_folder, digest, file_sha256, publish_folder, write_bytes_atomic,
                          write_json_atomic, write_text_atomic)

# Keys that feature caches, stored fine-tuning inputs and encoder namespaces already carry on users'
# disks (written by the key functions of emojax.features.cache, emojax.features.featurizer, emojax.training.finetune and
# emojax.encoders.media_encoders, which all computed sha256 of json.dumps(parts, sort_keys=True,
# default=str)). A different value here means every existing cache would be silently recomputed.
STORED_KEYS = [
    (("text", "sentence-transformers/all-MiniLM-L6-v2", "0f" * 32, "mean", 128),
     "67b7fc0cab370e87a58cd850cea1b9d700a0df050e82459535d74bc31d1d2595"),
    (("Qué tal, Ross? — “fine”",),
     "da54d0d9312b56654befa363de6b0a7d59197d029567c8792755f822eab27489"),
    (("clip.flac:2048:" + "ab" * 32, 30.0),
     "b0b75bdb6feea62a6a69d52787e812491894359e56046a2712d29d6689cf2ef8"),
    (("inputs", 2, "wav2vec2", {"sampling_rate": 16000, "do_normalize": True, "a": [1, 2.5]},
      [None, "x.mp4:1:ff#t=6.2900,8.2400"], None),
     "c4c895e144e92e98df097bc654de71691bb11a33e7cde5d6be7b51f8a12fe2fd"),
    ((pathlib.PurePosixPath("/data/a.wav"), 1e-3, -0.0, True),
     "3e6ea1bb5abbe55a1f40dadc6e5bc8cd94297b88558be6c9afbab0bf1a5aa05a"),
]


@pytest.mark.parametrize("parts,stored", STORED_KEYS)
def test_digest_keeps_the_keys_already_on_disk(parts, stored):
    assert digest(*parts) == stored
    # the key format, transcribed: canonical JSON of the parts as a list
    reference = hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()
    assert digest(*parts) == reference


def test_digest_ignores_dict_order_and_tells_parts_apart():
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest("ab", "c") != digest("a", "bc")
    assert digest([1, 2]) != digest(1, 2)


def test_file_sha256_matches_hashlib_across_blocks(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")  # FIPS 180-2 test vector
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    for block in (1, 7, 4096, 1 << 20):  # exact multiples, remainders, one block
        assert file_sha256(big, block=block) == hashlib.sha256(data).hexdigest()


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_bytes_atomic_replaces_the_file_with_plain_permissions(tmp_path):
    target = tmp_path / "sub" / "deeper" / "out.bin"
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, b"second\x00\xff")
    assert target.read_bytes() == b"second\x00\xff"
    assert _leftovers(target.parent) == []
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what open() gives a new file under this umask
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_write_bytes_atomic_keeps_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_write_text_atomic_writes_utf8_and_newlines_as_given(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "é “x”\r\nline\n")
    assert target.read_bytes() == "é “x”\r\nline\n".encode("utf-8")


def test_write_json_atomic_matches_json_dump(tmp_path):
    payload = {"b": [1, 2.5, None], "a": {"z": "é", "y": np.float32(0.5)}, "n": np.int64(3)}
    target = tmp_path / "results.json"
    write_json_atomic(target, payload)
    with io.StringIO() as reference:
        json.dump(payload, reference, indent=2, sort_keys=True, default=float)
        assert target.read_text() == reference.getvalue()
    target.write_text("old")
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_checkpoint_json_writer_is_the_shared_one():
    from emojax.runs import checkpoint

    assert checkpoint.write_json_atomic is write_json_atomic


def test_csv_text_written_atomically_equals_pandas_own_file(tmp_path):
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame({"row": [0, 1], "text": ["a, \"b\"", "é\nline"], "prob": [0.25, np.nan]})
    table.to_csv(tmp_path / "reference.csv", index=False)
    write_text_atomic(tmp_path / "atomic.csv", table.to_csv(index=False))
    assert (tmp_path / "atomic.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()


def test_safetensors_bytes_written_atomically_equal_save_file(tmp_path):
    from safetensors.numpy import save, save_file

    tensors = {"features": np.arange(12, dtype=np.float32).reshape(3, 4)}
    metadata = {"keys": json.dumps(["a", "b", "c"])}
    save_file(tensors, str(tmp_path / "reference.safetensors"), metadata=metadata)
    write_bytes_atomic(tmp_path / "atomic.safetensors", save(tensors, metadata=metadata))
    assert (tmp_path / "atomic.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()


def test_building_folder_is_published_whole(tmp_path):
    final = tmp_path / "parent" / "entry"
    with building_folder(final) as work:
        assert work.parent == final.parent and work.name.startswith(".entry.partial-")
        (work / "sub").mkdir()
        (work / "sub" / "a.bin").write_bytes(b"a")
        assert not final.exists()
        assert publish_folder(work, final, sync=True)
    assert (final / "sub" / "a.bin").read_bytes() == b"a"
    assert _leftovers(final.parent) == []


def test_publishing_over_an_empty_folder_replaces_it(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    with building_folder(final, prefix=".out.tmp-") as work:
        assert work.name.startswith(".out.tmp-")
        (work / "x").write_text("x")
        assert publish_folder(work, final)
    assert (final / "x").read_text() == "x"


def test_a_folder_published_first_wins_and_the_work_is_dropped(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "theirs").write_text("theirs")
    with building_folder(final) as work:
        (work / "ours").write_text("ours")
        assert not publish_folder(work, final)
    assert sorted(p.name for p in final.iterdir()) == ["theirs"]
    assert _leftovers(tmp_path) == []


def test_an_interrupted_build_leaves_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError, match="stop"):
        with building_folder(final) as work:
            (work / "half").write_text("half")
            raise RuntimeError("stop")
    assert not final.exists() and _leftovers(tmp_path) == []


def test_publish_raises_when_the_target_folder_is_missing(tmp_path):
    with building_folder(tmp_path / "a") as work:
        with pytest.raises(FileNotFoundError):
            publish_folder(work, tmp_path / "no" / "such" / "entry")
