"""`python train.py` under faults (docs/reliability.md): killed, interrupted, corrupt checkpoints, NaN gradients, a
full or read-only disk, a second run on the same directory. Every interrupted run is resumed and must end with the
same parameters as an uninterrupted run, bit for bit (CPU, same seed, same data).

Each run is a subprocess of the real CLI on a tiny synthetic set (40 frames, 2 subjects: 20 training frames, so 5
steps per epoch at batch 4; 2 epochs; grid 16, width 4) with checkpoints every 2 steps and at each epoch's end
(steps 2, 4, 5, 6, 8, 10). The processes share a persistent XLA compilation cache, so only the first ones compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from test_reliability import MiB, data_files, fill_disk, flip_bytes, tmpfs, truncate_half
from v2v_jax.config import Config, parse_config, repeat_flags
from v2v_jax.data import msra
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


def nan_args(args: list[str], step: int) -> list[str]:
    """`train_args` run through tests/faults.py, which gives step `step` NaN labels."""
    return [args[0], str(REPO / "tests" / "faults.py"), "--nan-at-step", str(step), *args[2:]]


class Run:
    """One `python train.py` process, its output captured in files beside the run directory."""

    def __init__(self, args: list[str], env: dict, out: Path, name: str, log_dir: Path | None = None):
        self.out = out
        self.log_path = (log_dir or out.parent) / f"{out.name}.{name}.log"
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


def run_to_end(args, env, out, name, log_dir=None) -> Run:
    run = Run(args, env, out, name, log_dir)
    assert run.finish() == 0, run.output[-3000:]
    return run


def final_checkpoint(out: Path) -> tuple[list[np.ndarray], dict]:
    """The verified arrays and record of the newest checkpoint of a finished run."""
    checkpoints = Checkpointer(out / "checkpoints", read_only=True)
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


class Reference:
    """The uninterrupted run, started in the background so that the tests overlap with it."""

    def __init__(self, synth_root, env, out):
        self.out = out
        self.run = Run(train_args(synth_root, out), env, out, "uninterrupted")

    def checkpoint(self) -> tuple[list[np.ndarray], dict]:
        assert self.run.finish() == 0, self.run.output[-3000:]
        return final_checkpoint(self.out)


@pytest.fixture(scope="module")
def reference(synth_root, env, tmp_path_factory):
    ref = Reference(synth_root, env, tmp_path_factory.mktemp("reference") / "run")
    yield ref
    if ref.run.proc.poll() is None:
        ref.run.kill()


def committed_steps(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def corrupt_newest(out: Path, how: str, rng: np.random.Generator) -> int:
    """Flips bytes in, or truncates, the largest array file of the newest checkpoint; returns its step."""
    step = committed_steps(out)[-1]
    target = data_files(out / "checkpoints" / str(step))[0]
    flip_bytes(target, int(rng.integers(2**31))) if how == "flip" else truncate_half(target)
    return step


def assert_fell_back(run: Run, corrupt_step: int) -> None:
    """The resumed run said it skipped the corrupt checkpoint, moved it aside, and resumed from an earlier one."""
    output = run.output
    assert re.search(rf"checkpoint \S*checkpoints/{corrupt_step} is (corrupt|unreadable).*moved it to "
                     rf"\S*checkpoints_corrupt/{corrupt_step}.*falling back", output), output[-3000:]
    resumed = re.search(r"resumed from step (\d+)", output)
    assert resumed is None or int(resumed.group(1)) < corrupt_step, output[-3000:]
    assert (run.out / "checkpoints_corrupt" / str(corrupt_step)).is_dir()


@pytest.mark.slow  # ~105 s on 2 cores; .ci/run runs it in its slow step
def test_killed_run_resumes_bitwise_past_a_corrupt_checkpoint(synth_root, env, reference, tmp_path):
    """A killed run and a damaged checkpoint in one pass (docs/reliability.md, "Process killed"): SIGKILL once step 7 is
    logged (checkpoints 2, 4, 5, 6 are on disk, the last maybe still being written); flip bytes in the newest
    checkpoint; --resume warns, moves it aside, resumes from an earlier one, and the run ends with the same parameters
    as the uninterrupted run, bit for bit."""
    out = tmp_path / "run"
    run = Run(train_args(synth_root, out), env, out, "killed")
    run.wait_for_step(7)
    run.kill()
    assert run.proc.returncode == -signal.SIGKILL
    corrupt = corrupt_newest(out, "flip", np.random.default_rng(0))

    resumed = run_to_end(train_args(synth_root, out, "--resume"), env, out, "resumed")
    assert_fell_back(resumed, corrupt)
    assert_same_parameters(out, reference.checkpoint())


# --- slow: the full fault sequences -----------------------------------------------------------------------------

def wait_for_output(run: Run, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match:
    deadline = time.time() + timeout
    while not (found := re.search(pattern, run.output)):
        if run.proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no {pattern!r} in the output:\n{run.output[-3000:]}")
        time.sleep(0.05)
    return found


def start_step(run: Run) -> int:
    """The step a run starts from: its resume point, or 0."""
    found = wait_for_output(run, r"resumed from step (\d+)|starting from scratch|steps per epoch")
    return int(found.group(1)) if found.group(1) else 0


def kill_during_checkpoint_write(run: Run) -> int | None:
    """SIGKILL the run as soon as a checkpoint's temporary directory appears; the step whose write was cut, or None
    if that write completed between the look and the kill."""
    folder = run.out / "checkpoints"
    deadline = time.time() + RUN_TIMEOUT
    while time.time() < deadline:
        if run.proc.poll() is not None:
            raise AssertionError(f"run exited ({run.proc.returncode}) before a checkpoint write:\n{run.output[-3000:]}")
        writing = [n for n in (os.listdir(folder) if folder.exists() else []) if TMP_MARK in n]
        if writing:
            run.kill()
            return int(writing[0].split(".")[0]) if (folder / writing[0]).exists() else None
        time.sleep(0.002)
    raise AssertionError("no checkpoint write seen")


@pytest.mark.slow
def test_five_sigkills_at_random_points_resume_bitwise(synth_root, env, reference, tmp_path):
    """docs/reliability.md, "Process killed": five SIGKILLs at seeded random points, one of them while a checkpoint is
    being written (tried again at the next write if that write wins the race); the newest checkpoint gets bytes flipped
    after the 2nd kill and is truncated after the 4th (or after the next kill that leaves a checkpoint). Every resume
    skips what it must, says so, and the run ends bitwise equal to the uninterrupted one."""
    rng = np.random.default_rng(9)
    out = tmp_path / "run"
    kinds = ["step"] * 5
    kinds[int(rng.integers(5))] = "write"
    corruptions = {2: "flip", 4: "truncate"}  # after kill number k
    queued, done_corruptions, cut_writes = [], [], []
    expect = {}  # what the next run must report: a corrupt step it skips, a cut write it must not pick up
    args = train_args(synth_root, out)
    k = 0
    while k < len(kinds):
        run = Run(args, env, out, f"kill{k + 1}")
        start = start_step(run)
        check_resume(run, start, expect)
        if kinds[k] == "write":
            cut = kill_during_checkpoint_write(run)
            if cut is None:
                kinds.append("write")
            else:
                cut_writes.append(cut)
                expect = {"cut": cut}
        else:
            run.wait_for_step(int(rng.integers(start + 1, max(start + 2, TOTAL_STEPS - 1))))
            time.sleep(float(rng.uniform(0, 0.2)))
            run.kill()
            expect = {}
        assert run.proc.returncode == -signal.SIGKILL, run.output[-3000:]
        k += 1
        queued += [corruptions[k]] if k in corruptions else []
        if queued and committed_steps(out):
            expect["corrupt"] = corrupt_newest(out, queued.pop(0), rng)
            done_corruptions.append(expect["corrupt"])
        args = train_args(synth_root, out, "--resume")
    final = run_to_end(args, env, out, "final")
    check_resume(final, start_step(final), expect)
    assert k >= 5 and cut_writes and len(done_corruptions) == 2, (kinds, cut_writes, done_corruptions)
    set_aside = sorted(p.name.split(".")[0] for p in (out / "checkpoints_corrupt").iterdir())  # step[.copy]
    assert set_aside == sorted(map(str, done_corruptions))
    assert not any(TMP_MARK in n for n in os.listdir(out / "checkpoints"))
    assert_same_parameters(out, reference.checkpoint())


def check_resume(run: Run, start: int, expect: dict) -> None:
    if "corrupt" in expect:
        wait_for_output(run, r"resumed from step|starting from scratch")
        assert_fell_back(run, expect["corrupt"])
    if "cut" in expect:
        assert start < expect["cut"], run.output[-3000:]  # the half-written checkpoint was not picked up


def resume_command(run: Run, signal_name: str) -> list[str]:
    """The command the run printed on its way out, as arguments for this interpreter (run from the repository)."""
    found = re.search(rf"{signal_name}: saved checkpoint at step (\d+) in (\S+)\. Resume with: python (.*)",
                      run.output)
    assert found, run.output[-3000:]
    assert int(found.group(1)) in committed_steps(run.out)
    Checkpointer(run.out / "checkpoints", read_only=True).read(int(found.group(1)))  # written completely, verifies
    return [sys.executable, *shlex.split(found.group(3))]


def assert_second_run_refused(run: Run, synth_root: Path, env: dict) -> None:
    """docs/reliability.md, "Concurrency": while `run` holds its directory (stopped with SIGSTOP, so that it cannot
    finish meanwhile), a second run on the same --out is refused with a message naming the holder's pid."""
    run.proc.send_signal(signal.SIGSTOP)
    try:
        second = Run(train_args(synth_root, run.out), env, run.out, "second")
        assert second.finish() == 2, second.output[-3000:]
        assert f"another run (pid {run.proc.pid}) is writing to this directory" in second.output
    finally:
        run.proc.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_sigint_and_sigterm_save_a_checkpoint_and_say_how_to_resume(synth_root, env, reference, tmp_path):
    """docs/reliability.md, "SIGINT and SIGTERM". Ctrl-C as a terminal sends it, then SIGTERM as a scheduler sends it:
    each to the whole process group, data-loader worker included. Each time the run saves a checkpoint, exits with 130 /
    143 and prints the command that resumes it; running those commands ends bitwise equal to the uninterrupted run.
    Before the interruption, a second run on the same directory is refused ("Concurrency")."""
    out = tmp_path / "run"
    run = Run(train_args(synth_root, out, "--num-workers", "1"), env, out, "sigint")
    run.wait_for_step(3)
    assert_second_run_refused(run, synth_root, env)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish() == 130, run.output[-3000:]
    command = resume_command(run, "SIGINT")

    run = Run(command, env, out, "sigterm")
    run.wait_for_step(start_step(run) + 2)
    os.killpg(run.proc.pid, signal.SIGTERM)
    assert run.finish() == 143, run.output[-3000:]
    run_to_end(resume_command(run, "SIGTERM"), env, out, "final")
    assert_same_parameters(out, reference.checkpoint())


