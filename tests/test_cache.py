"""The SafeTensors feature cache: round trip, partial computation, LRU tiers, corruption, concurrency."""
import multiprocessing
import os

import numpy as np
import pytest

from emojax.features.cache import FeatureCache, check_shard, file_identity


def _rows(keys, dim=8):
    return np.stack([np.full(dim, int(k.split("-")[1]), np.float32) for k in keys])


def test_cache_round_trip_and_compute_only_missing(tmp_path):
    cache = FeatureCache(tmp_path)
    keys = [f"k-{i}" for i in range(10)]
    cache.put_many("enc", keys[:4], _rows(keys[:4]))
    asked = []

    def compute(indices):
        asked.extend(indices)
        return _rows([keys[i] for i in indices])

    out = cache.get_or_compute("enc", keys, compute, batch_size=3, progress=False)
    assert asked == list(range(4, 10))
    np.testing.assert_array_equal(out, _rows(keys))
    fresh = FeatureCache(tmp_path)  # a new process would see the same
    np.testing.assert_array_equal(np.stack([fresh.get_many("enc", keys)[k] for k in keys]), _rows(keys))
    assert fresh.stats()["enc"]["entries"] == 10 and fresh.stats()["enc"]["dim"] == 8
    assert fresh.get_many("other", keys) == {}


def test_cache_host_and_device_lru(tmp_path):
    cache = FeatureCache(tmp_path, host_bytes=3 * 32, device_bytes=2 * 32)  # 3 (host) / 2 (device) rows of 8 float32
    keys = [f"k-{i}" for i in range(5)]
    cache.put_many("enc", keys, _rows(keys))
    cache.get_many("enc", keys[:3])
    assert [k for _, k in cache._host] == ["k-0", "k-1", "k-2"]
    cache.get_many("enc", ["k-0"])  # touch k-0: k-1 is now the least recent
    cache.get_many("enc", ["k-3"])
    assert [k for _, k in cache._host] == ["k-2", "k-0", "k-3"]
    on_device = cache.device_get("enc", ["k-1", "k-2", "k-4"])
    np.testing.assert_array_equal(np.asarray(on_device), _rows(["k-1", "k-2", "k-4"]))
    assert [k for _, k in cache._device] == ["k-2", "k-4"]
    with pytest.raises(KeyError, match="not cached"):
        cache.device_get("enc", ["k-99"])


def test_cache_truncated_or_corrupt_shard_is_recomputed(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    keys = [f"k-{i}" for i in range(6)]
    shard = cache.put_many("enc", keys[:3], _rows(keys[:3]))
    good = cache.put_many("enc", keys[3:], _rows(keys[3:]))
    assert check_shard(shard) is None
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])  # truncated
    assert "size" in check_shard(shard)
    fresh = FeatureCache(tmp_path)
    found = fresh.get_many("enc", keys)
    assert sorted(found) == keys[3:]
    assert str(shard) in caplog.text
    out = fresh.get_or_compute("enc", keys, lambda idx: _rows([keys[i] for i in idx]), progress=False)
    np.testing.assert_array_equal(out, _rows(keys))
    good.write_bytes(b"\xff" * 64)  # garbage header
    assert check_shard(good) is not None
    np.testing.assert_array_equal(np.stack([FeatureCache(tmp_path).get_many("enc", keys)[k] for k in keys[:3]]),
                                  _rows(keys[:3]))


def test_cache_leftover_temporary_file_is_ignored(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put_many("enc", ["k-1"], _rows(["k-1"]))
    (tmp_path / "enc" / ".shard-crashed.safetensors.tmp").write_bytes(b"partial")
    assert list(FeatureCache(tmp_path).get_many("enc", ["k-1"])) == ["k-1"]


def _writer(root, start):
    cache = FeatureCache(root)
    for chunk in range(5):
        keys = [f"k-{start + chunk * 10 + i}" for i in range(10)]
        cache.put_many("enc", keys, _rows(keys))


def test_cache_two_processes_fill_it_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), start)) for start in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = [f"k-{s + i}" for s in (0, 1000) for i in range(50)]
    found = FeatureCache(tmp_path).get_many("enc", keys)
    assert len(found) == 100
    np.testing.assert_array_equal(np.stack([found[k] for k in keys]), _rows(keys))


def test_cache_file_identity_changes_with_content(tmp_path):
    path = tmp_path / "clip.flac"
    path.write_bytes(b"one")
    first = file_identity(path)
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))
    assert file_identity(path) != first
