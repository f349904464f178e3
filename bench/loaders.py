"""MSRA-format loading throughput: frames/s read from `.bin` files, in one process and through a BatchLoader
with worker processes. Writes its own files (hand-sized crops, MSRA layout) to a temporary folder with the
project's writer.

    python bench/loaders.py [--frames-per-gesture 30] [--batch-size 32] [--workers 2] [--repeats 3]

The files were just written, so they come from the page cache: this measures decoding and batching, not a cold
disk. Each configuration runs `--repeats` epochs interleaved with the others; the best epoch counts. The worker
start-up (paid once per BatchLoader) is timed apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras, msra
from v2v_jax.data.loader import BatchLoader


def write_frames(root: Path, subjects: int, frames_per_gesture: int, seed: int = 0) -> None:
    """MSRA folders whose crops are hand-sized (about 100 x 120 px, as in MSRA at 300-400 mm)."""
    rng = np.random.default_rng(seed)
    for k in range(subjects):
        for gesture in cameras.MSRA_GESTURES:
            depths = np.zeros((frames_per_gesture, 240, 320), np.float32)
            for d in depths:
                top, left = rng.integers(40, 100), rng.integers(60, 160)
                h, w = rng.integers(100, 140), rng.integers(90, 130)
                d[top:top + h, left:left + w] = rng.uniform(250, 450, (h, w))
            joints = rng.uniform(-60, 60, (frames_per_gesture, 21, 3)) + [0, 0, 350]
            msra.write_gesture(root / f"P{k}" / gesture, depths, joints)


def time_frames(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def time_epoch(loader: BatchLoader, epoch: int) -> float:
    start = time.perf_counter()
    count = sum(len(b["index"]) for b in loader.epoch(seed=0, epoch=epoch))
    return count / (time.perf_counter() - start)


def worker_start_s(loader: BatchLoader) -> float:
    """Seconds to the first batch of a fresh loader, which starts its workers."""
    start = time.perf_counter()
    next(loader.epoch(seed=1, epoch=0))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames-per-gesture", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_frames(root, subjects=2, frames_per_gesture=args.frames_per_gesture)
        dataset = msra.MSRA(root, None, test_subject=1, split="train")
        size = sum(p.stat().st_size for p in dataset.sources) / len(dataset)
        print(f"{len(dataset)} frames, {size / 1024:.0f} KiB per .bin, batch {args.batch_size}")
        serial = BatchLoader(dataset, args.batch_size)
        parallel = BatchLoader(dataset, args.batch_size, num_workers=args.workers)
        start_s = worker_start_s(parallel)
        runs = {"frames, one process": lambda epoch: time_frames(dataset),
                "batches, 0 workers": lambda epoch: time_epoch(serial, epoch),
                f"batches, {args.workers} workers": lambda epoch: time_epoch(parallel, epoch)}
        best = {name: 0.0 for name in runs}
        for epoch in range(args.repeats):
            for name, run in runs.items():
                best[name] = max(best[name], run(epoch))
    base = best["frames, one process"]
    for name, rate in best.items():
        print(f"{name:24s} {rate:8.0f} frames/s   x{rate / base:.2f}")
    print(f"worker start-up ({args.workers} workers, forkserver): {start_s:.2f} s once per BatchLoader")


if __name__ == "__main__":
    main()
