"""Damage that keeps a file's header intact is caught: feature cache shards (reordered rows,
overwritten bytes, shards without checksums, non-finite rows), the fine-tuning input store
(missing index, truncated or overwritten ``.bin``), and feature extraction that stores its work
batch by batch, so a crash keeps the finished batches."""
import json
import logging
import pathlib
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from configs.compose import compose
from emojax.features.cache import CORRUPT_SUFFIX, FeatureCache
from emojax.data.media import MediaError
from emojax.data.types import Sample, Split
from emojax.features.featurizer import Featurizer
from emojax.training.finetune_base import StoredRows
from emojax.training.finetune_media import store_inputs

DIM = 8


def _rows(keys):
    """A distinct, deterministic feature row per key (``k-<i>``)."""
    return np.stack([np.arange(DIM, dtype=np.float32) + 10 * int(k.split("-")[1]) for k in keys])


def _data_region(shard: pathlib.Path) -> tuple[bytes, bytes]:
    """``(header part, tensor data)`` of a SafeTensors file."""
    raw = shard.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return raw[:8 + header_len], raw[8 + header_len:]


class _Counter:
    """A compute function over ``keys`` that records which indices it was asked for."""

    def __init__(self, keys):
        self.keys = keys
        self.asked: list[int] = []

    def __call__(self, indices):
        self.asked.extend(indices)
        return _rows([self.keys[i] for i in indices])


# -- feature cache ------------------------------------------------------------------------------

def test_reordered_rows_are_detected_and_recomputed(tmp_path, caplog):
    keys = [f"k-{i}" for i in range(6)]
    shard = FeatureCache(tmp_path).put_many("enc", keys, _rows(keys))
    head, data = _data_region(shard)
    rows = np.frombuffer(data, np.uint8).reshape(len(keys), -1)
    shard.write_bytes(head + rows[[1, 0, 3, 2, 5, 4]].tobytes())  # header intact, rows swapped

    compute = _Counter(keys)
    with caplog.at_level(logging.WARNING):
        out = FeatureCache(tmp_path).get_or_compute("enc", keys, compute, progress=False)
    np.testing.assert_array_equal(out, _rows(keys))
    assert sorted(compute.asked) == list(range(6))
    assert str(shard) in caplog.text and "sha256" in caplog.text
    assert not shard.exists() and shard.with_name(shard.name + CORRUPT_SUFFIX).exists()

    caplog.clear()
    again = _Counter(keys)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(FeatureCache(tmp_path).get_or_compute("enc", keys, again, progress=False),
                                      _rows(keys))
    assert again.asked == [] and "corrupt" not in caplog.text


def test_overwritten_data_bytes_are_recomputed_finite(tmp_path, caplog):
    keys = [f"k-{i}" for i in range(5)]
    cache = FeatureCache(tmp_path)
    shard = cache.put_many("enc", keys, _rows(keys))
    head, data = _data_region(shard)
    garbage = np.random.default_rng(0).integers(0, 256, 48, dtype=np.uint8).tobytes()
    garbage = garbage[:8] + b"\xff\xff\xc0\x7f" + garbage[12:]  # one of them is a NaN
    shard.write_bytes(head + data[:20] + garbage + data[68:])
    assert shard.stat().st_size == len(head) + len(data)

    with caplog.at_level(logging.WARNING):
        out = FeatureCache(tmp_path).get_or_compute("enc", keys, _Counter(keys), progress=False)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, _rows(keys))
    assert str(shard) in caplog.text


def test_put_many_does_not_store_non_finite_rows(tmp_path, caplog):
    keys = [f"k-{i}" for i in range(4)]
    values = _rows(keys)
    values[1, 3] = np.nan
    values[2, 0] = np.inf
    with caplog.at_level(logging.WARNING):
        FeatureCache(tmp_path).put_many("enc", keys, values)
    assert sorted(FeatureCache(tmp_path).get_many("enc", keys)) == ["k-0", "k-3"]
    assert "non-finite" in caplog.text and "k-1" in caplog.text
    assert FeatureCache(tmp_path).put_many("enc", ["k-9"], np.full((1, DIM), np.nan, np.float32)) is None


