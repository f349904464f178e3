"""Fault injection below the CLI (docs/reliability.md): checkpoints, the run directory, the train step and the data
sets, each fault raised on purpose and the recovery checked. `tests/test_resume.py` does the same through
`python train.py`.

Full-disk and read-only cases mount a small tmpfs, which needs root; elsewhere they are skipped with that reason.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from v2v_jax.data import msra
from v2v_jax.data.base import DataError
from v2v_jax.data.loader import BatchLoader, batches
from v2v_jax.data.synth import write_msra_dataset
from v2v_jax.model import Basic3DBlock
from v2v_jax.train import run_dir as run_dir_lib
from v2v_jax.train.checkpoint import Checkpointer, CheckpointError, CorruptCheckpointError
from v2v_jax.train.loop import restore
from v2v_jax.train.run_dir import RunDirError, ScalarLog, acquire, read_log, truncate_log
from v2v_jax.train.optim import make_optimizer
from v2v_jax.train.step import TrainState, ema_update, init_state, make_update, numerics_for

MiB = 2**20
pytestmark = pytest.mark.timeout(300)  # a fault that hangs (instead of raising) fails here rather than stalling CI


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int, read_only: bool = False):
    """A tmpfs of `size_bytes` mounted at `path` (root only: the test is skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to simulate a full or read-only disk (needs root): "
                    f"{mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill_disk(path: Path) -> Path:
    """Writes zeros to a file under `path` until the file system is full; returns the file."""
    filler = path / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(bytes(64 * 1024))
            f.flush()
    return filler


# --- checkpoints ------------------------------------------------------------------------------------------------

def tiny_state(value: int) -> TrainState:
    """A TrainState-shaped tree of small arrays drawn from seed `value` (random, so that they do not compress to
    nothing and their bytes dominate the checkpoint's files)."""
    rng = np.random.default_rng(value)
    params = {"w": jnp.asarray(rng.standard_normal(4000), jnp.float32), "b": jnp.asarray(rng.standard_normal(3),
                                                                                         jnp.float32)}
    return TrainState(step=jnp.asarray(value, jnp.int32), params=params,
                      batch_stats={"mean": jnp.asarray(rng.standard_normal(3), jnp.float32)},
                      opt_state=(jnp.asarray(rng.standard_normal(4000), jnp.float32),), key=jax.random.key(value),
                      skipped=jnp.zeros((), jnp.int32))


def host(state: TrainState) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state.replace(key=jax.random.key_data(state.key)))]