@pytest.mark.slow
def test_nan_gradient_stops_the_run_naming_the_step_and_earlier_checkpoints_stay_valid(synth_root, env, tmp_path):
    """docs/reliability.md, "Numerical faults", 'stop': NaN gradients at step 7 stop the run there, naming step 7 and
    the last good checkpoint (6); every checkpoint on disk verifies, and --resume (without the fault) continues from 6
    to the end.

    The fault is NaN labels at step 7 (tests/faults.py)."""
    out = tmp_path / "run"
    run = Run(nan_args(train_args(synth_root, out), 7), env, out, "nan")
    assert run.finish() == 2, run.output[-3000:]
    assert re.search(r"error: non-finite loss or gradient at step 7 \(loss .*\); stopped without saving it\. Last "
                     r"good checkpoint: \S*checkpoints/6\. Resume from it with --resume, or pass --on-nonfinite skip",
                     run.output), run.output[-3000:]
    assert committed_steps(out) == [4, 5, 6]  # the last three (--keep-checkpoints 3)
    checkpoints = Checkpointer(out / "checkpoints", read_only=True)
    for step in committed_steps(out):
        leaves, record = checkpoints.read(step)
        assert record["step"] == step and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")
    checkpoints.close()
    resumed = run_to_end(train_args(synth_root, out, "--resume"), env, out, "resumed")
    assert "resumed from step 6 (epoch 2, batch 1)" in resumed.output
    leaves, record = final_checkpoint(out)
    assert record["step"] == TOTAL_STEPS and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")


