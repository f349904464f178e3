"""`python train.py`: train V2V-PoseNet, evaluate every epoch, checkpoint, log and draw the results.

A global-step loop in the style of flax/examples: `train_step` and `eval_step` (train/step.py) are pure jitted
functions of an explicit TrainState; the loop feeds them batches and, after each step, calls what logs, evaluates,
checkpoints and checks. The data position is a function of the step alone (epoch = step // steps_per_epoch, the
batch within it = step % steps_per_epoch), so a resumed run continues the same batch order.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from v2v_jax.config import Config, describe, parse_config, problems, repeat_flags, save_config
from v2v_jax.data import cameras
from v2v_jax.data.base import DataError, DepthDataset
from v2v_jax.data.loader import BatchLoader
from v2v_jax.model import V2VModel, count_parameters
from v2v_jax.train import checks, datasets, parallel, plots, report
from v2v_jax.train.checkpoint import METRIC, CheckpointError, Checkpointer
from v2v_jax.train.optim import learning_rate, make_optimizer
from v2v_jax.train.run_dir import RunDirError, ScalarLog, acquire, read_log, set_aside_logs
from v2v_jax.train.runtime import configure_runtime
from v2v_jax.train.step import GeometryConfig, TrainState, init_state, make_eval_step, make_train_step, numerics_for

CHECKPOINT_BYTES_PER_PARAM = 4 * 3  # parameters plus two optimiser-sized copies, float32
BATCH_KEYS = ("depth", "center", "joints")  # what travels to the device


class TrainingError(RuntimeError):
    pass


class StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and exit at the next step boundary."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, _frame):
        self.signal = signal.Signals(signum).name

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)


def build_model(cfg: Config, num_joints: int) -> V2VModel:
    numerics = numerics_for(cfg.dtype, cfg.batchnorm, cfg.init, cfg.conv, cfg.upsample)
    return V2VModel(1, num_joints, cfg.width, numerics=numerics, rngs=nnx.Rngs(cfg.seed))


def geometry_config(cfg: Config, spec) -> GeometryConfig:
    return GeometryConfig(spec, cfg.grid, cfg.cube_mm or spec.cube_mm, augment=cfg.augment and not cfg.overfit,
                          decode=cfg.decode, geometry=cfg.geometry, max_translation=cfg.max_translation,
                          loss=cfg.loss, integral_weight=cfg.integral_weight, beta=cfg.beta)


@dataclasses.dataclass
class Progress:
    """What a checkpoint's record holds besides the arrays and the step: each epoch's evaluation, and the best."""
    history: list = dataclasses.field(default_factory=list)
    best: dict | None = None

    def record(self, step: int, steps_per_epoch: int) -> dict:
        epoch, batch = divmod(step, steps_per_epoch)
        return {"step": step, "epoch": epoch, "batch": batch, "best": self.best, "history": self.history}

    def add_epoch(self, epoch: int, step: int, result: dict) -> "Progress":
        history = self.history + [{"epoch": epoch, "step": step, "test_loss": result["loss"],
                                   METRIC: result[METRIC]}]
        best = self.best
        if best is None or result[METRIC] < best[METRIC]:
            best = {"epoch": epoch, "step": step, METRIC: result[METRIC]}
        return Progress(history, best)


def eval_variables(state: TrainState) -> tuple:
    """The (params, batch_stats) that evaluation uses, their moving averages under --ema-decay: the one place to
    choose them."""
    if state.ema_params is not None:
        return state.ema_params, state.ema_batch_stats
    return state.params, state.batch_stats


def evaluate(eval_step, state: TrainState, loader: BatchLoader, max_batches: int | None, mesh) -> dict:
    """Predicts every test frame (or `max_batches` batches) and returns errors in mm.

    The last, partial batch is padded to the full batch size (static shapes, divisible over devices).
    """
    preds, gts, losses = [], [], []
    for k, batch in enumerate(loader.epoch(seed=0, epoch=0)):
        if max_batches is not None and k >= max_batches:
            break
        count = len(batch["joints"])
        padded = {key: np.concatenate([batch[key], np.repeat(batch[key][-1:], loader.batch_size - count, axis=0)])
                  for key in BATCH_KEYS}
        joints, loss = eval_step(*eval_variables(state), parallel.shard_batch(padded, mesh))
        preds.append(parallel.gather(joints)[:count])
        gts.append(batch["joints"])
        losses.append(parallel.gather(loss)[:count])
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    return {"pred": pred, "gt": gt, "loss": float(np.concatenate(losses).mean()), **report.summary(pred, gt)}


def train_batches(loader: BatchLoader, seed: int, step: int, steps_per_epoch: int):
    """The training batches from global step `step` on, epoch after epoch."""
    epoch, start_batch = divmod(step, steps_per_epoch)
    while True:
        yield from loader.epoch(seed=seed, epoch=epoch, start_batch=start_batch)
        epoch, start_batch = epoch + 1, 0


def restore(checkpoints: Checkpointer, state: TrainState, is_writer: bool) -> tuple[TrainState, Progress]:
    """The newest checkpoint that verifies (corrupt ones set aside), or `state` and no progress if there is none;
    if every checkpoint was corrupt, the lost run's logs are set aside beside them."""
    restored = checkpoints.restore_latest(state, set_aside_corrupt=True)
    if restored is None:
        kept = ""
        if checkpoints.set_aside and is_writer:
            logs = set_aside_logs(checkpoints.directory.parent, checkpoints.set_aside[-1].parent)
            kept = f"; the logs of the run they belonged to are in {logs}"
        print(f"--resume: no usable checkpoint in {checkpoints.directory}{kept}; starting from scratch")
        return state, Progress()
    state, record = restored
    print(f"resumed from step {record['step']} (epoch {record['epoch'] + 1}, batch {record['batch']})")
    return state, Progress(record["history"], record["best"])


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data sets of a run and the step counts they give."""
    train_set: DepthDataset
    test_set: DepthDataset
    spec: cameras.DatasetSpec
    steps_per_epoch: int
    total_steps: int


def open_run_data(cfg: Config) -> RunData:
    train_set, test_set, spec = datasets.open_datasets(cfg)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"{len(train_set)} training frames are fewer than one batch of {cfg.batch_size}")
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or sys.maxsize)
    return RunData(train_set, test_set, spec, steps_per_epoch, total_steps)


def disk_needed(cfg: Config, state: TrainState) -> int:
    """Bytes the run directory needs: the kept checkpoints, two more being written, and the logs."""
    return (cfg.keep_checkpoints + 2) * CHECKPOINT_BYTES_PER_PARAM * count_parameters(state.params) + 64 * 2**20


class Hooks:
    """What runs around the train step: the first batch's loss check, logging, the progress bar, the evaluation,
    check and checkpoint at the end of each epoch, and the checkpoints in between."""

    def __init__(self, cfg: Config, data: RunData, evaluate: Callable[[TrainState], dict], checkpoints: Checkpointer,
                 progress: Progress, first_step: int, is_writer: bool):
        self.cfg, self.data, self.evaluate = cfg, data, evaluate
        self.checkpoints, self.progress, self.first_step = checkpoints, progress, first_step
        self.log = ScalarLog(Path(cfg.out), first_step, enabled=is_writer)
        self.raw_check = checks.RawSampleCheck(data.train_set)
        self.last_saved = checkpoints.steps()[-1] if checkpoints.steps() else None
        self.t_start, self.rate = time.time(), report.SteadyRate(first_step, cfg.batch_size)
        self.bar = tqdm(total=data.total_steps, initial=first_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not is_writer)

    def save(self, state: TrainState, step: int, **metrics) -> None:
        record = self.progress.record(step, self.data.steps_per_epoch)
        self.last_saved = self.checkpoints.save(state, record, metrics=metrics or None)

    def before_first_step(self, state: TrainState, train_def, batch, geo: GeometryConfig) -> None:
        initial_losses = checks.report_initial_loss(state, train_def, batch, geo, self.cfg.width)
        if self.first_step == 0:
            self.log.write(0, **initial_losses)

    def after_step(self, step: int, state: TrainState, metrics: dict) -> None:
        self.rate.tick(step)
        check_finite(metrics, step, state, self.cfg.on_nonfinite, self.checkpoints.directory, self.last_saved)
        if step % self.cfg.log_every == 0 or step == self.data.total_steps:
            objective = {} if self.cfg.loss == "mse" else {"train_objective": float(metrics["loss"])}
            self.log.write(step, train_loss=float(metrics["heatmap_mse"]), **objective,
                           grad_norm=float(metrics["grad_norm"]),
                           steps_per_s=(step - self.first_step) / max(time.time() - self.t_start, 1e-9),
                           skipped=int(state.skipped))
        epoch, batch_in_epoch = divmod(step, self.data.steps_per_epoch)
        self.bar.set_postfix(loss=f"{float(metrics['loss']):.3e}", epoch=epoch + (batch_in_epoch > 0))
        self.bar.update(1)
        if batch_in_epoch == 0:
            self.end_of_epoch(epoch, step, state)
        elif self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
            self.save(state, step)

    def end_of_epoch(self, epoch: int, step: int, state: TrainState) -> None:
        result = self.evaluate(state)
        self.progress = self.progress.add_epoch(epoch, step, result)
        self.log.write(step, test_loss=result["loss"], test_mean_error_mm=result[METRIC])
        tqdm.write(f"epoch {epoch}: test mean error {result[METRIC]:.2f} mm, heatmap loss {result['loss']:.3e}")
        self.raw_check.verify(epoch)
        self.save(state, step, **{METRIC: result[METRIC]})

    def after_loop(self, step: int, state: TrainState) -> None:
        """The last checkpoint, written and waited for."""
        self.bar.close()
        if self.last_saved != step:
            self.save(state, step)
        self.checkpoints.wait()


def stop_after_signal(signal_name: str, step: int, cfg: Config, checkpoints: Checkpointer):
    print(f"\n{signal_name}: saved checkpoint at step {step} in {checkpoints.directory}. "
          f"Resume with: python train.py --resume --out {shlex.quote(str(Path(cfg.out)))}" + repeat_flags(cfg))
    raise SystemExit(130 if signal_name == "SIGINT" else 143)


def train(cfg: Config, transform_step: Callable[[Callable], Callable] | None = None) -> dict:
    """Runs (or resumes) a training run; returns the final evaluation.

    `transform_step` wraps the jitted train step (the reliability tests inject faults with it)."""
    if problems(cfg):
        raise TrainingError("; ".join(problems(cfg)))
    run_dir, is_writer = Path(cfg.out), jax.process_index() == 0  # processes may share run_dir: process 0 writes
    data = open_run_data(cfg)
    tx = make_optimizer(cfg.optimizer, learning_rate(cfg.lr, cfg.schedule, data.total_steps, cfg.warmup_steps))
    train_def, eval_def, state = init_state(build_model(cfg, data.spec.num_joints), tx, cfg.seed,
                                             ema=cfg.ema_decay > 0)
    geo = geometry_config(cfg, data.spec)
    lock = acquire(run_dir, cfg.resume, disk_needed(cfg, state)) if is_writer else None
    stop = StopRequest()
    stop.install()
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    try:
        state, progress = restore(checkpoints, state, is_writer) if cfg.resume else (state, Progress())
        step = first_step = int(state.step)
        if is_writer:
            save_config(cfg, run_dir)
        mesh = parallel.data_mesh(cfg.batch_size)
        state = parallel.replicate(state, mesh)
        train_step = make_train_step(train_def, tx, geo, on_nonfinite=cfg.on_nonfinite, ema_decay=cfg.ema_decay)
        train_step = transform_step(train_step) if transform_step is not None else train_step
        train_loader = BatchLoader(data.train_set, cfg.batch_size, num_workers=cfg.num_workers)
        test_loader = BatchLoader(data.test_set, cfg.batch_size, shuffle=False, drop_last=False,
                                  num_workers=cfg.num_workers)
        print(f"{data.spec.name}: {len(data.train_set)} training / {len(data.test_set)} test frames; "
              f"{describe(cfg)}; {data.steps_per_epoch} steps per epoch, {data.total_steps} steps on "
              f"{jax.device_count()} {jax.default_backend()} device(s)")
        eval_step = make_eval_step(eval_def, geo)
        hooks = Hooks(cfg, data, lambda state: evaluate(eval_step, state, test_loader, cfg.eval_batches, mesh),
                      checkpoints, progress, step, is_writer)
        batches = train_batches(train_loader, cfg.seed, step, data.steps_per_epoch)
        while step < data.total_steps and not stop.signal:
            batch = parallel.shard_batch({k: v for k, v in next(batches).items() if k in BATCH_KEYS}, mesh)
            if step == first_step:
                hooks.before_first_step(state, train_def, batch, geo)
            state, metrics = train_step(state, batch)
            step += 1
            hooks.after_step(step, state, parallel.to_host(metrics))
        hooks.after_loop(step, state)
        if stop.signal:
            hooks.log.close()
            stop_after_signal(stop.signal, step, cfg, checkpoints)
        final = hooks.evaluate(state)
        hooks.log.close()
    finally:
        checkpoints.close()
        if lock is not None:
            lock.close()
    print(report.format_table(final, data.spec.joint_names))
    print(f"trained {step} steps in {time.time() - hooks.t_start:.0f} s; {hooks.rate}")
    if cfg.overfit:
        checks.report_overfit(read_log(run_dir))
    if cfg.plots and is_writer:
        plots.save_run_figures(run_dir, read_log(run_dir), final, data.test_set, geo, data.spec)
    return {k: v for k, v in final.items() if k not in ("pred", "gt")}


def check_finite(metrics: dict, step: int, state: TrainState, on_nonfinite: str, directory: Path,
                 last_saved: int | None) -> None:
    """A non-finite loss or gradient stops the run (TrainingError) or, under 'skip', is reported and skipped."""
    if bool(metrics["finite"]):
        return
    if on_nonfinite == "stop":
        last = directory / str(last_saved) if last_saved is not None else "none"
        raise TrainingError(f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}); stopped "
                            f"without saving it. Last good checkpoint: {last}. Resume from it with --resume, or "
                            "pass --on-nonfinite skip")
    tqdm.write(f"step {step}: non-finite loss or gradient; skipped it ({int(state.skipped)} so far)")


def main(argv: list[str] | None = None, transform_step: Callable[[Callable], Callable] | None = None) -> None:
    cfg = parse_config(argv)
    configure_runtime(cfg)
    try:
        train(cfg, transform_step)
    except (RunDirError, TrainingError, DataError) as e:  # CheckpointError is a RunDirError
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, CheckpointError):
            # After a failed asynchronous write, orbax's writer threads wait 5 min for a signal that never comes, and
            # the interpreter would join them. The logs are flushed as written and the last good checkpoint is on
            # disk: nothing is left to wait for.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        raise SystemExit(2) from None