def assert_state_equal(a: TrainState, b: TrainState) -> None:
    for x, y in zip(host(a), host(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def saved(directory: Path, steps) -> Checkpointer:
    checkpoints = Checkpointer(directory)
    for s in steps:
        checkpoints.save(tiny_state(s), {"step": s})
    checkpoints.wait()
    return checkpoints


def data_files(step_dir: Path) -> list[Path]:
    """The array chunk files of a checkpoint, largest first."""
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
                  key=lambda p: -p.stat().st_size)


def flip_bytes(path: Path, seed: int = 0) -> None:
    """Inverts 8 bytes of the file at positions drawn from `seed`."""
    data = bytearray(path.read_bytes())
    for i in np.random.default_rng(seed).choice(len(data), 8, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def forge_record(step_dir: Path) -> None:
    """Rewrites the record's hash, as if the arrays had changed after it was written."""
    record = step_dir / "record" / "metadata"
    record.write_text(record.read_text().replace('"sha256": "', '"sha256": "0'))


def edit_position(step_dir: Path) -> None:
    """Changes what a resumed run would continue from (its data position and evaluations), keeping the hash."""
    path = step_dir / "record" / "metadata"
    record = json.loads(path.read_text())
    record.update(epoch=7, batch=1, history=[{"epoch": 1, "mean_error_mm": 1.0}])
    path.write_text(json.dumps(record))


CORRUPTIONS = {
    "flipped bytes": lambda step_dir: flip_bytes(data_files(step_dir)[0]),
    "truncated array file": lambda step_dir: truncate_half(data_files(step_dir)[0]),
    "deleted array file": lambda step_dir: data_files(step_dir)[0].unlink(),
    "forged hash": forge_record,
    "broken record": lambda step_dir: (step_dir / "record" / "metadata").write_text("{"),
    "edited record": edit_position,
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_newest_checkpoint_is_never_restored(tmp_path, corruption, caplog):
    """restore_latest skips a corrupt newest checkpoint, says so, and (resuming) moves it aside so that the run can
    write that step again."""
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2, 3]).close()
    CORRUPTIONS[corruption](directory / "3")

    checkpoints = Checkpointer(directory)
    with pytest.raises(CorruptCheckpointError, match=r"checkpoints/3 is (corrupt|unreadable)"):
        checkpoints.restore(tiny_state(0), 3)
    with caplog.at_level(logging.WARNING):
        state, record = checkpoints.restore_latest(tiny_state(0), set_aside_corrupt=True)
    assert record["step"] == 2
    assert_state_equal(state, tiny_state(2))
    assert re.search(r"checkpoints/3 is (corrupt|unreadable).*moved it to \S*checkpoints_corrupt/3; falling back",
                     caplog.text)
    assert (tmp_path / "checkpoints_corrupt" / "3").is_dir() and checkpoints.steps() == [1, 2]

    checkpoints.save(tiny_state(3), {"step": 3})  # the resumed run writes step 3 again
    checkpoints.close()
    state, record = Checkpointer(directory).restore_latest(tiny_state(0))
    assert record["step"] == 3
    assert_state_equal(state, tiny_state(3))


def test_every_checkpoint_corrupt_gives_none_and_keeps_the_files(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    for step in (1, 2):
        flip_bytes(data_files(directory / str(step))[0])
    assert Checkpointer(directory).restore_latest(tiny_state(0), set_aside_corrupt=True) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints_corrupt").iterdir()) == ["1", "2"]  # kept, not deleted


def test_checkpoint_of_another_model_is_an_error_not_a_fallback(tmp_path):
    """A shape mismatch means the wrong configuration, not corruption: raise, move nothing."""
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    other = tiny_state(0).replace(params={"w": jnp.zeros((1000,), jnp.float32), "b": jnp.zeros(3, jnp.float32)})
    with pytest.raises(CheckpointError, match=r"checkpoints/2 does not fit this model: array \d+ is \(\(4000,\)"):
        Checkpointer(directory).restore_latest(other, set_aside_corrupt=True)
    assert not (tmp_path / "checkpoints_corrupt").exists()


def test_write_interrupted_before_commit_leaves_no_checkpoint(tmp_path):
    """Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when complete: the leftovers of a process
    killed mid-write are not a checkpoint, and the next Checkpointer removes them (the end-to-end SIGKILL test in
    test_resume.py kills a real run mid-write)."""
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    shutil.copytree(directory / "2", directory / "3.orbax-checkpoint-tmp")
    (directory / "3.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
    checkpoints = Checkpointer(directory)
    assert checkpoints.steps() == [1, 2]
    assert checkpoints.restore_latest(tiny_state(0))[1]["step"] == 2
    checkpoints.save(tiny_state(3), {"step": 3})
    checkpoints.close()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]


def in_progress_write(directory: Path, step: int) -> Path:
    """What a training run writing checkpoint `step` has on disk at that moment (orbax's temporary directory)."""
    tmp = directory / f"{step}.orbax-checkpoint-tmp"
    shutil.copytree(directory / "1", tmp)
    (tmp / "commit_success.txt").unlink(missing_ok=True)
    return tmp


def test_a_reader_never_touches_the_writers_files(tmp_path):
    """predict and the tests open checkpoints while a training run writes them: a reader must not clean up the
    writer's temporary directory (a clean-up killed the training in 4 of 4 tries), nor write, nor move."""
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    flip_bytes(data_files(directory / "2")[0])
    writing = in_progress_write(directory, 3)
    reader = Checkpointer(directory, read_only=True)
    assert reader.steps() == [1, 2]
    assert reader.restore_latest(tiny_state(0))[1]["step"] == 1  # falls back past the corrupt one...
    assert (directory / "2").is_dir() and not (tmp_path / "checkpoints_corrupt").exists()  # ...and moves nothing
    with pytest.raises(CheckpointError, match="opened read-only; cannot save step 4"):
        reader.save(tiny_state(4), {"step": 4})
    reader.close()
    assert writing.is_dir() and sorted(p.name for p in directory.iterdir()) == ["1", "2", writing.name]


def test_the_writer_blames_what_failed(tmp_path, monkeypatch):
    """A write whose files vanished (another program deleted them) is not blamed on disk space."""
    checkpoints = saved(tmp_path / "checkpoints", [1])

    def vanished(*_args, **_kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(checkpoints.manager, "save", vanished)
    with pytest.raises(CheckpointError, match=r"checkpoints/2: No such file or directory; the last good checkpoint, "
                                              r"\S*checkpoints/1, is intact\. A file of the write vanished") as error:
        checkpoints.save(tiny_state(2), {"step": 2})
    assert "space" not in str(error.value)
    checkpoints.close()


def test_a_failed_read_leaves_no_event_loop_tracebacks(tmp_path, monkeypatch):
    """A truncated array file ends orbax's event loop while tensorstore completes the other reads; those completions
    (RuntimeError 'Event loop is closed', reported as unraisable: 80-150 tracebacks in a V2V run) are dropped, and
    every other unraisable exception still reaches the hook."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    truncate_half(data_files(directory / "2")[0])
    assert Checkpointer(directory).restore_latest(tiny_state(0))[1]["step"] == 1
    time.sleep(0.5)  # the late completions
    assert reported == []
    other = sys.unraisablehook
    other(types.SimpleNamespace(exc_value=RuntimeError("something else")))
    assert len(reported) == 1


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_failed_checkpoint_write_is_reported_and_the_last_good_one_stays_intact(tmp_path, fault):
    mount = tmp_path / "disk"
    with tmpfs(mount, 4 * MiB):
        checkpoints = saved(mount / "checkpoints", [1])
        filler = fill_disk(mount) if fault == "disk full" else remount(mount, "ro")
        expected = "No space left on device" if fault == "disk full" else "Read-only file system"
        with pytest.raises(CheckpointError, match=rf"could not write checkpoint \S*checkpoints/2: {expected}; "
                                                  rf"the last good checkpoint, \S*checkpoints/1, is intact"):
            checkpoints.save(tiny_state(2), {"step": 2})
            checkpoints.wait()  # the write is asynchronous: its failure may surface here
        checkpoints.close()  # already reported: closing does not raise again
        if fault == "disk full":
            filler.unlink()
        else:
            remount(mount, "rw")
        reopened = Checkpointer(mount / "checkpoints")
        assert reopened.steps() == [1]
        state, record = reopened.restore_latest(tiny_state(0))
        assert record["step"] == 1
        assert_state_equal(state, tiny_state(1))
        reopened.close()


# --- the run directory ------------------------------------------------------------------------------------------

HOLD_LOCK = ("import sys, time; from pathlib import Path; from v2v_jax.train.run_dir import acquire; "
             "lock = acquire(Path(sys.argv[1]), False, 0); print('held', flush=True); time.sleep(600)")


def test_second_run_on_the_same_directory_is_refused_until_the_first_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"another run \(pid {holder.pid}\) is writing to this directory; "
                                              "wait for it or choose another --out"):
            acquire(run, False, 0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire(run, False, 0).close()  # the kernel released the lock of the killed holder


def test_previous_run_is_not_overwritten_without_resume(tmp_path):
    run = tmp_path / "run"
    saved(run / "checkpoints", [1]).close()
    with pytest.raises(RunDirError, match="holds a previous run's checkpoints; continue it with --resume"):
        acquire(run, False, 0)
    acquire(run, True, 0).close()


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir_lib.shutil, "disk_usage", lambda _: usage(100 * MiB, 90 * MiB, 10 * MiB))
    with pytest.raises(RunDirError, match="only 10 MiB free, the run needs about 64 MiB"):
        acquire(tmp_path / "run", False, 64 * MiB)
    acquire(tmp_path / "run", False, 5 * MiB).close()  # the refusal released the lock


def test_too_little_free_space_on_a_real_small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", 8 * MiB) as disk:
        with pytest.raises(RunDirError, match=r"only [78] MiB free, the run needs about 64 MiB"):
            acquire(disk / "run", False, 64 * MiB)


def test_read_only_output_directory_is_refused_before_training(tmp_path):
    with tmpfs(tmp_path / "disk", MiB, read_only=True) as disk:
        with pytest.raises(RunDirError, match=r"disk/run: output directory is not writable \(Read-only file system"):
            acquire(disk / "run", False, 0)
        with pytest.raises(RunDirError, match=r"disk: output directory is not writable \(Read-only file system"):
            acquire(disk, True, 0)


def test_full_disk_while_logging_is_a_clear_error(tmp_path):
    with tmpfs(tmp_path / "disk", 4 * MiB) as disk:
        log = ScalarLog(disk)
        log.write(1, train_loss=0.5)
        fill_disk(disk)
        with pytest.raises(RunDirError, match=r"disk: cannot write the training logs \(metrics.jsonl, tensorboard/\): "
                                              "No space left on device"):
            for step in range(2, 10_000):  # until the page cache must go to the full disk
                log.write(step, train_loss=0.5)
        assert read_log(disk)[0] == {"step": 1, "train_loss": 0.5}


def event_files(run_dir: Path) -> list[list]:
    """The events of each TensorBoard file of a run, files in the order TensorBoard reads them (by name)."""
    from tensorboardX.proto.event_pb2 import Event
    files = []
    for path in sorted((run_dir / "tensorboard").iterdir()):
        data, events, at = path.read_bytes(), [], 0
        while at < len(data):  # TFRecord: uint64 length, uint32 CRC, payload, uint32 CRC
            length = int.from_bytes(data[at:at + 8], "little")
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 16 + length
        files.append(events)
    return files


def visible_scalars(run_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar TensorBoard shows. Its purge rule (tensorboardX SummaryWriter's `purge_step`):
    a SessionLog START at step s hides the events of earlier files whose step is >= s."""
    shown = []
    for events in event_files(run_dir):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                shown = [(tag, step) for tag, step in shown if step < event.step]
        shown += [(v.tag, event.step) for event in events for v in event.summary.value]
    return shown


def test_a_restarted_run_logs_each_step_once(tmp_path):
    """Killed before its first checkpoint and restarted from scratch (step 0), then killed after checkpoint 2 and
    resumed from it: metrics.jsonl and TensorBoard hold each (scalar, step) once."""
    def run(start, stop):
        log = ScalarLog(tmp_path, start)
        if start == 0:
            log.write(0, zero_output_loss=1.0)
        for step in range(start + 1, stop + 1):
            log.write(step, train_loss=float(step))
        log.close()

    run(0, 3)
    run(0, 4)  # restarted from scratch
    run(2, 5)  # resumed from checkpoint 2
    records = [(r["step"], next(k for k in r if k != "step")) for r in read_log(tmp_path)]
    assert records == [(0, "zero_output_loss")] + [(s, "train_loss") for s in range(1, 6)]
    shown = visible_scalars(tmp_path)
    assert sorted(shown) == sorted(set(shown)) and len(shown) == 6


def test_a_run_whose_every_checkpoint_is_corrupt_keeps_its_logs(tmp_path, capsys):
    directory = tmp_path / "checkpoints"
    saved(directory, [1, 2]).close()
    for step in (1, 2):
        flip_bytes(data_files(directory / str(step))[0])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n')
    (tmp_path / "tensorboard").mkdir()
    checkpoints = Checkpointer(directory)
    state, progress = restore(checkpoints, tiny_state(0), is_writer=True)
    checkpoints.close()
    assert int(state.step) == 0 and progress.history == []
    kept = tmp_path / "checkpoints_corrupt" / "logs"
    assert (kept / "metrics.jsonl").read_text() == '{"step": 1, "train_loss": 1.0}\n' and (kept / "tensorboard").is_dir()
    assert f"the logs of the run they belonged to are in {kept}; starting from scratch" in capsys.readouterr().out


def test_log_line_cut_short_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
    assert read_log(tmp_path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    truncate_log(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'
    truncate_log(tmp_path, 1)
    assert read_log(tmp_path) == [{"step": 1, "a": 1.0}]


# --- numerical faults in the train step -------------------------------------------------------------------------

class TinyNet(nnx.Module):
    """One 1x1x1 conv + BatchNorm + ReLU: the step's logic without V2V's compile time."""

    def __init__(self, rngs: nnx.Rngs):
        self.block = Basic3DBlock(1, 3, 1, numerics=numerics_for("float32"), rngs=rngs)

    def __call__(self, x):
        return self.block(x)


def run_steps(on_nonfinite: str, nan_at_step: int, steps: int, ema_decay: float = 0.0):
    """[(state before, metrics, state after)] of `steps` updates of TinyNet on a fixed batch, whose targets are NaN
    at step `nan_at_step` (counted from 1); with `ema_decay`, the state keeps moving averages."""
    tx = make_optimizer("rmsprop", 1e-2)
    train_def, _, state = init_state(TinyNet(nnx.Rngs(0)), tx, 0, ema=ema_decay > 0)
    update = jax.jit(make_update(train_def, tx, on_nonfinite=on_nonfinite, ema_decay=ema_decay))
    rng = np.random.default_rng(0)
    voxels = (rng.random((2, 4, 4, 4, 1)) < 0.5).astype(np.float32)
    coords = rng.uniform(0, 4, (2, 3, 3)).astype(np.float32)
    history = []
    for _ in range(steps):
        poison = np.nan if int(state.step) + 1 == nan_at_step else 1.0
        new, metrics = update(state, voxels, coords * np.float32(poison))
        history.append((state, jax.device_get(metrics), new))
        state = new
    return history


def test_injected_nan_is_flagged_at_its_step():
    """Step 3 (counted from 1, as the loop logs and names steps) gets NaN gradients; it alone is flagged, and the
    loop stops there (end to end: test_resume.py)."""
    history = run_steps("stop", nan_at_step=3, steps=3)
    assert [bool(m["finite"]) for _, m, _ in history] == [True, True, False]
    assert [int(after.step) for _, _, after in history] == [1, 2, 3]


def test_injected_nan_step_is_skipped_and_counted():
    """Also under --ema-decay: the moving averages follow the weights and stand still on the skipped step."""
    history = run_steps("skip", nan_at_step=3, steps=5, ema_decay=0.9)
    assert [bool(m["finite"]) for _, m, _ in history] == [True, True, False, True, True]
    for before_step, metrics, after_step in history:
        for name in ("params", "batch_stats"):
            previous = getattr(before_step, "ema_" + name)
            expected = (ema_update(previous, getattr(after_step, name), after_step.step, 0.9) if metrics["finite"]
                        else previous)
            for x, y in zip(jax.tree.leaves(getattr(after_step, "ema_" + name)), jax.tree.leaves(expected),
                            strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-6)
    before, _, after = history[2]
    for name in ("params", "batch_stats", "opt_state"):  # the skipped step changed nothing but the counters
        for x, y in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name)), strict=True):
            assert np.array_equal(x, y)
    assert [int(a.skipped) for _, _, a in history] == [0, 0, 1, 1, 1]
    assert [int(a.step) for _, _, a in history] == [1, 2, 3, 4, 5]
    final = history[-1][2]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final.params))
    assert not np.array_equal(jax.tree.leaves(final.params)[0], jax.tree.leaves(after.params)[0])  # it trains on
    assert not np.array_equal(jax.tree.leaves(final.ema_params)[0], jax.tree.leaves(final.params)[0])  # averaged