@pytest.mark.slow
def test_nan_gradient_step_is_skipped_and_counted_under_skip(synth_root, env, tmp_path):
    """docs/reliability.md, "Numerical faults", 'skip': the step is skipped, named and counted (stdout, metrics.jsonl,
    the state); the run finishes with finite parameters."""
    out = tmp_path / "run"
    run = run_to_end(nan_args(train_args(synth_root, out, "--on-nonfinite", "skip"), 7), env, out, "skip")
    assert "step 7: non-finite loss or gradient; skipped it (1 so far)" in run.output
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped"]) for r in log if "skipped" in r] == [(s, int(s >= 7)) for s in range(1, 11)]
    leaves, record = final_checkpoint(out)
    assert record["step"] == TOTAL_STEPS and int(leaves[-1]) == 1  # TrainState.skipped is the last leaf
    assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")


@contextlib.contextmanager
def read_only_view(mount: Path):
    """Makes the file system at `mount` read-only for every new open, even while a process writes there (a plain
    remount is refused then): the writable mount moves aside, its open files still working, and a read-only bind
    of it takes its place; on exit the writable view comes back."""
    aside = mount.with_name(mount.name + "-rw")
    aside.mkdir()
    for args in (["--bind", mount, aside], ["-l", mount], ["--bind", aside, mount], ["-o", "remount,bind,ro", mount]):
        subprocess.run(["umount" if args[0] == "-l" else "mount", *map(str, args)], check=True)
    try:
        yield
    finally:
        for command in (["umount", mount], ["mount", "--bind", aside, mount], ["umount", aside]):
            subprocess.run(list(map(str, command)), check=True)
        aside.rmdir()


