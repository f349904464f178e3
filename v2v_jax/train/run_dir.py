"""The run directory: exclusive ownership, early checks for writability and space, and scalar logs."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary


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
    """Every logged scalar goes to metrics.jsonl and to a TensorBoard event file.

    Both are written and flushed synchronously, so a failing write (a full disk) raises RunDirError in the training
    loop. (tensorboardX's SummaryWriter writes from a thread that dies on such an error, after which its bounded
    queue blocks the loop forever.)
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled, self.run_dir = enabled, run_dir
        if enabled:
            self.jsonl = open(run_dir / "metrics.jsonl", "a")
            (run_dir / "tensorboard").mkdir(exist_ok=True)
            self.events = EventsWriter(str(run_dir / "tensorboard" / "events"))

    def write(self, step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        summary = Summary(value=[Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()])
        try:
            self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self.jsonl.flush()
            self.events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
            self.events.flush()
        except OSError as e:
            raise RunDirError(f"{self.run_dir}: cannot write the training logs (metrics.jsonl, tensorboard/): "
                              f"{e.strerror}; the checkpoints written so far are intact: free space, then continue "
                              "with --resume") from e

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.events.close()


def read_log(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl; a last line without its newline (a write cut short by a crash or a full disk)
    is left out."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def truncate_log(run_dir: Path, step: int) -> None:
    """On resume, drop log lines past the restored step (they describe work that is being redone)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    text = "".join(json.dumps(r) + "\n" for r in read_log(run_dir) if r["step"] <= step)  # drops a torn last line
    if text != path.read_text():
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def initial_record(log: list[dict]) -> dict | None:
    """The record `train.py` writes before the first step (initial, all-zero-output and floor losses), if any."""
    return next((r for r in log if "zero_output_loss" in r), None)
