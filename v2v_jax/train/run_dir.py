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
from tensorboardX.proto.event_pb2 import Event, SessionLog
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

    A run that continues from step `start` (0: from scratch) keeps the records of the steps it does not redo
    (`kept_through`) and no others: metrics.jsonl loses the later lines, and each new event file opens with
    TensorBoard's purge marker (a SessionLog START at the first redone step, as SummaryWriter(purge_step=...)
    writes it), which hides the older files' events from that step on.
    """

    def __init__(self, run_dir: Path, start: int = 0, enabled: bool = True):
        self.enabled, self.run_dir = enabled, run_dir
        if enabled:
            truncate_log(run_dir, start)
            self.jsonl = open(run_dir / "metrics.jsonl", "a")
            (run_dir / "tensorboard").mkdir(exist_ok=True)
            # tensorboardX names a file by the second it opens it and truncates an existing one: add a finer stamp.
            self.events = EventsWriter(str(run_dir / "tensorboard" / "events"), filename_suffix=f".{time.time_ns()}")
            purge = kept_through(start) + 1
            self.events.write_event(Event(step=purge, session_log=SessionLog(status=SessionLog.START)))

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


def kept_through(start: int) -> int:
    """The last logged step that a run continuing from step `start` does not log again. Records of step `start`
    itself were written before its checkpoint, except those of step 0 (the initial losses), which a run from
    scratch writes again."""
    return start if start > 0 else -1


def truncate_log(run_dir: Path, start: int) -> None:
    """Drop the metrics.jsonl lines of the steps a run continuing from `start` redoes (`kept_through`)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    last = kept_through(start)
    text = "".join(json.dumps(r) + "\n" for r in read_log(run_dir) if r["step"] <= last)  # drops a torn last line
    if text != path.read_text():
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def set_aside_logs(run_dir: Path, folder: Path) -> Path:
    """Moves metrics.jsonl and tensorboard/ of `run_dir` into a new subfolder of `folder`; returns that subfolder.
    (For a run whose every checkpoint was corrupt: it starts again, and the logs of the lost run stay beside its
    checkpoints.)"""
    target = folder / "logs"
    copies = 1
    while target.exists():
        target, copies = folder / f"logs.{copies}", copies + 1
    target.mkdir(parents=True)
    for name in ("metrics.jsonl", "tensorboard"):
        if (run_dir / name).exists():
            (run_dir / name).rename(target / name)
    return target


def initial_record(log: list[dict]) -> dict | None:
    """The record `train.py` writes before the first step (initial, all-zero-output and floor losses), if any."""
    return next((r for r in log if "zero_output_loss" in r), None)