def wait_for_checkpoint(run: Run, step: int) -> None:
    deadline = time.time() + RUN_TIMEOUT
    while step not in committed_steps(run.out):
        if run.proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no checkpoint {step}:\n{run.output[-3000:]}")
        time.sleep(0.02)


def finish_promptly(run: Run) -> int:
    """The exit status of a run that has just failed; it must not linger (orbax's writer threads once did)."""
    started = time.time()
    status = run.finish()
    assert time.time() - started < 120, f"exit took {time.time() - started:.0f} s"
    return status


WRITE_FAILED = (r"error: (could not write checkpoint \S*checkpoints/\d+: {0}; the last good checkpoint, "
                r"\S*checkpoints/\d+, is intact|\S*run: cannot write the training logs "
                r"\(metrics.jsonl, tensorboard/\): {0}; the checkpoints written so far are intact)")


@pytest.mark.slow
def test_full_or_read_only_disk_is_a_clear_error_and_the_last_checkpoint_stays_intact(synth_root, env, reference,
                                                                                      tmp_path):
    """docs/reliability.md, "Full or read-only disk", on real small file systems (tmpfs, root only): too little space or
    a read-only directory is refused before training; a disk that fills or turns read-only during training stops the run
    at the failing write with a clear error; the last checkpoint verifies, and after freeing space --resume ends bitwise
    equal to the uninterrupted run."""
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    logs.mkdir()
    out = disk / "run"
    with tmpfs(disk, 16 * MiB):
        run = Run(train_args(synth_root, out), env, out, "small", logs)
        assert finish_promptly(run) == 2
        assert re.search(r"error: \S*disk/run: only 1[56] MiB free, the run needs about \d+ MiB for checkpoints and "
                         r"logs", run.output), run.output[-3000:]
        assert "initial loss" not in run.output  # before training
    with tmpfs(disk, MiB, read_only=True):
        run = Run(train_args(synth_root, out), env, out, "read-only", logs)
        assert finish_promptly(run) == 2
        assert "output directory is not writable (Read-only file system)" in run.output, run.output[-3000:]
    for fault in ("read-only", "full"):
        with tmpfs(disk, 80 * MiB):
            run = Run(train_args(synth_root, out), env, out, f"turns-{fault}", logs)
            wait_for_checkpoint(run, 2)
            if fault == "full":
                filler = fill_disk(disk)
                assert finish_promptly(run) == 2
                filler.unlink()
            else:
                with read_only_view(disk):
                    assert finish_promptly(run) == 2
            # The read-only view is a bind mount laid over the directory: a write in flight when it lands loses the
            # temporary directory it had created beneath (ENOENT) instead of meeting EROFS.
            reason = ("No space left on device" if fault == "full"
                      else "(Read-only file system|No such file or directory)")
            assert re.search(WRITE_FAILED.format(reason), run.output), run.output[-3000:]
            steps = committed_steps(out)
            checkpoints = Checkpointer(out / "checkpoints", read_only=True)
            assert checkpoints.read(steps[-1])[1]["step"] == steps[-1]  # intact
            checkpoints.close()
            if fault == "full":
                run_to_end(train_args(synth_root, out, "--resume"), env, out, "resumed", logs)
                assert_same_parameters(out, reference.checkpoint())


