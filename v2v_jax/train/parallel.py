"""Data parallelism with JAX's own engine: the batch is sharded over all devices, the state replicated.

BatchNorm statistics are means over the sharded batch axis, so XLA reduces them over the global batch (SyncBN).
Multi-host runs call `jax.distributed.initialize()` first; every process then feeds its own slice of the batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a multi-process run. CPU collectives go through gloo (the flag does not affect GPU backends)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def to_host(tree):
    """NumPy copies of (replicated) device arrays; for arrays spanning processes, this process's replica."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(get, tree)


def gather(x) -> np.ndarray:
    """The whole of a batch-sharded device array on the host, whichever process holds its rows."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def data_mesh(batch_size: int) -> Mesh | None:
    """A 1-D mesh over all devices, or None on one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(f"batch size {batch_size} is not divisible by the {len(devices)} devices")
    return Mesh(np.array(devices), ("data",))


def replicate(tree, mesh: Mesh | None):
    """The same arrays on every device of the mesh (every process passes its identical copy)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


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