def test_moving_averages_are_checkpointed_and_are_what_inference_restores(tmp_path):
    state = tiny_state(5)
    state = state.replace(ema_params=jax.tree.map(lambda x: x + 1, state.params),
                          ema_batch_stats=jax.tree.map(lambda x: x - 1, state.batch_stats))
    checkpoints = Checkpointer(tmp_path / "ckpt")
    checkpoints.save(state, {"step": 5})
    checkpoints.wait()
    restored, _ = checkpoints.restore_latest(state)
    assert_state_equal(restored, state)
    params, batch_stats, _ = checkpoints.restore_variables(state.params, state.batch_stats, 5)
    assert_state_equal(state.replace(params=params, batch_stats=batch_stats),
                       state.replace(params=state.ema_params, batch_stats=state.ema_batch_stats))
    checkpoints.close()


# --- data faults ------------------------------------------------------------------------------------------------

TRAIN_SUBJECT, TEST_SUBJECT = 0, 1
FRAME = Path("P0") / "1" / msra.depth_name(0)       # the frame the faults hit (first training frame)
CENTRES = Path("center") / f"center_train_{TEST_SUBJECT}_refined.txt"


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    """A synthetic MSRA-layout set: 2 subjects x 17 gestures x 1 frame."""
    return write_msra_dataset(tmp_path_factory.mktemp("clean") / "synth", frames=34, seed=0, subjects=2)