@pytest.mark.slow
def test_bad_frame_policy_end_to_end(synth_root, env, tmp_path):
    """docs/reliability.md, "Data faults", through the CLI: a truncated training frame stops `--on-bad-frame error`
    naming the file, and `--on-bad-frame skip` trains without it, reporting it."""
    root = tmp_path / "synth"
    shutil.copytree(synth_root, root)
    bad = root / "P0" / "5" / msra.depth_name(0)
    bad.write_bytes(bad.read_bytes()[:100])
    run = Run(train_args(root, tmp_path / "error", "--on-bad-frame", "error"), env, tmp_path / "error", "error")
    assert run.finish() == 2, run.output[-3000:]
    assert re.search(rf"error: {re.escape(str(bad))}: truncated \.bin, .*; to skip such frames instead \(logged and "
                     r"counted\) use on_bad_frame='skip' \(train.py --on-bad-frame skip\)", run.output), run.output
    run = run_to_end(train_args(root, tmp_path / "skip", "--on-bad-frame", "skip"), env, tmp_path / "skip", "skip")
    assert "msra train: 19 frames kept, 1 skipped (0 invalid centre, 1 bad frame: unreadable depth file)" in run.output
    assert re.search(rf"skipping frame P0/5/000000: {re.escape(str(bad))}: truncated", run.output), run.output[-3000:]


@pytest.mark.slow
def test_readers_during_training_never_harm_it(synth_root, env, reference, tmp_path):
    """`predict --checkpoint RUN` while RUN trains (it killed the training in 4 of 4 tries, its clean-up deleting
    the checkpoint being written), and beside it predict's loading again and again in this process, a checkpoint
    written at every step meanwhile: the training ends, bitwise equal to the uninterrupted run."""
    from v2v_jax import predict
    out = tmp_path / "run"
    run = Run(train_args(synth_root, out, "--checkpoint-every", "1"), env, out, "read")
    wait_for_checkpoint(run, 1)
    cli = subprocess.Popen([sys.executable, "-m", "v2v_jax.predict", "--checkpoint", str(out), "--result-file",
                            str(tmp_path / "r.txt")], env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    reads = 0
    while run.proc.poll() is None:
        predict.load_run(out)
        reads += 1
    assert run.finish() == 0, run.output[-3000:]
    assert cli.wait(RUN_TIMEOUT) == 0, cli.stderr.read()[-3000:]
    assert reads >= 1
    assert_same_parameters(out, reference.checkpoint())


@pytest.mark.slow
def test_a_sigkilled_run_leaves_no_loader_processes(synth_root, env, tmp_path):
    """SIGKILL of `train.py --num-workers 1`: the worker, forkserver and resource tracker end too (they lived on
    for minutes, about 260 MB)."""
    from test_reliability import assert_helpers_end_with
    out = tmp_path / "run"
    run = Run(train_args(synth_root, out, "--num-workers", "1"), env, out, "workers")
    run.wait_for_step(2)
    assert_helpers_end_with(run.proc.pid, run.kill)


@pytest.mark.slow
def test_another_synthetic_set_on_the_same_root_is_refused_while_a_run_reads_it(synth_root, env, reference,
                                                                                tmp_path):
    """A second run asking for other synthetic frames on the first run's --root is refused by name; the first run
    (its data unchanged under it) ends bitwise equal to the uninterrupted run."""
    root = tmp_path / "synth"
    shutil.copytree(synth_root, root)
    out = tmp_path / "run"
    run = Run(train_args(root, out), env, out, "first")
    run.wait_for_step(1)
    other = [*train_args(root, tmp_path / "other"), "--synth-frames", str(FRAMES + 17)]
    second = Run(other, env, tmp_path / "other", "second", tmp_path)
    assert second.finish() == 2, second.output[-3000:]
    assert re.search(rf"error: \S*synth: holds another synthetic set \({FRAMES} frames, {SUBJECTS} subjects, seed 0 "
                     r".*nothing was replaced", second.output), second.output[-3000:]
    assert run.finish() == 0, run.output[-3000:]
    assert_same_parameters(out, reference.checkpoint())


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_printed_resume_flags_survive_spaces_and_quotes(preset):
    # Config() holds the paper's values where the default preset chooses others (schedule, loss, decoding): a flag
    # set back to the dataclass default must still be printed, or the resumed run takes the preset's value.
    cfg = dataclasses.replace(Config(), preset=preset, root="my data/it's here", lr=5e-4, augment=False, grid=16)
    assert parse_config(shlex.split(repeat_flags(cfg))) == cfg
    assert parse_config(shlex.split(repeat_flags(parse_config(["--preset", preset])))) == parse_config(
        ["--preset", preset])
