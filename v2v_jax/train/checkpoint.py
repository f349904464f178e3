"""Checkpoints with orbax: the last few and the best, each verified by a content hash on restore.

A checkpoint holds the TrainState's leaves (host arrays, PRNG key as raw data) and a JSON record (data position,
metrics, the SHA-256 of the leaves). Orbax writes a step into a temporary directory and renames it when complete, so
a process killed mid-write leaves no step behind (the next run that opens the directory removes the temporary one).
The hash catches what atomicity cannot (bytes changed afterwards): restore falls back to the newest checkpoint that
verifies, and a resuming run moves the corrupt ones to `<directory>_corrupt/`, kept for inspection and out of the
way of the steps it writes again.

Saving is asynchronous. A write that fails (disk full, directory gone read-only) raises CheckpointError at the next
`save`, `wait` or `close`, naming the step lost and the last good checkpoint, which stays intact.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from v2v_jax.train.parallel import to_host
from v2v_jax.train.run_dir import RunDirError
from v2v_jax.train.step import TrainState

log = logging.getLogger(__name__)
METRIC = "mean_error_mm"


class CheckpointError(RunDirError):
    """A checkpoint cannot be written, or does not fit the model it is restored into."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint cannot be read back as it was written."""


def _leaves(state: TrainState) -> list[np.ndarray]:
    return jax.tree.leaves(to_host(state.replace(key=jax.random.key_data(state.key))))


def digest(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in leaves:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _reason(error: BaseException) -> str:
    """The operating system's words for why a write failed, else the error's first line."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        code = re.search(r"os_error_code='(\d+)'", str(cause))  # tensorstore's errors carry errno as text
        if code:
            return os.strerror(int(code.group(1)))
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


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
        self._pending = None  # the step whose asynchronous write is not yet known to have succeeded
        self._failed = False

    def save(self, state: TrainState, record: dict[str, Any], metrics: dict[str, float] | None = None) -> int:
        """Starts writing `state` as checkpoint `record['step']`; CheckpointError if this or the previous write
        failed."""
        leaves = _leaves(state)
        step = int(record["step"])
        self.wait()
        if step in self.steps():
            raise CheckpointError(f"{self.directory / str(step)}: a checkpoint of step {step} exists already")
        record = {**record, "sha256": digest(leaves), "num_leaves": len(leaves)}
        items = {f"{i:05d}": x for i, x in enumerate(leaves)}
        try:
            # Orbax's writer threads wait (5 min) for a step directory it failed to create, delaying the exit of a
            # process whose directory went read-only: find that out first.
            os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=self.directory))
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                            record=ocp.args.JsonSave(record)),
                              metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001 - every failed write is reported the same way
            raise self._write_error(step, e) from e
        self._pending = step
        return step

    def wait(self):
        """Blocks until the last save is on disk; CheckpointError if it failed."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(step, e) from e

    def _write_error(self, step: int | None, error: Exception) -> CheckpointError:
        self._failed = True
        good = [s for s in self.steps() if s != step]
        last = (f"the last good checkpoint, {self.directory / str(good[-1])}, is intact" if good
                else "there is no earlier checkpoint")
        return CheckpointError(f"could not write checkpoint {self.directory / str(step)}: {_reason(error)}; {last}. "
                               "Free space or fix the directory, then continue with --resume")

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read(self, step: int) -> tuple[list[np.ndarray], dict]:
        """The arrays and record of checkpoint `step`, verified against the stored hash; CorruptCheckpointError if
        they cannot be read or do not verify."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                           record=ocp.args.JsonRestore()))
            record = dict(restored["record"])
            items = restored["state"]
            leaves = [np.asarray(items[f"{i:05d}"]) for i in range(record["num_leaves"])]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
            raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} is unreadable: "
                                         f"{_reason(e)}") from e
        if digest(leaves) != record.get("sha256"):
            raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} is corrupt: content hash "
                                         "mismatch")
        return leaves, record

    def restore(self, template: TrainState, step: int) -> tuple[TrainState, dict]:
        """Restores `step` into the structure of `template`: CorruptCheckpointError if it does not verify,
        CheckpointError if its arrays do not fit the template (another model configuration)."""
        host_template = jax.tree.leaves(template.replace(key=jax.random.key_data(template.key)))
        leaves, record = self.read(step)
        expected = [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in host_template]
        found = [(x.shape, x.dtype) for x in leaves]
        if found != expected:
            index, (have, need) = next((i, pair) for i, pair in enumerate(itertools.zip_longest(found, expected))
                                       if pair[0] != pair[1])
            raise CheckpointError(f"checkpoint {self.directory / str(step)} does not fit this model: array {index} is "
                                  f"{have} there and {need} here (shape, dtype); resume with the run's own "
                                  "configuration")
        treedef = jax.tree.structure(template.replace(key=jax.random.key_data(template.key)))
        state = jax.tree.unflatten(treedef, leaves)
        return state.replace(key=jax.random.wrap_key_data(state.key)), record

    def restore_latest(self, template: TrainState, set_aside_corrupt: bool = False
                       ) -> tuple[TrainState, dict] | None:
        """The newest checkpoint that verifies, falling back past corrupt ones (each reported, and moved to
        `<directory>_corrupt/` if `set_aside_corrupt`); None if none verifies."""
        for step in reversed(self.steps()):
            try:
                return self.restore(template, step)
            except CorruptCheckpointError as e:
                moved = f"; moved it to {self._set_aside(step)}" if set_aside_corrupt else ""
                log.warning("%s%s; falling back to an earlier checkpoint", e, moved)
        return None

    def _set_aside(self, step: int) -> Path:
        """Moves checkpoint `step` out of the managed directory (process 0 moves, every process re-reads)."""
        target = self.directory.with_name(self.directory.name + "_corrupt") / str(step)
        copies = 1
        while target.exists():
            target = target.with_name(f"{step}.{copies}")
            copies += 1
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()
        return target

    def close(self):
        """Waits for the last save (CheckpointError if it failed) and releases the manager."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - a failed write is reported once, by `wait`
                if not self._failed:
                    raise
