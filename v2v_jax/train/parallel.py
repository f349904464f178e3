"""Data parallelism with JAX's own engine: the batch is sharded over all devices, the state replicated.

BatchNorm statistics are means over the sharded batch axis, so XLA reduces them over the global batch (SyncBN).
Multi-host runs call `jax.distributed.initialize()` first; every process then feeds its own slice of the batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(batch_size: int) -> Mesh | None:
    """A 1-D mesh over all devices, or None on one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(f"batch size {batch_size} is not divisible by the {len(devices)} devices")
    return Mesh(np.array(devices), ("data",))


def replicate(tree, mesh: Mesh | None):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict, mesh: Mesh | None) -> dict:
    """Host arrays of the global batch -> device arrays split along the batch axis."""
    if mesh is None:
        return jax.device_put(batch)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    # Every process reads the same global batch (its order is a function of seed and epoch) and keeps its rows.
    rows = len(next(iter(batch.values()))) // jax.process_count()
    lo = jax.process_index() * rows
    return {k: jax.make_array_from_process_local_data(sharding, v[lo:lo + rows]) for k, v in batch.items()}