def test_shard_without_checksums_is_recomputed_once(tmp_path, caplog):
    keys = [f"k-{i}" for i in range(3)]
    folder = tmp_path / "enc"
    folder.mkdir()
    legacy = folder / "shard-0-0-legacy.safetensors"
    save_file({"features": _rows(keys)}, str(legacy), metadata={"keys": json.dumps(keys)})

    compute = _Counter(keys)
    with caplog.at_level(logging.WARNING):
        out = FeatureCache(tmp_path).get_or_compute("enc", keys, compute, progress=False)
    np.testing.assert_array_equal(out, _rows(keys))
    assert compute.asked == [0, 1, 2]
    assert str(legacy) in caplog.text and "cannot be verified" in caplog.text
    again = _Counter(keys)
    FeatureCache(tmp_path).get_or_compute("enc", keys, again, progress=False)
    assert again.asked == []


# -- incremental writes -------------------------------------------------------------------------

class _StubAudio:
    """A batched encoder (the interface of emojax.encoders.media_encoders: ``compute(paths)``, NaN
    rows for unreadable files) that fails on a chosen file, like a crash during a long pass."""

    def __init__(self, fail_at=None, unreadable=()):
        self.namespace = "stub-audio"
        self.dim = DIM
        self.errors: dict[str, str] = {}
        self.fail_at = fail_at
        self.unreadable = set(unreadable)
        self.calls: list[str] = []

    def compute(self, paths, progress=False):
        out = np.full((len(paths), DIM), np.nan, np.float32)
        for row, path in enumerate(paths):
            self.calls.append(path)
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                raise RuntimeError("the encoder crashed")
            if path not in self.unreadable:
                out[row] = float(pathlib.Path(path).read_bytes()[-1])
        return out


