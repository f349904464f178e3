"""Checkpoints with orbax: the last few and the best, each verified by a content hash on restore.

A checkpoint holds the TrainState's leaves (host arrays, PRNG key as raw data) and a JSON record (data position,
metrics, the SHA-256 of the leaves). Orbax commits a step atomically; the hash catches what atomicity cannot
(bytes changed after the fact), and restore then falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from v2v_jax.train.step import TrainState

log = logging.getLogger(__name__)
METRIC = "mean_error_mm"


class CheckpointError(RuntimeError):
    pass


def _leaves(state: TrainState) -> list[np.ndarray]:
    host = jax.device_get(state.replace(key=jax.random.key_data(state.key)))
    return [np.asarray(x) for x in jax.tree.leaves(host)]


def digest(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in leaves:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 3):
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(keep),
            policies.BestN(get_metric_fn=lambda m: m[METRIC], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        self.directory = Path(directory)
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, cleanup_tmp_directories=True))

    def save(self, state: TrainState, record: dict[str, Any], metrics: dict[str, float] | None = None) -> int:
        leaves = _leaves(state)
        step = int(record["step"])
        record = {**record, "sha256": digest(leaves), "num_leaves": len(leaves)}
        items = {f"{i:05d}": x for i, x in enumerate(leaves)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                        record=ocp.args.JsonSave(record)),
                          metrics=metrics, force=True)
        return step

    def wait(self):
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, template: TrainState, step: int) -> tuple[TrainState, dict]:
        """Restores `step` into the structure of `template`; raises CheckpointError if it does not verify."""
        treedef = jax.tree.structure(template.replace(key=jax.random.key_data(template.key)))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                           record=ocp.args.JsonRestore()))
            record = dict(restored["record"])
            items = restored["state"]
            leaves = [np.asarray(items[f"{i:05d}"]) for i in range(record["num_leaves"])]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
            raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable: "
                                  f"{type(e).__name__}: {e}") from e
        if digest(leaves) != record.get("sha256"):
            raise CheckpointError(f"checkpoint {self.directory / str(step)} is corrupt: content hash mismatch")
        if len(leaves) != treedef.num_leaves:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} has {len(leaves)} arrays, "
                                  f"this model needs {treedef.num_leaves}")
        state = jax.tree.unflatten(treedef, leaves)
        return state.replace(key=jax.random.wrap_key_data(state.key)), record

    def restore_latest(self, template: TrainState) -> tuple[TrainState, dict] | None:
        """The newest checkpoint that verifies, falling back past corrupt ones (each reported); None if none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(template, step)
            except CheckpointError as e:
                log.warning("%s; falling back to an earlier checkpoint", e)
                print(f"WARNING: {e}; falling back to an earlier checkpoint", flush=True)
        return None

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
