"""Inference: joints from one depth map and a reference centre, or a community result file for a whole test set.

    python -m v2v_jax.predict --checkpoint runs/default --depth P4/1/000000_depth.bin --center 10,-5,300 [--png F]
    python -m v2v_jax.predict --checkpoint runs/default --result-file results.txt   (the run's test set)
    python -m v2v_jax.predict --torch-checkpoint port.pth --dataset msra ...       (a PyTorch-port state_dict)

A training run predicts in the geometry it was trained in (its config.json); a PyTorch-port state_dict in the
port's ('port': pixels numbered from 1, voxel coordinates truncated; docs/conventions.md) unless --geometry says
otherwise. The first line of the output names the geometry and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from v2v_jax import convert, metrics
from v2v_jax.config import Config, Parser
from v2v_jax.data import cameras
from v2v_jax.data.base import DataError, check_depth, points_in_cube
from v2v_jax.data.cameras import world_to_pixel
from v2v_jax.data.images import read_png_nyu, read_png_uint16
from v2v_jax.data.loader import batches
from v2v_jax.data.msra import read_depth_bin
from v2v_jax.geometry import geometry_of
from v2v_jax.train.checkpoint import Checkpointer
from v2v_jax.train.datasets import open_datasets, spec_for
from v2v_jax.train.loop import build_model, geometry_config
from v2v_jax.train.report import summary
from v2v_jax.train.run_dir import RunDirError
from v2v_jax.train.runtime import configure_runtime
from v2v_jax.train.step import make_eval_step


def read_depth_file(path: Path, spec) -> np.ndarray:
    """A depth map in mm from an MSRA .bin, a 16-bit PNG (NYU: its RGB PNG) or a .npy (H, W) array; DataError
    naming the file if it cannot be read or holds NaN, infinite or negative depth, or no depth at all."""
    shape = (spec.height, spec.width)
    try:
        if path.suffix == ".bin":
            depth = read_depth_bin(path)
        elif path.suffix == ".png":
            depth = read_png_nyu(path) if spec.name == "nyu" else read_png_uint16(path)
        elif path.suffix == ".npy":
            depth = np.load(path, allow_pickle=False)
            if depth.dtype.kind not in "fiu":
                raise DataError(f"{path}: a .npy of {depth.dtype}, not of depth numbers")
            depth = depth.astype(np.float32)
        else:
            raise DataError(f"{path}: unknown depth format (expected .bin, .png or .npy)")
    except OSError as e:
        raise DataError(f"{path}: cannot read the depth map ({e.strerror or e})") from None
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a depth map ({e})") from None
    if depth.shape != shape:
        raise DataError(f"{path}: depth is {depth.shape}, the {spec.name} camera gives {shape}")
    check_depth(depth, path, shape)
    if not depth.any():
        raise DataError(f"{path}: the depth map is zero everywhere (no data)")
    return depth


def parse_center(text: str) -> np.ndarray:
    """--center x,y,z: three finite numbers in mm, in front of the camera (z > 0)."""
    try:
        center = np.array([float(v) for v in text.split(",")], np.float32)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers x,y,z in mm, got {text!r}") from None
    if center.shape != (3,):
        raise argparse.ArgumentTypeError(f"expected three numbers x,y,z in mm, got {text!r}")
    if not np.isfinite(center).all():
        raise argparse.ArgumentTypeError(f"{text!r} is not finite")
    if center[2] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in front of the camera (z must be > 0 mm)")
    return center


def inference_variables(cfg: Config, num_joints: int):
    """(eval graphdef, params, batch_stats) of a freshly initialised model shaped by `cfg`."""
    model = build_model(cfg, num_joints)
    model.eval()
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def load_run(run_dir: Path, step: int | None = None):
    """(config, eval step function, (params, batch_stats), spec) of a training run's newest (or given) verified
    checkpoint, read without an optimiser; the checkpoint files are opened read-only."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise DataError(f"{config_path}: no training run here (config.json missing)")
    try:
        cfg = Config.from_json(config_path.read_text())
        geometry_of(cfg.geometry)
    except (ValueError, TypeError) as e:
        raise DataError(f"{config_path}: not a training configuration ({e})") from None
    configure_runtime(cfg)
    spec = spec_for(cfg)
    eval_def, params, batch_stats = inference_variables(cfg, spec.num_joints)
    checkpoints = Checkpointer(run_dir / "checkpoints", read_only=True)
    try:
        restore = lambda s: checkpoints.restore_variables(params, batch_stats, s)  # noqa: E731
        restored = restore(step) if step is not None else checkpoints.newest(restore)
    finally:
        checkpoints.close()
    if restored is None:
        raise DataError(f"{run_dir / 'checkpoints'}: no usable checkpoint")
    return cfg, make_eval_step(eval_def, geometry_config(cfg, spec)), restored[:2], spec


