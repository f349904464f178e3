"""The PyTorch reference trainer: the port's pipeline (per-sample NumPy voxels and targets in DataLoader workers).

    python -m v2v_torch_ref.train [the flags of train.py]     # same data, configuration and metrics as JAX

It shares the data loaders, configuration and metrics with `v2v_jax`, and writes a port-format state_dict
(`model.pth`) that `python -m v2v_jax.predict --torch-checkpoint` evaluates in JAX.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from v2v_jax.config import Config, parse_config, save_config
from v2v_jax.data.loader import epoch_order
from v2v_jax.train.datasets import open_datasets
from v2v_jax.train.report import SteadyRate, format_table, summary
from v2v_torch_ref import geometry_ref
from v2v_torch_ref.model import DTYPES, V2VModel

SCALE_RANGE, MAX_ANGLE_DEG, MAX_TRANSLATION = (0.8, 1.2), 40.0, 4.0


def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    """RMSprop as the authors used it: alpha 0.99, eps 1e-8 outside the square root, no momentum."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-8)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, voxels, heatmaps) -> torch.Tensor:
    """One step of MSE (mean over B*J*M^3) on given inputs (B,1,N,N,N) and targets (B,J,M,M,M)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(voxels), heatmaps)
    loss.backward()
    optimizer.step()
    return loss.detach()


def sample_augmentation(rng: np.random.Generator) -> dict:
    return dict(scale=rng.uniform(*SCALE_RANGE), angle=np.deg2rad(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)),
                trans=rng.uniform(-MAX_TRANSLATION, MAX_TRANSLATION, 3))


class VoxelDataset(torch.utils.data.Dataset):
    """Frames -> (voxels (1,N,N,N), heatmaps (J,M,M,M), centre, joints) in float32, one sample at a time."""

    def __init__(self, frames, cfg: Config, spec, seed: int, epoch: int, augment: bool):
        self.frames, self.spec, self.augment = frames, spec, augment
        self.seed, self.epoch = seed, epoch
        self.voxelize = geometry_ref.V2VVoxelization(cfg.cube_mm or spec.cube_mm, cfg.grid)

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        frame = self.frames[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        aug = sample_augmentation(rng) if self.augment else {}
        sample = {"points": geometry_ref.depth_to_points(frame.depth, self.spec), "keypoints": frame.joints,
                  "refpoint": frame.center.astype(np.float64)}
        voxels, heatmaps = self.voxelize(sample, **aug)
        return (voxels.astype(np.float32), heatmaps.astype(np.float32), frame.center.astype(np.float32),
                frame.joints.astype(np.float32))


def loader(frames, cfg: Config, spec, epoch: int, train: bool):
    data = VoxelDataset(frames, cfg, spec, cfg.seed, epoch, augment=train and cfg.augment and not cfg.overfit)
    order = epoch_order(len(frames), seed=cfg.seed, epoch=epoch, shuffle=train)
    return torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, sampler=order.tolist(),
                                       num_workers=cfg.num_workers, drop_last=train)


def evaluate(model, frames, cfg, spec, device) -> dict:
    model.eval()
    voxelize = geometry_ref.V2VVoxelization(cfg.cube_mm or spec.cube_mm, cfg.grid)
    preds, gts = [], []
    with torch.no_grad():
        for voxels, _, centers, joints in loader(frames, cfg, spec, 0, train=False):
            heatmaps = model(voxels.to(device)).float().cpu().numpy()
            preds.append(voxelize.evaluate(heatmaps, centers.numpy()))
            gts.append(joints.numpy())
    return summary(np.concatenate(preds), np.concatenate(gts))


def train(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"the PyTorch reference trainer runs float32 or float64, not {cfg.dtype}")
    dtype = DTYPES[cfg.dtype]
    train_set, test_set, spec = open_datasets(cfg)
    model = V2VModel(1, spec.num_joints, cfg.width, init=cfg.init).to(device=device, dtype=dtype)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps,
                                                                          cfg.epochs * steps_per_epoch)
    step, t0 = 0, time.time()
    rate = SteadyRate(0, cfg.batch_size)
    bar = tqdm(total=total, desc="train (torch)", unit="step", dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        for voxels, heatmaps, _, _ in loader(train_set, cfg, spec, epoch, train=True):
            loss = train_step(model, optimizer, voxels.to(device, dtype), heatmaps.to(device, dtype))
            step += 1
            bar.set_postfix(loss=f"{float(loss):.3e}", epoch=epoch + 1)  # float() waits for the device
            rate.tick(step)
            bar.update(1)
            if step >= total:
                break
        result = evaluate(model, test_set, cfg, spec, device)
        tqdm.write(f"epoch {epoch + 1}: test mean error {result['mean_error_mm']:.2f} mm")
        if step >= total:
            break
    bar.close()
    torch.save(model.state_dict(), run_dir / "model.pth")
    print(format_table(result, spec.joint_names))
    print(f"trained {step} steps in {time.time() - t0:.0f} s; {rate}; state_dict in {run_dir / 'model.pth'}")
    return result


def main(argv=None):
    train(parse_config(argv))


if __name__ == "__main__":
    main()
