"""Checkpoints with orbax: the last few and the best, each verified by a content hash on restore.

A checkpoint holds the TrainState's leaves (host arrays, PRNG key as raw data) and a JSON record (data position,
per-epoch evaluations, best epoch, where each TrainState field's leaves lie). The record's SHA-256 covers the leaves
and every other field of the record, so neither an array nor the position a resumed run continues from can change
unnoticed. Orbax writes a step into a temporary directory and renames it when complete, so a process killed
mid-write leaves no step behind (the writer that next opens the directory removes the temporary one).
The hash catches what atomicity cannot (bytes changed afterwards): restore falls back to the newest checkpoint that
verifies, and a resuming run moves the corrupt ones to `<directory>_corrupt/`, kept for inspection and out of the
way of the steps it writes again.

Readers (`read_only=True`: predict, tests, anything but the training run) never write, delete or clean up: the
clean-up of temporary directories would delete the checkpoint a running training is writing.

Saving is asynchronous. A write that fails (disk full, directory gone read-only) raises CheckpointError at the next
`save`, `wait` or `close`, naming the step lost and the last good checkpoint, which stays intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def _host_state(state: TrainState) -> TrainState:
    return state.replace(key=jax.random.key_data(state.key))


def _leaves(state: TrainState) -> list[np.ndarray]:
    return jax.tree.leaves(to_host(_host_state(state)))


def field_slices(state: TrainState) -> dict[str, list[int]]:
    """[start, stop) of each TrainState field's leaves in the flat list of `_leaves` (fields flatten in order)."""
    slices, start = {}, 0
    for field in dataclasses.fields(state):
        stop = start + len(jax.tree.leaves(getattr(_host_state(state), field.name)))
        slices[field.name], start = [start, stop], stop
    return slices


