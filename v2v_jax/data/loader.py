"""Batches of frames for training, in an order that is a pure function of (seed, epoch).

Built on `torch.utils.data.DataLoader`: torch is already a dependency (the reference model) while grain is not
installed, and the DataLoader gives what training needs: worker processes, in-order delivery and prefetching.
We hand it whole batches of indices as the sampler, so the order never depends on torch's RNG, a resumed run
skips `start_batch` batches without reading them, and each worker reads and stacks one batch. Workers return
torch tensors wrapping the NumPy arrays (shared memory instead of pickling) and the caller gets NumPy back
without a copy. Workers start through `forkserver`, not `fork`, because the training process runs JAX's
threads and forking a threaded process can deadlock; as a forkserver start re-imports the main module (about
2 s here), `BatchLoader` keeps its workers for the whole run. The forkserver and the workers never see SIGINT or
SIGTERM: the main process alone decides when to stop (`_start_forkserver`).
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import select
import signal
import threading
import time

import numpy as np
import torch
import torch.utils.data

from v2v_jax.data import open_dataset  # noqa: F401  (re-exported: open and batch from one module)
from v2v_jax.data.base import DepthDataset


def epoch_order(num_frames: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The frame order of one epoch: a permutation drawn from (seed, epoch) alone, or 0..N-1."""
    if not shuffle:
        return np.arange(num_frames, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_frames).astype(np.int64)


def batch_plan(num_frames: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
               drop_last: bool = True) -> list[np.ndarray]:
    """The index arrays of every batch of one epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = epoch_order(num_frames, seed=seed, epoch=epoch, shuffle=shuffle)
    stop = num_frames - num_frames % batch_size if drop_last else num_frames
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def read_batch(dataset: DepthDataset, indices) -> dict[str, np.ndarray]:
    """Read and stack the frames `indices` (fresh arrays: changing them leaves the data set untouched)."""
    frames = [dataset[int(i)] for i in indices]
    return {
        "depth": np.stack([f.depth for f in frames]),
        "center": np.stack([f.center for f in frames]),
        "joints": np.stack([f.joints for f in frames]),
        "index": np.asarray(indices, np.int64),
    }


class _BatchReader(torch.utils.data.Dataset):
    """Map-style view whose item is a whole batch: `reader[indices]` reads and stacks those frames."""

    def __init__(self, dataset: DepthDataset):
        self.dataset = dataset

    def __getitem__(self, indices):
        return read_batch(self.dataset, indices)


class _EpochPlan(torch.utils.data.Sampler):
    """The batches of the current epoch; set before each pass (the sampler runs in the main process)."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in batch.items()}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _start_forkserver() -> None:
    """Starts multiprocessing's forkserver, if it is not running, with SIGINT and SIGTERM blocked: it keeps that
    signal mask for life, and so does every worker it forks, until `_start_worker` ignores both. Python's forkserver
    ignores SIGINT only, so a scheduler's SIGTERM to the process group killed it, and a worker being started then
    (the test-set loader's, at an epoch's end) crashed the main process with EOFError before it could checkpoint.
    The resource tracker starts the same way (multiprocessing/resource_tracker.py), and first: its start unblocks
    both signals."""
    multiprocessing.resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _start_worker(main_pid: int, _worker_id: int) -> None:
    """Workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C or a scheduler's SIGTERM reaches the whole process
    group, and a worker dying mid-batch would crash the main process before it can checkpoint and stop. The main
    process shuts its workers down; a worker also exits as soon as the main process dies, however it dies."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_exit_when_gone, args=(main_pid,), daemon=True, name="watch-main-process").start()


def _exit_when_gone(pid: int) -> None:
    """Ends this process once process `pid` has ended. A worker's parent is the forkserver, not the main process, so
    torch's own check (its parent's pid) does not see a SIGKILLed main process: the worker, the forkserver and the
    resource tracker (about 260 MB) then lived on for minutes."""
    try:
        select.select([os.pidfd_open(pid)], [], [])  # readable once the process has exited
    except ProcessLookupError:
        pass  # already gone
    except OSError:  # no pidfd (Linux before 5.3): poll
        while _alive(pid):
            time.sleep(1.0)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class BatchLoader:
    """Batches of one data set, epoch after epoch, with worker processes kept alive between epochs.

    Workers start through `forkserver` (each start costs about 2 s on the 2-core dev machine, once per loader).
    """

    def __init__(self, dataset: DepthDataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 num_workers: int = 0, prefetch_factor: int = 2, mp_context: str = "forkserver"):
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self._plan = _EpochPlan()
        if num_workers and mp_context == "forkserver":
            _start_forkserver()
        workers = dict(multiprocessing_context=mp_context, prefetch_factor=prefetch_factor, persistent_workers=True,
                       worker_init_fn=functools.partial(_start_worker, os.getpid())) if num_workers else {}
        self._loader = torch.utils.data.DataLoader(_BatchReader(dataset), batch_size=None, sampler=self._plan,
                                                   num_workers=num_workers, collate_fn=_to_tensors, **workers)

    def plan(self, *, seed: int, epoch: int) -> list[np.ndarray]:
        return batch_plan(len(self.dataset), self.batch_size, seed=seed, epoch=epoch, shuffle=self.shuffle,
                          drop_last=self.drop_last)

    def epoch(self, *, seed: int, epoch: int, start_batch: int = 0):
        """Yield {'depth' (B,H,W) float32, 'center' (B,3), 'joints' (B,J,3), 'index' (B,) int64} NumPy batches:
        those of `plan(seed, epoch)[start_batch:]`, depth bit-identical to what the data set reads; 'index' is
        each frame's position in the data set."""
        self._plan.batches = self.plan(seed=seed, epoch=epoch)[start_batch:]
        for batch in self._loader:
            yield {key: value.numpy() for key, value in batch.items()}


def batches(dataset: DepthDataset, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0,
            shuffle: bool = True, drop_last: bool = True, num_workers: int = 0):
    """One epoch of `BatchLoader(...).epoch(...)`; with workers, prefer one BatchLoader for the whole run."""
    loader = BatchLoader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)
    yield from loader.epoch(seed=seed, epoch=epoch, start_batch=start_batch)


def frames_digest(dataset: DepthDataset, indices) -> str:
    """SHA-256 of the depth, centre, joints and id of `indices`: equal before and after an epoch if nothing
    changed the raw frames."""
    digest = hashlib.sha256()
    for i in indices:
        frame = dataset[int(i)]
        for array in (frame.depth, frame.center, frame.joints):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(frame.frame_id.encode())
    return digest.hexdigest()