def load_torch(path: Path, cfg: Config):
    """An eval step and (params, batch_stats) from a PyTorch-port state_dict, the model shaped by `cfg`."""
    spec = spec_for(cfg)
    try:
        state_dict = convert.read_torch_checkpoint(path)
    except ValueError as e:
        raise DataError(str(e)) from None
    if "output_layer.weight" not in state_dict:
        raise DataError(f"{path}: not a V2V state_dict (no output_layer.weight)")
    num_joints, width = state_dict["output_layer.weight"].shape[:2]
    cfg = dataclasses.replace(cfg, width=int(width))
    model = build_model(cfg, num_joints)
    convert.load_torch_state_dict(model, state_dict, source=str(path))
    model.eval()
    eval_def, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return cfg, make_eval_step(eval_def, geometry_config(cfg, spec)), (params, batch_stats), spec


def predict_one(eval_step, variables, spec, depth: np.ndarray, center: np.ndarray) -> np.ndarray:
    batch = {"depth": depth[None].astype(np.float32), "center": center[None].astype(np.float32),
             "joints": np.zeros((1, spec.num_joints, 3), np.float32)}  # joints only feed the (ignored) loss
    joints, _ = eval_step(*variables, jax.device_put(batch))
    return np.asarray(joints[0])


def write_results(eval_step, variables, cfg: Config, out: Path) -> dict:
    """Predicts the run's test set and writes it as a community result file (u v d per joint, one line per frame)."""
    _, test_set, spec = open_datasets(cfg)
    preds, gts = [], []
    for batch in batches(test_set, cfg.batch_size, seed=0, epoch=0, shuffle=False, drop_last=False):
        joints, _ = eval_step(*variables, jax.device_put({k: batch[k] for k in ("depth", "center", "joints")}))
        preds.append(np.asarray(joints))
        gts.append(batch["joints"])
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    metrics.write_result_file(out, pred, spec)
    return summary(pred, gt)


def main(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a training run directory (python train.py --out DIR)")
    src.add_argument("--torch-checkpoint", type=Path, help="a .pth state_dict of the PyTorch port")
    p.add_argument("--step", type=int, help="checkpoint step (default: newest that verifies)")
    p.add_argument("--dataset", choices=sorted(cameras.DATASETS), help="camera/cube of the input (torch checkpoint)")
    p.add_argument("--grid", type=int, default=88, help="input grid of a torch checkpoint (default 88)")
    p.add_argument("--geometry", choices=("ours", "port"),
                   help="pixel numbering and voxel rounding of a torch checkpoint (default port, the port's)")
    p.add_argument("--depth", type=Path, help="depth map: MSRA .bin, 16-bit PNG, or .npy (mm)")
    p.add_argument("--center", type=parse_center, help="reference centre x,y,z in world mm")
    p.add_argument("--png", type=Path, help="save the prediction drawn on the depth map")
    p.add_argument("--result-file", type=Path, help="predict the run's test set into this result file")
    args = p.parse_args(argv)
    if args.torch_checkpoint and not args.dataset:
        p.error("--torch-checkpoint needs --dataset")
    if args.checkpoint and args.geometry:
        p.error("--geometry: a training run predicts in the geometry it was trained in (its config.json)")
    if args.depth and args.center is None:
        p.error("--depth needs --center x,y,z")
    try:
        run(args)
    except (DataError, RunDirError) as e:  # a CheckpointError is a RunDirError
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_geometry(name: str) -> str:
    pixel_origin, truncate = geometry_of(name)
    return (f"{name} (pixels numbered from {pixel_origin}, voxel coordinates "
            f"{'truncated toward zero' if truncate else 'floored'})")


def run(args) -> None:
    if args.checkpoint:
        cfg, eval_step, variables, spec = load_run(args.checkpoint, args.step)
        why = "the training run's (config.json)"
    else:
        cfg = Config(data=args.dataset, grid=args.grid, augment=False, geometry=args.geometry or "port")
        cfg, eval_step, variables, spec = load_torch(args.torch_checkpoint, cfg)
        why = ("given by --geometry" if args.geometry else
               "the PyTorch port's, which trains the weights of a .pth state_dict; --geometry ours for weights "
               "trained in this project's geometry")
    print(f"geometry: {describe_geometry(cfg.geometry)}, {why}")
    if args.result_file:
        result = write_results(eval_step, variables, cfg, args.result_file)
        print(f"wrote {args.result_file}; mean error {result['mean_error_mm']:.2f} mm")
    if args.depth:
        depth = read_depth_file(args.depth, spec)
        cube_mm = cfg.cube_mm or spec.cube_mm
        pixel_origin = geometry_of(cfg.geometry).pixel_origin
        if not points_in_cube(depth, args.center, spec, cube_mm, enough=1, pixel_origin=pixel_origin):
            raise DataError(f"{args.depth}: no depth point falls inside the {cube_mm:g} mm cube around --center "
                            f"{args.center.tolist()}: the input grid would be empty (is the centre in mm, in the "
                            f"{spec.name} camera's axes?)")
        joints = predict_one(eval_step, variables, spec, depth, args.center)
        uvd = world_to_pixel(joints, spec, pixel_origin)  # columns and rows of --depth
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
