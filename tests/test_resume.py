"""`python train.py` under faults (docs/reliability.md): killed, interrupted, corrupt checkpoints, NaN gradients, a
full or read-only disk, a second run on the same directory. Every interrupted run is resumed and must end with the
same parameters as an uninterrupted run, bit for bit (CPU, same seed, same data).

Each run is a subprocess of the real CLI on a tiny synthetic set (40 frames, 2 subjects: 20 training frames, so 5
steps per epoch at batch 4; 2 epochs; grid 16, width 4) with checkpoints every 2 steps and at each epoch's end
(steps 2, 4, 5, 6, 8, 10). The processes share a persistent XLA compilation cache, so only the first ones compile.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from v2v_jax.data.synth import write_msra_dataset
from v2v_jax.train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
FRAMES, SUBJECTS = 40, 2
TOTAL_STEPS = 10
TMP_MARK = "orbax-checkpoint-tmp"
RUN_TIMEOUT = 600  # s, a cold compile on the loaded 2-core machine takes about 1.5 min


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xla_cache")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return write_msra_dataset(tmp_path_factory.mktemp("data") / "synth", frames=FRAMES, seed=0, subjects=SUBJECTS)


def train_args(synth_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--root", str(synth_root), "--synth-frames", str(FRAMES),
            "--synth-subjects", str(SUBJECTS), "--out", str(out), "--grid", "16", "--width", "4", "--batch-size", "4",
            "--epochs", "2", "--checkpoint-every", "2", "--log-every", "1", "--eval-batches", "1", "--plots", "false",
            *extra]


class Run:
    """One `python train.py` process, its output captured in files beside the run directory."""

    def __init__(self, args: list[str], env: dict, out: Path, name: str):
        self.out = out
        self.log_path = out.parent / f"{out.name}.{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Its own process group, so that a test can signal the group as a terminal's Ctrl-C does.
        self.proc = subprocess.Popen(args, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"run did not finish within {timeout} s; output:\n{self.output[-3000:]}") from None

    def logged_step(self) -> int:
        """The last training step in metrics.jsonl (-1 before the first)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return -1
        steps = [json.loads(line)["step"] for line in path.read_text().split("\n")[:-1] if "train_loss" in line]
        return max(steps, default=-1)

    def wait_for_step(self, step: int, timeout: float = RUN_TIMEOUT) -> None:
        deadline = time.time() + timeout
        while self.logged_step() < step:
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited ({self.proc.returncode}) before step {step}:\n{self.output[-3000:]}")
            if time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"no step {step} within {timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.02)

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(RUN_TIMEOUT)


def run_to_end(args, env, out, name) -> Run:
    run = Run(args, env, out, name)
    assert run.finish() == 0, run.output[-3000:]
    return run


def final_checkpoint(out: Path) -> tuple[list[np.ndarray], dict]:
    """The verified arrays and record of the newest checkpoint of a finished run."""
    checkpoints = Checkpointer(out / "checkpoints")
    try:
        steps = checkpoints.steps()
        return checkpoints.read(steps[-1])
    finally:
        checkpoints.close()


def assert_same_parameters(out: Path, reference: tuple[list[np.ndarray], dict]) -> None:
    """Bitwise equality of every array (parameters, BN statistics, optimiser state, step, key) and of the record."""
    leaves, record = final_checkpoint(out)
    ref_leaves, ref_record = reference
    assert record["step"] == ref_record["step"] == TOTAL_STEPS
    assert len(leaves) == len(ref_leaves)
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert np.array_equal(a, b), f"array {i} differs: max |diff| {np.abs(a.astype(float) - b).max()}"
    assert record["sha256"] == ref_record["sha256"]
    assert {k: record[k] for k in ("epoch", "batch", "best", "history")} == \
        {k: ref_record[k] for k in ("epoch", "batch", "best", "history")}


@pytest.fixture(scope="module")
def reference(synth_root, env, tmp_path_factory):
    """An uninterrupted run: its final checkpoint, started in the background so that tests overlap with it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run = Run(train_args(synth_root, out), env, out, "uninterrupted")

    def result():
        assert run.finish() == 0, run.output[-3000:]
        return final_checkpoint(out)

    yield result
    if run.proc.poll() is None:
        run.kill()


def checkpoint_files(out: Path, step: int) -> list[Path]:
    """The array data files of checkpoint `step`, largest first."""
    files = [p for p in (out / "checkpoints" / str(step) / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return sorted(files, key=lambda p: -p.stat().st_size)


def flip_bytes(path: Path, rng: np.random.Generator, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in rng.choice(len(data), count, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def newest_step(out: Path) -> int:
    return max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def corrupt_newest(out: Path, how: str, rng: np.random.Generator) -> int:
    step = newest_step(out)
    target = checkpoint_files(out, step)[0]
    flip_bytes(target, rng) if how == "flip" else truncate(target)
    return step


def assert_fell_back(run: Run, corrupt_step: int) -> None:
    """The resumed run said it skipped the corrupt checkpoint, moved it aside, and resumed from an earlier one."""
    output = run.output
    assert re.search(rf"WARNING: checkpoint \S*checkpoints/{corrupt_step} is (corrupt|unreadable).*moved it to "
                     rf"\S*checkpoints_corrupt/{corrupt_step}.*falling back", output), output[-3000:]
    resumed = re.search(r"resumed from step (\d+)", output)
    assert resumed is None or int(resumed.group(1)) < corrupt_step, output[-3000:]
    assert (run.out / "checkpoints_corrupt" / str(corrupt_step)).is_dir()


def test_killed_run_resumes_bitwise_past_a_corrupt_checkpoint_and_refuses_a_second_run(synth_root, env, reference,
                                                                                        tmp_path):
    """Issue 6's resume test and issue 9 items 1 and 6 in one pass over a run:

    - while the run holds its directory (stopped with SIGSTOP, so it cannot finish meanwhile), a second run on the
      same --out is refused with a message naming the holder's pid;
    - SIGKILL once step 7 is logged (checkpoints 2, 4, 5, 6 are on disk); flip bytes in the newest checkpoint;
    - --resume warns, moves the corrupt checkpoint aside, resumes from an earlier one, and the run ends with the
      same parameters as the uninterrupted run, bit for bit.
    """
    out = tmp_path / "run"
    run = Run(train_args(synth_root, out), env, out, "killed")
    run.wait_for_step(3)
    run.proc.send_signal(signal.SIGSTOP)
    try:
        second = Run(train_args(synth_root, out), env, out, "second")
        assert second.finish() == 2, second.output[-3000:]
        assert f"another run (pid {run.proc.pid}) is writing to this directory" in second.output
    finally:
        run.proc.send_signal(signal.SIGCONT)
    run.wait_for_step(7)
    run.kill()
    assert run.proc.returncode == -signal.SIGKILL
    corrupt = corrupt_newest(out, "flip", np.random.default_rng(0))

    resumed = run_to_end(train_args(synth_root, out, "--resume"), env, out, "resumed")
    assert_fell_back(resumed, corrupt)
    assert_same_parameters(out, reference())
