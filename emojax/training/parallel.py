"""Data parallelism with ``jax.sharding``: the state replicated, every batch split across devices.

Kept apart from the loop because scoring (:func:`emojax.training.evaluation.score`) shards its batches
the same way a training run does.
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from emojax import config as config_lib


class DataParallel:
    """Data parallelism over ``devices`` with ``jax.sharding``: the training state is replicated
    on every device, every batch is split along its first axis, and the jit-compiled steps run
    on all devices at once, XLA inserting the cross-device reductions (the gradient mean, the
    loss states' updates, attention across the batch). The steps keep global-batch semantics,
    so N devices compute what one device computes on the same batch, up to float rounding.

    This is the successor of ``jax.pmap`` for this use: one program, sharded arrays, no
    per-device code. In a multi-host run (:mod:`emojax.training.distributed`) the devices are those of
    every process; each process passes the same global batch and contributes its own rows.
    Build it with :func:`data_parallel`.
    """

    def __init__(self, devices):
        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.split = NamedSharding(self.mesh, PartitionSpec("data"))
        self.processes = jax.process_count()

    @property
    def count(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        """``tree`` as one copy on every device (the state, the frozen teacher or base weights)."""
        if self.processes == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

    def shard(self, tree):
        """``tree`` (a global batch) split along its first axis; in a multi-host run each process
        contributes its own share of the rows."""
        if self.processes == 1:
            return jax.device_put(tree, self.split)
        index, count = jax.process_index(), self.processes

        def local_rows(x):
            x = np.asarray(x)
            rows = x.shape[0] // count
            return jax.make_array_from_process_local_data(self.split, x[index * rows:(index + 1) * rows], x.shape)

        return jax.tree_util.tree_map(local_rows, tree)


def data_parallel(cfg) -> Optional[DataParallel]:
    """The :class:`DataParallel` for ``cfg.train.devices`` (0 = every local device; in a
    multi-host run every device of every process), or ``None`` for one device. The training
    batch must split evenly across the devices."""
    if jax.process_count() > 1:
        devices = jax.devices()
        if int(cfg.train.batch_size) % len(devices):
            raise config_lib.ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly across "
                                         f"the {len(devices)} devices of {jax.process_count()} processes")
        return DataParallel(devices)
    wanted = int(cfg.train.get("devices", 0))
    local = jax.local_devices()
    if wanted < 0 or wanted > len(local):
        raise config_lib.ConfigError(f"train.devices: {wanted} devices asked for, {len(local)} available "
                                     f"({local[0].platform}); 0 uses them all")
    count = wanted or len(local)
    if count == 1:
        return None
    if int(cfg.train.batch_size) % count:
        raise config_lib.ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly across "
                                     f"{count} devices; choose a multiple of {count} or set train.devices")
    return DataParallel(local[:count])
