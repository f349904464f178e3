"""`python train.py`: train V2V-PoseNet, evaluate every epoch, checkpoint, log and draw the results."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from v2v_jax.config import Config, parse_config, save_config
from v2v_jax.data.base import DataError
from v2v_jax.data.loader import batches
from v2v_jax.model import V2VModel
from v2v_jax.train import data as train_data
from v2v_jax.train import parallel, plots, report
from v2v_jax.train.checkpoint import METRIC, CheckpointError, Checkpointer
from v2v_jax.train.run_dir import RunDirError, ScalarLog, acquire, read_log
from v2v_jax.train.step import (GeometryConfig, TrainState, init_state, make_eval_step, make_optimizer,
                                make_train_step, numerics_for)

CHECKPOINT_BYTES_PER_PARAM = 4 * 3  # parameters plus two optimiser-sized copies, float32


class TrainingError(RuntimeError):
    pass


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and exit at the next step boundary."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, _frame):
        self.signal = signal.Signals(signum).name

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)


def build(cfg: Config, spec, num_joints: int):
    numerics = numerics_for(cfg.dtype, cfg.batchnorm, cfg.init, cfg.conv)
    model = V2VModel(1, num_joints, cfg.width, numerics=numerics, rngs=nnx.Rngs(cfg.seed))
    tx = make_optimizer(cfg.optimizer, cfg.lr)
    train_def, eval_def, state = init_state(model, tx, cfg.seed)
    geo = GeometryConfig(spec, cfg.grid, cfg.cube_mm or spec.cube_mm, augment=cfg.augment and not cfg.overfit,
                         decode=cfg.decode)
    return train_def, eval_def, state, tx, geo


def evaluate(eval_step, state: TrainState, dataset, cfg: Config, mesh) -> dict:
    """Predicts every test frame (or `eval_batches` batches) and returns errors in mm.

    The last, partial batch is padded to the full batch size (static shapes, divisible over devices).
    """
    preds, gts, losses = [], [], []
    for k, batch in enumerate(batches(dataset, cfg.batch_size, seed=0, epoch=0, shuffle=False, drop_last=False,
                                      num_workers=cfg.num_workers)):
        if cfg.eval_batches is not None and k >= cfg.eval_batches:
            break
        count = len(batch["joints"])
        padded = {key: np.concatenate([batch[key], np.repeat(batch[key][-1:], cfg.batch_size - count, axis=0)])
                  for key in ("depth", "center", "joints")}
        joints, loss = eval_step(state.params, state.batch_stats, parallel.shard_batch(padded, mesh))
        preds.append(parallel.gather(joints)[:count])
        gts.append(batch["joints"])
        losses.append(parallel.gather(loss)[:count])
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    return {"pred": pred, "gt": gt, "loss": float(np.concatenate(losses).mean()), **report.summary(pred, gt)}


def train(cfg: Config) -> dict:
    """Runs (or resumes) a training run; returns the final evaluation."""
    run_dir = Path(cfg.out)
    train_set, test_set, spec = train_data.open_datasets(cfg)
    num_joints = spec.num_joints
    train_def, eval_def, state, tx, geo = build(cfg, spec, num_joints)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    needed = (cfg.keep_checkpoints + 2) * CHECKPOINT_BYTES_PER_PARAM * num_params + 64 * 2**20
    lock = acquire(run_dir, cfg.resume, needed) if jax.process_index() == 0 else None  # process 0 owns the run
    stop = _StopRequest()
    stop.install()
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    try:
        return _train(cfg, run_dir, train_set, test_set, spec, train_def, eval_def, state, tx, geo, checkpoints,
                      stop)
    finally:
        checkpoints.close()
        if lock is not None:
            lock.close()


def _train(cfg, run_dir, train_set, test_set, spec, train_def, eval_def, state, tx, geo, checkpoints, stop):
    position = {"epoch": 0, "batch": 0, "best": None, "history": []}
    if cfg.resume:
        restored = checkpoints.restore_latest(state, set_aside_corrupt=True)
        if restored is None:
            print(f"--resume: no usable checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
        else:
            state, record = restored
            position = {k: record[k] for k in position}
            print(f"resumed from step {record['step']} (epoch {record['epoch'] + 1}, batch {record['batch']})")
    if jax.process_index() == 0:  # processes may share the run directory: one writer, as for the log
        save_config(cfg, run_dir)
        train_data.truncate_log(run_dir, int(state.step))
    log = ScalarLog(run_dir, enabled=jax.process_index() == 0)

    mesh = parallel.data_mesh(cfg.batch_size)
    state = parallel.replicate(state, mesh)
    train_step = make_train_step(train_def, tx, geo, on_nonfinite=cfg.on_nonfinite,
                                 inject_nan_at_step=cfg.inject_nan_at_step)
    eval_step = make_eval_step(eval_def, geo)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"{len(train_set)} training frames are fewer than one batch of {cfg.batch_size}")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    print(f"{spec.name}: {len(train_set)} training / {len(test_set)} test frames; {train_data.describe(cfg)}; "
          f"{steps_per_epoch} steps per epoch, {total_steps} steps on {jax.device_count()} "
          f"{jax.default_backend()} device(s)")
    raw_check = train_data.RawSampleCheck(train_set)
    step = int(state.step)
    last_good = checkpoints.steps()[-1] if checkpoints.steps() else None
    initial_losses = None
    t_start = time.time()
    rate = train_data.SteadyRate(step, cfg.batch_size)
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    epoch = position["epoch"]
    while step < total_steps and not stop.signal:
        for batch in batches(train_set, cfg.batch_size, seed=cfg.seed, epoch=epoch, start_batch=position["batch"],
                             num_workers=cfg.num_workers):
            device_batch = parallel.shard_batch({k: batch[k] for k in ("depth", "center", "joints")}, mesh)
            if initial_losses is None:
                initial_losses = train_data.report_initial_loss(state, train_def, device_batch, geo, cfg.width)
                if step == 0:
                    log.write(0, **initial_losses)
            state, out = train_step(state, device_batch)
            out = parallel.to_host(out)
            loss = float(out["loss"])
            step += 1
            rate.tick(step)
            position["batch"] += 1
            if not bool(out["finite"]) and cfg.on_nonfinite == "stop":
                raise TrainingError(
                    f"non-finite loss or gradient at step {step} (loss {loss}); stopped without saving it. "
                    f"Last good checkpoint: {run_dir / 'checkpoints' / str(last_good) if last_good is not None else 'none'}"
                    f". Resume from it with --resume, or pass --on-nonfinite skip")
            if not bool(out["finite"]):
                tqdm.write(f"step {step}: non-finite loss or gradient; skipped it ({int(state.skipped)} so far)")
            if step % cfg.log_every == 0 or step == total_steps:
                log.write(step, train_loss=loss, grad_norm=float(out["grad_norm"]),
                          steps_per_s=step / max(time.time() - t_start, 1e-9), skipped=int(state.skipped))
            bar.set_postfix(loss=f"{loss:.3e}", epoch=epoch + 1)
            bar.update(1)
            epoch_ends = position["batch"] == steps_per_epoch  # then the epoch's end evaluates and checkpoints
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not epoch_ends:
                last_good = checkpoints.save(state, {"step": step, **position})
            if (stop.signal or step >= total_steps) and not epoch_ends:
                break
        else:  # the epoch ran to its end
            result = evaluate(eval_step, state, test_set, cfg, mesh)
            position = {**position, "epoch": epoch + 1, "batch": 0}
            position["history"] = position["history"] + [{"epoch": epoch + 1, "step": step,
                                                          "test_loss": result["loss"],
                                                          METRIC: result["mean_error_mm"]}]
            if position["best"] is None or result["mean_error_mm"] < position["best"]["mean_error_mm"]:
                position["best"] = {"epoch": epoch + 1, "step": step, "mean_error_mm": result["mean_error_mm"]}
            log.write(step, test_loss=result["loss"], test_mean_error_mm=result["mean_error_mm"])
            tqdm.write(f"epoch {epoch + 1}: test mean error {result['mean_error_mm']:.2f} mm, "
                       f"heatmap loss {result['loss']:.3e}")
            raw_check.verify(epoch + 1)
            last_good = checkpoints.save(state, {"step": step, **position},
                                         metrics={METRIC: result["mean_error_mm"]})
            epoch += 1
            continue
        break
    bar.close()
    if stop.signal:
        if last_good != step:
            last_good = checkpoints.save(state, {"step": step, **position})
        checkpoints.wait()
        log.close()
        print(f"\n{stop.signal}: saved checkpoint at step {step} in {run_dir / 'checkpoints'}. "
              f"Resume with: python train.py --resume --out {shlex.quote(str(run_dir))}" + train_data.repeat_flags(cfg))
        raise SystemExit(130 if stop.signal == "SIGINT" else 143)
    if last_good != step:
        checkpoints.save(state, {"step": step, **position})
    checkpoints.wait()
    final = evaluate(eval_step, state, test_set, cfg, mesh)
    log.close()
    elapsed = time.time() - t_start
    print(report.format_table(final, spec.joint_names))
    print(f"trained {step} steps in {elapsed:.0f} s; {rate}")
    if cfg.overfit:
        train_data.report_overfit(read_log(run_dir))
    if cfg.plots and jax.process_index() == 0:
        plots.save_run_figures(run_dir, read_log(run_dir), final, test_set, geo, spec)
    return {k: v for k, v in final.items() if k not in ("pred", "gt")}


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    train_data.configure_runtime(cfg)
    try:
        train(cfg)
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