def rewrite_depth(root: Path, change) -> None:
    path = root / FRAME
    msra.write_depth_bin(path, change(msra.read_depth_bin(path).copy()))


def set_depth(value):
    def change(depth):
        rows, cols = np.nonzero(depth)
        depth[rows[:5], cols[:5]] = value
        return depth
    return change


def flip_header(root: Path) -> None:
    data = bytearray((root / FRAME).read_bytes())
    data[8:12] = (400).to_bytes(4, "little")  # left = 400 > width
    (root / FRAME).write_bytes(bytes(data))


def move_far(depth):
    """Every point 1 m behind where it was: none is left in the 200 mm cube around the hand's centre."""
    return np.where(depth > 0, depth + 1000, 0).astype(np.float32)


def centre_at_depth(z: float):
    def inject(root: Path) -> None:
        lines = (root / CENTRES).read_text().splitlines()
        x, y, _ = lines[0].split()
        lines[0] = f"{x} {y} {z}"
        (root / CENTRES).write_text("\n".join(lines) + "\n")
    return inject


def directory_in_place_of_the_depth_file(root: Path) -> None:
    (root / FRAME).unlink()
    (root / FRAME).mkdir()


def joint_label_far_away(root: Path) -> None:
    path = root / "P0" / "2" / "joint.txt"
    lines = path.read_text().splitlines()
    lines[1] = " ".join(["1e9"] + lines[1].split()[1:])
    path.write_text("\n".join(lines) + "\n")