def digest(leaves: list[np.ndarray], record: dict) -> str:
    """SHA-256 of the arrays (dtype, shape, bytes) and of the record without its own hash."""
    h = hashlib.sha256()
    for x in leaves:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(json.dumps({k: v for k, v in record.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def _os_error(error: BaseException) -> tuple[int | None, str]:
    """(errno, the operating system's words) for why a write failed, else (None, the error's first line)."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.errno, cause.strerror
        code = re.search(r"os_error_code='(\d+)'", str(cause))  # tensorstore's errors carry errno as text
        if code:
            return int(code.group(1)), os.strerror(int(code.group(1)))
        cause = cause.__cause__ or cause.__context__
    return None, f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def _reason(error: BaseException) -> str:
    return _os_error(error)[1]


WHAT_TO_DO = {  # after a failed write, by errno
    errno.ENOSPC: "Free space, then continue with --resume",
    errno.EDQUOT: "Free space (the disk quota is full), then continue with --resume",
    errno.EROFS: "Make the directory writable, then continue with --resume",
    errno.EACCES: "Make the directory writable, then continue with --resume",
    errno.EPERM: "Make the directory writable, then continue with --resume",
    errno.ENOENT: "A file of the write vanished while it was written: did another program delete files in the "
                  "checkpoint directory? Continue with --resume",
}


class Checkpointer:
    """The checkpoints of one run directory. One writer (the training run, which holds the run's lock); any number
    of readers (`read_only=True`), which leave every file as they find it."""

    def __init__(self, directory: Path, keep: int = 3, read_only: bool = False):
        self.directory, self.read_only = Path(directory), read_only
        if read_only:
            if not self.directory.is_dir():
                raise CheckpointError(f"{self.directory}: no checkpoint folder")
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False,
                                                   save_interval_steps=0)
        else:
            policy = policies.AnyPreservationPolicy([
                policies.LatestN(keep),
                policies.BestN(get_metric_fn=lambda m: m[METRIC], reverse=True, n=1,
                               keep_checkpoints_without_metrics=False),
            ])
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, cleanup_tmp_directories=True)
        with _quiet_read_only_notice():
            self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options)
        self.set_aside: list[Path] = []  # where corrupt checkpoints were moved, oldest first
        self._pending = None  # the step whose asynchronous write is not yet known to have succeeded
        self._failed = False

    def save(self, state: TrainState, record: dict[str, Any], metrics: dict[str, float] | None = None) -> int:
        """Starts writing `state` as checkpoint `record['step']`; CheckpointError if this or the previous write
        failed."""
        if self.read_only:
            raise CheckpointError(f"{self.directory}: opened read-only; cannot save step {record['step']}")
        leaves = _leaves(state)
        step = int(record["step"])
        self.wait()
        if step in self.steps():
            raise CheckpointError(f"{self.directory / str(step)}: a checkpoint of step {step} exists already")
        record = {**record, "num_leaves": len(leaves), "fields": field_slices(state)}
        record["sha256"] = digest(leaves, record)
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
        code, reason = _os_error(error)
        advice = WHAT_TO_DO.get(code, "Fix the cause, then continue with --resume")
        return CheckpointError(f"could not write checkpoint {self.directory / str(step)}: {reason}; {last}. {advice}")

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read(self, step: int) -> tuple[list[np.ndarray], dict]:
        """The arrays and record of checkpoint `step`, verified against the stored hash; CheckpointError if there is
        no such step, CorruptCheckpointError if it cannot be read or does not verify."""
        if step not in self.steps():
            raise CheckpointError(f"{self.directory}: no checkpoint of step {step} (there are: "
                                  f"{', '.join(map(str, self.steps())) or 'none'})")
        _drop_callbacks_into_closed_loops()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                           record=ocp.args.JsonRestore()))
            record = dict(restored["record"])
            items = restored["state"]
            leaves = [np.asarray(items[f"{i:05d}"]) for i in range(record["num_leaves"])]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
            raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} is unreadable: "
                                         f"{_reason(e)}") from e
        if digest(leaves, record) != record.get("sha256"):
            raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} is corrupt: content hash "
                                         "mismatch")
        return leaves, record

    def _fit(self, step: int, leaves: list[np.ndarray], template) -> Any:
        """`leaves` in the structure of `template`; CheckpointError if their shapes or dtypes differ from it."""
        expected = [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in jax.tree.leaves(template)]
        found = [(x.shape, x.dtype) for x in leaves]
        if found != expected:
            index, (have, need) = next((i, pair) for i, pair in enumerate(itertools.zip_longest(found, expected))
                                       if pair[0] != pair[1])
            raise CheckpointError(f"checkpoint {self.directory / str(step)} does not fit this model: array {index} is "
                                  f"{have} there and {need} here (shape, dtype); use the run's own configuration")
        return jax.tree.unflatten(jax.tree.structure(template), leaves)

    def restore(self, template: TrainState, step: int) -> tuple[TrainState, dict]:
        """Restores `step` into the structure of `template`: CorruptCheckpointError if it does not verify,
        CheckpointError if its arrays do not fit the template (another model configuration)."""
        leaves, record = self.read(step)
        state = self._fit(step, leaves, _host_state(template))
        return state.replace(key=jax.random.wrap_key_data(state.key)), record

    def restore_variables(self, params, batch_stats, step: int) -> tuple[Any, Any, dict]:
        """(params, batch_stats, record) of checkpoint `step`, in the structures of the given templates: what
        inference needs, without an optimiser or a TrainState; the moving averages where the run kept them (what
        its evaluation used). Errors as `restore`."""
        leaves, record = self.read(step)
        fields = record["fields"]
        start, stop = fields.get("ema_params", (0, 0))
        prefix = "ema_" if stop > start else ""
        return (self._fit(step, leaves[slice(*fields[prefix + "params"])], params),
                self._fit(step, leaves[slice(*fields[prefix + "batch_stats"])], batch_stats), record)

    def restore_latest(self, template: TrainState, set_aside_corrupt: bool = False
                       ) -> tuple[TrainState, dict] | None:
        """The newest checkpoint that verifies, falling back past corrupt ones (each reported, and moved to
        `<directory>_corrupt/` if `set_aside_corrupt`); None if none verifies."""
        return self.newest(lambda step: self.restore(template, step), set_aside_corrupt)

    def newest(self, restore: Callable[[int], Any], set_aside_corrupt: bool = False) -> Any:
        """`restore(step)` of the newest step that does not raise CorruptCheckpointError (as `restore_latest`)."""
        for step in reversed(self.steps()):
            try:
                return restore(step)
            except CorruptCheckpointError as e:
                moved = f"; moved it to {self._set_aside(step)}" if set_aside_corrupt else ""
                log.warning("%s%s; falling back to an earlier checkpoint", e, moved)
        return None

    def _set_aside(self, step: int) -> Path:
        """Moves checkpoint `step` out of the managed directory (process 0 moves, every process re-reads)."""
        if self.read_only:
            raise CheckpointError(f"{self.directory}: opened read-only; cannot move checkpoint {step} aside")
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
        self.set_aside.append(target)
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


@contextlib.contextmanager
def _quiet_read_only_notice():
    """Orbax logs a warning for every read-only manager it opens; a reader is no cause for one."""
    absl = logging.getLogger("absl")
    notice = lambda r: not r.getMessage().startswith("Given directory is read only")  # noqa: E731
    absl.addFilter(notice)
    try:
        yield
    finally:
        absl.removeFilter(notice)


def _drop_callbacks_into_closed_loops() -> None:
    """Drops the RuntimeError('Event loop is closed') that a failed read leaves behind (others pass on).

    When one array of a checkpoint cannot be read, orbax's event loop ends while tensorstore still completes the
    other reads; each completion calls into the closed loop and Python reports it as an unraisable exception: 80-150
    tracebacks before the one-line corrupt-checkpoint warning of a V2V run. They report nothing the warning does not.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook
