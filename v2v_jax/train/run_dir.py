"""The run directory: exclusive ownership, early checks for writability and space, and scalar logs."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from tensorboardX import SummaryWriter


class RunDirError(RuntimeError):
    pass


def acquire(run_dir: Path, resume: bool, needed_bytes: int):
    """Creates/claims `run_dir` for this process; returns the open lock file (keep it open for the run).

    Refuses: a directory another live run holds; a previous run's checkpoints without --resume (nothing is
    overwritten); an unwritable directory; less free space than `needed_bytes`.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{run_dir}: output directory is not writable ({e.strerror})") from e
    lock = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise RunDirError(f"{run_dir}: another run (pid {owner}) is writing to this directory; "
                          "wait for it or choose another --out") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    if not resume and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        lock.close()
        raise RunDirError(f"{run_dir}: holds a previous run's checkpoints; continue it with --resume or choose "
                          "another --out (nothing was overwritten)")
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        lock.close()
        raise RunDirError(f"{run_dir}: only {free / 2**20:.0f} MiB free, the run needs about "
                          f"{needed_bytes / 2**20:.0f} MiB for checkpoints and logs")
    return lock


class ScalarLog:
    """Every logged scalar goes to metrics.jsonl and to TensorBoard event files."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.jsonl = open(run_dir / "metrics.jsonl", "a")
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