def _audio_split(tmp_path, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"clip{i}.flac"
        path.write_bytes(b"audio" + bytes([i]))
        paths.append(str(path))
    samples = [Sample(f"train/d0_u{i}", "d0", i, "A", "words", p, None, 0) for i, p in enumerate(paths)]
    return Split("train", samples), paths


def _featurizer(cache, encoder):
    cfg = compose("dataset=MELD--E,encoders=A")
    cfg.encoders.A.family = "classic-audio"
    cfg.progress = False
    featurizer = Featurizer(cfg, cache=cache)
    featurizer.encoders["A"] = encoder
    featurizer.write_rows = 2
    return featurizer


def test_feature_extraction_keeps_finished_batches_after_a_crash(tmp_path):
    split, paths = _audio_split(tmp_path, 9)
    cache = FeatureCache(tmp_path / "cache")
    crashing = _StubAudio(fail_at=5)  # two batches of two done, the third fails
    with pytest.raises(RuntimeError, match="crashed"):
        _featurizer(cache, crashing).split_features(split)
    fresh = FeatureCache(tmp_path / "cache")
    stats = fresh.stats()["stub-audio"]
    assert stats["entries"] == 4 and stats["shards"] == 2

    rerun = _StubAudio(unreadable={paths[7]})
    data = _featurizer(fresh, rerun).split_features(split)
    assert rerun.calls == paths[4:]  # only what the crash left undone
    assert data.present["A"].tolist() == [i != 7 for i in range(9)]
    np.testing.assert_array_equal(data.features["A"][:, 0], [float(i) if i != 7 else 0.0 for i in range(9)])
    # the unreadable file's row is not stored: the next run asks for it alone
    last = _StubAudio()
    again = _featurizer(FeatureCache(tmp_path / "cache"), last).split_features(split)
    assert last.calls == [paths[7]] and again.present["A"].all()


# -- fine-tuning input store --------------------------------------------------------------------

class _FakeMediaEncoder:
    """Prepares a variable-length float input and an int mask per file (like a waveform)."""

    family, modality = "fake-audio", "A"
    max_seconds = 60.0  # seconds of each file read (emojax.data.media.duration_cap): part of the store's key

    def __init__(self):
        self.calls = 0

    def preprocessing(self):
        return {"rate": 16000}

    def tuning_item(self, path):
        self.calls += 1
        raw = pathlib.Path(path).read_bytes()
        if raw.startswith(b"bad"):
            raise MediaError(path, "cannot be decoded")
        wave = np.frombuffer(raw, np.uint8).astype(np.float32) / 7.0
        return {"wave": wave, "mask": np.ones(len(wave), np.int32)}

    def blank_item(self):
        return {"wave": np.zeros(3, np.float32), "mask": np.zeros(3, np.int32)}

    def group(self, item):
        return int(len(item["wave"]) > 20)

    def collate(self, items):
        width = max(len(item["wave"]) for item in items)
        return {name: np.stack([np.pad(item[name], (0, width - len(item[name]))) for item in items])
                for name in items[0]}


def _media_paths(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / "media" / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"bad file" if i == 4 else bytes(range(i, i + 10 + 4 * i)))
        paths.append(str(path))
    return paths + [None]


def _same_rows(a: StoredRows, b: StoredRows):
    assert len(a) == len(b) and a.present.tolist() == b.present.tolist()
    for i in range(len(a)):
        left, right = a.item(i), b.item(i)
        assert sorted(left) == sorted(right)
        for name in left:
            np.testing.assert_array_equal(left[name], right[name])


def _store(tmp_path, encoder):
    return store_inputs(tmp_path / "_inputs", encoder, _media_paths(tmp_path), desc="A inputs (train)",
                        progress=False)


def test_input_store_without_index_is_prepared_again(tmp_path, caplog):
    first = _store(tmp_path, _FakeMediaEncoder())
    assert first.present.tolist() == [True, True, True, True, False, True, False]
    (first.folder / "index.json").unlink()
    encoder = _FakeMediaEncoder()
    with caplog.at_level(logging.WARNING):
        again = _store(tmp_path, encoder)
    assert encoder.calls == 6 and str(first.folder / "index.json") in caplog.text
    _same_rows(again, first)
    reread = _FakeMediaEncoder()
    _same_rows(_store(tmp_path, reread), first)
    assert reread.calls == 0


def test_truncated_input_file_is_prepared_again(tmp_path, caplog):
    first = _store(tmp_path, _FakeMediaEncoder())
    expected = [{k: v.copy() for k, v in first.item(i).items()} for i in range(len(first))]
    wave = first.folder / "wave.bin"
    wave.write_bytes(wave.read_bytes()[:-12])
    encoder = _FakeMediaEncoder()
    with caplog.at_level(logging.WARNING):
        again = _store(tmp_path, encoder)
    assert encoder.calls == 6 and str(wave) in caplog.text and "preparing them again" in caplog.text
    for i, item in enumerate(expected):
        for name, value in item.items():
            np.testing.assert_array_equal(again.item(i)[name], value)


def test_overwritten_input_bytes_are_detected_and_rebuilt(tmp_path, caplog):
    first = _store(tmp_path, _FakeMediaEncoder())
    expected = [{k: v.copy() for k, v in first.item(i).items()} for i in range(len(first))]
    mask = first.folder / "mask.bin"
    raw = bytearray(mask.read_bytes())
    raw[16:40] = np.random.default_rng(1).integers(0, 256, 24, dtype=np.uint8).tobytes()
    mask.write_bytes(bytes(raw))
    encoder = _FakeMediaEncoder()
    with caplog.at_level(logging.WARNING):
        again = _store(tmp_path, encoder)
    assert encoder.calls == 6 and str(mask) in caplog.text and "sha256" in caplog.text
    for i, item in enumerate(expected):
        for name, value in item.items():
            np.testing.assert_array_equal(again.item(i)[name], value)
    assert not list((tmp_path / "_inputs").glob(".*"))  # no temporary or discarded folder left behind


def test_input_store_without_checksums_is_prepared_again_once(tmp_path, caplog):
    first = _store(tmp_path, _FakeMediaEncoder())
    index_path = first.folder / "index.json"
    index = json.loads(index_path.read_text())
    del index["files"]
    index_path.write_text(json.dumps(index))
    encoder = _FakeMediaEncoder()
    with caplog.at_level(logging.WARNING):
        _same_rows(_store(tmp_path, encoder), first)
    assert encoder.calls == 6 and "cannot be verified" in caplog.text
    reread = _FakeMediaEncoder()
    _store(tmp_path, reread)
    assert reread.calls == 0