def drop_last_line(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def replace_first_value(path: Path, value: str) -> None:
    text = path.read_text()
    path.write_text(text.replace(text.split()[0], value, 1))


FRAME_FAULTS = {  # frame-level: --on-bad-frame decides; (inject, message, reason counted under 'skip')
    "corrupt header": (flip_header, r"000000_depth.bin: header box left=400 .* does not fit", "unreadable depth file"),
    "truncated depth": (lambda r: truncate_half(r / FRAME), r"000000_depth.bin: truncated .bin",
                        "unreadable depth file"),
    "NaN depth": (lambda r: rewrite_depth(r, set_depth(np.nan)), r"000000_depth.bin: depth contains NaN \(5 pixels",
                  "non-finite depth"),
    "Inf depth": (lambda r: rewrite_depth(r, set_depth(np.inf)), r"000000_depth.bin: depth contains infinite",
                  "non-finite depth"),
    "negative depth": (lambda r: rewrite_depth(r, set_depth(-1.0)), r"000000_depth.bin: depth contains negative",
                       "negative depth"),
    "empty cube": (lambda r: rewrite_depth(r, move_far),
                   r"000000_depth.bin: no depth point of frame P0/1/000000 falls inside the 200 mm cube around its "
                   r"reference centre .*: the input grid would be empty", "empty cube"),
    "centre at zero depth": (centre_at_depth(0), r"center_train_1_refined.txt: reference centre at zero depth "
                             r"\(\[.*, 0.0\]\) for frame P0/1/000000", "centre at zero or negative depth"),
    "centre at negative depth": (centre_at_depth(-5), r"center_train_1_refined.txt: reference centre at negative "
                                 r"depth \(\[.*, -5.0\]\) for frame P0/1/000000", "centre at zero or negative depth"),
    "directory in place of the depth file": (directory_in_place_of_the_depth_file,
                                             r"000000_depth.bin: cannot read the depth file \(Is a directory\)",
                                             "unreadable depth file"),
}

FILE_FAULTS = {  # file-level: always an error, whatever the policy
    "label line missing": (lambda r: drop_last_line(r / "P0" / "1" / "joint.txt"),
                           r"P0/1/joint.txt: first line says 1 frames, found 0 label lines"),
    "centre line missing": (lambda r: drop_last_line(r / CENTRES),
                            r"center_train_1_refined.txt: 16 centres but 17 labelled frames"),
    "label not a number": (lambda r: (r / "P0" / "2" / "joint.txt").write_text("1\n" + "x " * 63 + "\n"),
                           r"P0/2/joint.txt:2: not a number: 'x'"),
    "centre NaN": (lambda r: replace_first_value(r / CENTRES, "nan"),
                   r"center_train_1_refined.txt: centre file contains NaN"),
    "label file not text": (lambda r: (r / "P0" / "3" / "joint.txt").write_bytes(b"1\n\xff\xfe\x00"),
                            r"P0/3/joint.txt: not a text file"),
    "joint label 1e9 mm away": (joint_label_far_away, r"synth: frame P0/2/000000: joint 0 is labelled at \[1000000000.0, "
                                r".* mm, farther than 10 m from the camera \(1 such labels\): labels in the wrong "
                                r"units, or corrupt"),
}


def faulty_copy(clean: Path, tmp_path: Path, inject) -> Path:
    root = tmp_path / "synth"
    shutil.copytree(clean, root)
    inject(root)
    return root


def open_train(root: Path, policy: str):
    return msra.MSRA(root, root / "center", TEST_SUBJECT, "train", on_bad_frame=policy, cube_mm=200.0)


def test_clean_set_passes_every_check(clean_set):
    data = open_train(clean_set, "skip")
    assert len(data) == 17 and data.num_skipped == 0
    assert sum(len(b["index"]) for b in batches(open_train(clean_set, "error"), 4, seed=0, epoch=0)) == 16


@pytest.mark.parametrize("fault", FRAME_FAULTS)
def test_bad_frame_raises_naming_file_and_problem(clean_set, tmp_path, fault):
    """on_bad_frame='error': opening (centres) or reading the frame, as training does, raises DataError."""
    inject, message, _ = FRAME_FAULTS[fault]
    root = faulty_copy(clean_set, tmp_path, inject)
    with pytest.raises(DataError, match=message) as error:
        for _ in batches(open_train(root, "error"), 17, seed=0, epoch=0):
            pass
    assert "--on-bad-frame skip" in str(error.value)


@pytest.mark.parametrize("fault", FRAME_FAULTS)
def test_bad_frame_is_skipped_logged_and_counted(clean_set, tmp_path, fault, caplog):
    inject, message, reason = FRAME_FAULTS[fault]
    root = faulty_copy(clean_set, tmp_path, inject)
    with caplog.at_level(logging.WARNING, logger="v2v_jax.data.base"):
        data = open_train(root, "skip")
    assert "P0/1/000000" not in data.frame_ids and len(data) == 16
    assert data.skipped == {"invalid centre": 0, f"bad frame: {reason}": 1}
    assert f"16 frames kept, 1 skipped (0 invalid centre, 1 bad frame: {reason})" in data.report()
    assert re.search("skipping frame P0/1/000000: .*" + message, caplog.text)
    assert sum(len(b["index"]) for b in batches(data, 4, seed=0, epoch=0)) == 16  # every kept frame reads


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("fault", FILE_FAULTS)
def test_bad_label_or_centre_file_is_always_an_error(clean_set, tmp_path, fault, policy):
    inject, message = FILE_FAULTS[fault]
    root = faulty_copy(clean_set, tmp_path, inject)
    with pytest.raises(DataError, match=message):
        open_train(root, policy)


def grandchildren() -> list[int]:
    """Processes whose parent is a child of this one (data-loader workers, started by the forkserver)."""
    parents = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            parents[int(status.parent.name)] = int(fields["PPid"])
    children = {pid for pid, parent in parents.items() if parent == os.getpid()}
    return [pid for pid, parent in parents.items() if parent in children]


def test_loader_workers_leave_ctrl_c_and_sigterm_to_the_main_process(clean_set):
    """A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the group. Workers must survive them, so
    that the main process can finish its step and checkpoint (a dying worker once crashed it with EOFError)."""
    loader = BatchLoader(open_train(clean_set, "error"), 4, num_workers=1)
    epoch = loader.epoch(seed=0, epoch=0)
    next(epoch)
    workers = grandchildren()
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    time.sleep(1)
    assert len(list(epoch)) == 3  # the rest of the epoch, from the same workers


LOADER_CHILD = """
import sys, time
from v2v_jax.data.loader import BatchLoader
from v2v_jax.data.msra import MSRA
if __name__ == "__main__":
    root = sys.argv[1]
    epoch = BatchLoader(MSRA(root, root + "/center", 1, "train"), 4, num_workers=1).epoch(seed=0, epoch=0)
    next(epoch)
    print("reading", flush=True)
    time.sleep(600)
"""


SIGTERM_CHILD = """
import multiprocessing.forkserver as forkserver, os, signal, sys
from v2v_jax.data.loader import BatchLoader
from v2v_jax.data.msra import MSRA


def connect_then_sigterm(fds, connect=forkserver.connect_to_new_process):
    pipes = connect(fds)  # the forkserver is asked for a worker, which is not running yet
    os.killpg(os.getpgrp(), signal.SIGTERM)
    return pipes


def epochs(root):  # as train.py: a training and a test loader, released before exit
    train = BatchLoader(MSRA(root, root + "/center", 1, "train"), 4, num_workers=1)
    test = BatchLoader(MSRA(root, root + "/center", 1, "test"), 4, shuffle=False, drop_last=False, num_workers=1)
    return len(list(train.epoch(seed=0, epoch=0))), len(list(test.epoch(seed=0, epoch=0)))


if __name__ == "__main__":
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # as train.py's StopRequest
    forkserver.connect_to_new_process = connect_then_sigterm
    print(*epochs(sys.argv[1]), len(received))
"""


@pytest.mark.slow  # 8-12 s: a process importing torch and JAX, and its forkserver
def test_sigterm_to_the_group_while_loader_workers_start_leaves_them_running(clean_set):
    """A scheduler's SIGTERM reaches the whole process group, the forkserver too, at whatever moment: at an epoch's
    end, it once came while the test-set loader started its workers, and the run crashed with an EOFError from the
    forkserver instead of checkpointing. Here it comes deterministically at each worker's start, the training
    loader's (forkserver just started) and the test loader's (forkserver running): every batch is read and the main
    process receives both signals."""
    main = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(clean_set)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = main.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(main.pid, signal.SIGKILL)
    assert (main.returncode, out.split()) == (0, ["4", "5", "2"]), err[-3000:]


def descendants(pid: int) -> list[int]:
    children = collections.defaultdict(list)
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            children[int(fields["PPid"])].append(int(status.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children[todo.pop()]
        found += below
        todo += below
    return found


def running(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False


def test_loader_processes_end_with_a_killed_main_process(clean_set):
    """SIGKILL runs no clean-up: the worker (a child of the forkserver, so torch's parent check misses it), the
    forkserver and the resource tracker must still end, within seconds (they lived on for minutes)."""
    main = subprocess.Popen([sys.executable, "-c", LOADER_CHILD, str(clean_set)], stdout=subprocess.PIPE, text=True)
    assert main.stdout.readline().strip() == "reading"
    assert_helpers_end_with(main.pid, lambda: (main.kill(), main.wait()))


def assert_helpers_end_with(pid: int, kill) -> None:
    """Kills process `pid` with `kill()`; its loader processes (resource tracker, forkserver, worker) must end
    within 10 s (a hung test ends them itself)."""
    helpers = descendants(pid)
    assert len(helpers) >= 3, helpers
    kill()
    deadline = time.time() + 10
    while any(map(running, helpers)) and time.time() < deadline:
        time.sleep(0.1)
    alive = [p for p in helpers if running(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive


@pytest.mark.x64
def test_empty_cube_check_matches_the_voxeliser(clean_set):
    """points_in_cube counts exactly the points voxelisation keeps (float64 here, so no face rounding)."""
    from v2v_jax import geometry
    from v2v_jax.data.base import points_in_cube
    data = open_train(clean_set, "error")
    frame = data[0]
    for shift in ([0, 0, 0], [60, 0, 0], [0, -95, 0], [0, 0, 120], [0, 0, 380]):
        center = frame.center.astype(np.float64) + shift
        points = np.asarray(geometry.depth_to_points(jnp.asarray(frame.depth, jnp.float64), data.spec, jnp.float64))
        grid = np.asarray(geometry.world_to_grid(points, center, 200.0, 32))
        kept = int(((grid >= 0) & (grid < 32)).all(axis=1).sum())
        assert points_in_cube(frame.depth, center, data.spec, 200.0) == kept, shift


def test_train_config_passes_the_policy_to_the_data_sets(clean_set, tmp_path):
    from v2v_jax.config import Config
    from v2v_jax.train.datasets import open_datasets
    root = faulty_copy(clean_set, tmp_path, lambda r: rewrite_depth(r, move_far))
    cfg = Config(root=str(root), synth_frames=34, synth_subjects=2, test_subject=TEST_SUBJECT, on_bad_frame="skip")
    train, test, _ = open_datasets(cfg)
    assert (len(train), train.skipped["bad frame: empty cube"], len(test)) == (16, 1, 17)
    assert train.cube_mm == 200.0
    with pytest.raises(DataError, match="would be empty"):
        open_datasets(dataclasses.replace(cfg, on_bad_frame="error"))[0][0]  # frame 0 is the bad one

