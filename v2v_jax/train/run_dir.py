"""The run directory: exclusive ownership, early checks for writability and space, and scalar logs."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from tensorboardX import SummaryWriter


class RunDirError(RuntimeError):
    pass


def acquire(run_dir: Path, resume: bool, needed_bytes: int):
    """Creates/claims `run_dir` for this process; returns the open lock file (keep it open for the run).

    Refuses: a directory another live run holds (an exclusive `flock` on `run_dir/.lock`, released by the kernel
    when its holder exits, however it exits); a previous run's checkpoints without --resume (nothing is
    overwritten); an unwritable directory; less free space than `needed_bytes`.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "a+")
    except OSError as e:
        raise RunDirError(f"{run_dir}: output directory is not writable ({e.strerror})") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise RunDirError(f"{run_dir}: another run (pid {owner}) is writing to this directory; "
                          "wait for it or choose another --out") from None
    try:
        _check_run_dir(run_dir, resume, needed_bytes)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
    except OSError as e:
        lock.close()
        raise RunDirError(f"{run_dir}: output directory is not writable ({e.strerror})") from e
    except RunDirError:
        lock.close()
        raise
    return lock


def _check_run_dir(run_dir: Path, resume: bool, needed_bytes: int) -> None:
    with tempfile.TemporaryFile(dir=run_dir) as probe:  # a private name: two runs starting together cannot collide
        probe.write(b"ok")
        probe.flush()
    if not resume and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise RunDirError(f"{run_dir}: holds a previous run's checkpoints; continue it with --resume or choose "
                          "another --out (nothing was overwritten)")
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunDirError(f"{run_dir}: only {free / 2**20:.0f} MiB free, the run needs about "
                          f"{needed_bytes / 2**20:.0f} MiB for checkpoints and logs")


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
        try:
            self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self.jsonl.flush()
        except OSError as e:
            raise RunDirError(f"{self.jsonl.name}: cannot write the training log ({e.strerror}); the checkpoints "
                              "written so far are intact: free space, then continue with --resume") from e
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def read_log(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl; a last line without its newline (a write cut short by a crash or a full disk)
    is left out."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]
