"""Multi-host runs on ``jax.distributed``.

Every process runs the same program: it computes the same epoch order, feeds its own shard of
every global batch (``DataParallel.shard``), and the jit-compiled steps run over the devices of
all processes, XLA inserting the cross-host reductions. Every process therefore holds the same
parameters and the same dev scores, so all agree on model selection and early stopping; only
process 0 writes logs, progress files and results (the Orbax checkpoints are written by all
processes together, as Orbax requires).

Start it with :func:`initialize` (``launch.train --distributed``): with no arguments JAX detects
the cluster itself (SLURM, Open MPI, cloud TPU / GPU environments); otherwise give the
coordinator's ``host:port``, the process count and this process's id.
"""
from __future__ import annotations

import logging
from typing import Optional

import jax

log = logging.getLogger(__name__)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Join the multi-host run (``jax.distributed.initialize``). Call before any other JAX work."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("distributed: give coordinator_address, num_processes and process_id together, "
                         "or none of them to detect the cluster (SLURM, Open MPI, cloud TPU/GPU)")
    try:
        if all(given):
            jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                                       process_id=int(process_id))
        else:
            jax.distributed.initialize()
    except (RuntimeError, ValueError) as err:
        raise RuntimeError(f"distributed: cannot join the multi-host run ({err}); on a cluster without "
                           "auto-detection pass --coordinator_address, --num_processes and --process_id") from err
    log.info("process %d of %d; %d local and %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
    """True on the process that writes logs and results (process 0)."""
    return jax.process_index() == 0
