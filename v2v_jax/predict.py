"""Inference: joints from one depth map and a reference centre, or a community result file for a whole test set.

    python -m v2v_jax.predict --checkpoint runs/default --depth P4/1/000000_depth.bin --center 10,-5,300 [--png F]
    python -m v2v_jax.predict --checkpoint runs/default --result-file results.txt   (the run's test set)
    python -m v2v_jax.predict --torch-checkpoint port.pth --dataset msra ...       (a PyTorch-port state_dict)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from v2v_jax import convert, metrics
from v2v_jax.config import Config
from v2v_jax.data import cameras
from v2v_jax.geometry import world_to_pixel
from v2v_jax.data.base import DataError
from v2v_jax.data.images import read_png_nyu, read_png_uint16
from v2v_jax.data.msra import read_depth_bin
from v2v_jax.data.loader import batches
from v2v_jax.train import data as train_data
from v2v_jax.train.report import summary
from v2v_jax.train.checkpoint import Checkpointer
from v2v_jax.train.loop import build
from v2v_jax.train.step import make_eval_step


def read_depth_file(path: Path, spec) -> np.ndarray:
    """A depth map in mm from an MSRA .bin, a 16-bit PNG (NYU: its RGB PNG) or a .npy (H, W) array."""
    if path.suffix == ".bin":
        depth = read_depth_bin(path)
    elif path.suffix == ".png":
        depth = read_png_nyu(path) if spec.name == "nyu" else read_png_uint16(path)
    elif path.suffix == ".npy":
        depth = np.load(path).astype(np.float32)
    else:
        raise DataError(f"{path}: unknown depth format (expected .bin, .png or .npy)")
    if depth.shape != (spec.height, spec.width):
        raise DataError(f"{path}: depth is {depth.shape}, the {spec.name} camera gives {(spec.height, spec.width)}")
    return depth


def load_run(run_dir: Path, step: int | None = None):
    """(config, eval step function, state, spec) of a training run's newest (or given) verified checkpoint."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: no training run here (config.json missing)")
    cfg = Config.from_json(config_path.read_text())
    train_data.configure_runtime(cfg)
    spec = train_data.spec_for(cfg)
    _, eval_def, state, _, geo = build(cfg, spec, spec.num_joints)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    restored = ckpt.restore(state, step) if step is not None else ckpt.restore_latest(state)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'}: no usable checkpoint")
    return cfg, make_eval_step(eval_def, geo), restored[0], spec


def load_torch(path: Path, cfg: Config):
    """An eval step and state from a PyTorch-port state_dict, with the model shaped by `cfg`."""
    spec = train_data.spec_for(cfg)
    state_dict = convert.read_torch_checkpoint(path)
    if "output_layer.weight" not in state_dict:
        raise ValueError(f"{path}: not a V2V state_dict (no output_layer.weight)")
    num_joints, width = state_dict["output_layer.weight"].shape[:2]
    cfg = dataclasses.replace(cfg, width=int(width))
    train_def, eval_def, state, _, geo = build(cfg, spec, num_joints)
    model = nnx.merge(train_def, state.params, state.batch_stats)
    convert.load_torch_state_dict(model, state_dict, source=str(path))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return cfg, make_eval_step(eval_def, geo), state.replace(params=params, batch_stats=batch_stats), spec


def predict_one(eval_step, state, spec, depth: np.ndarray, center: np.ndarray) -> np.ndarray:
    batch = {"depth": depth[None].astype(np.float32), "center": center[None].astype(np.float32),
             "joints": np.zeros((1, spec.num_joints, 3), np.float32)}  # joints only feed the (ignored) loss
    joints, _ = eval_step(state.params, state.batch_stats, jax.device_put(batch))
    return np.asarray(joints[0])


def write_results(eval_step, state, cfg: Config, out: Path) -> dict:
    """Predicts the run's test set and writes it as a community result file (u v d per joint, one line per frame)."""
    _, test_set, spec = train_data.open_datasets(cfg)
    preds, gts = [], []
    for batch in batches(test_set, cfg.batch_size, seed=0, epoch=0, shuffle=False, drop_last=False):
        joints, _ = eval_step(state.params, state.batch_stats,
                              jax.device_put({k: batch[k] for k in ("depth", "center", "joints")}))
        preds.append(np.asarray(joints))
        gts.append(batch["joints"])
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    metrics.write_result_file(out, pred, spec)
    return summary(pred, gt)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a training run directory (python train.py --out DIR)")
    src.add_argument("--torch-checkpoint", type=Path, help="a .pth state_dict of the PyTorch port")
    p.add_argument("--step", type=int, help="checkpoint step (default: newest that verifies)")
    p.add_argument("--dataset", choices=sorted(cameras.DATASETS), help="camera/cube of the input (torch checkpoint)")
    p.add_argument("--grid", type=int, default=88, help="input grid of a torch checkpoint (default 88)")
    p.add_argument("--depth", type=Path, help="depth map: MSRA .bin, 16-bit PNG, or .npy (mm)")
    p.add_argument("--center", help="reference centre x,y,z in world mm")
    p.add_argument("--png", type=Path, help="save the prediction drawn on the depth map")
    p.add_argument("--result-file", type=Path, help="predict the run's test set into this result file")
    args = p.parse_args(argv)

    if args.checkpoint:
        cfg, eval_step, state, spec = load_run(args.checkpoint, args.step)
    else:
        if not args.dataset:
            p.error("--torch-checkpoint needs --dataset")
        cfg = Config(data=args.dataset, grid=args.grid, augment=False)
        cfg, eval_step, state, spec = load_torch(args.torch_checkpoint, cfg)
    if args.result_file:
        summary = write_results(eval_step, state, cfg, args.result_file)
        print(f"wrote {args.result_file}; mean error {summary['mean_error_mm']:.2f} mm")
    if args.depth:
        if not args.center:
            p.error("--depth needs --center x,y,z")
        center = np.array([float(v) for v in args.center.split(",")], np.float32)
        if center.shape != (3,):
            p.error(f"--center takes three numbers, got {args.center!r}")
        depth = read_depth_file(args.depth, spec)
        joints = predict_one(eval_step, state, spec, depth, center)
        uvd = world_to_pixel(joints, spec)
        print(f"{'joint':<14} {'x':>9} {'y':>9} {'z':>9} {'u':>8} {'v':>8} {'d':>8}")
        for name, xyz, p_uvd in zip(spec.joint_names, joints, uvd):
            print(f"{name:<14} {xyz[0]:9.2f} {xyz[1]:9.2f} {xyz[2]:9.2f} {p_uvd[0]:8.2f} {p_uvd[1]:8.2f} "
                  f"{p_uvd[2]:8.2f}")
        if args.png:
            from v2v_jax import vis
            vis.plot_depth_skeleton(depth, {"predicted": uvd[:, :2]}, vis.SKELETONS[spec.name], path=args.png,
                                    title=str(args.depth))
            print(f"saved {args.png}")


if __name__ == "__main__":
    main()
