"""What the training loop needs around its data: opening the sets, the author's debugging checks, run set-up."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v2v_jax import geometry
from v2v_jax.config import Config
from v2v_jax.data import cameras
from v2v_jax.data.base import DepthDataset
from v2v_jax.data.loader import frames_digest, open_dataset
from v2v_jax.data.msra import MSRA
from v2v_jax.data.synth import write_msra_dataset
from v2v_jax.train import parallel
from v2v_jax.train.run_dir import initial_record, read_log

DEFAULT_SYNTH_ROOT = "data/synth"
OVERFIT_STEPS_PER_EPOCH = 50


def configure_runtime(cfg: Config) -> None:
    """Process-wide switches that must precede the first computation."""
    if cfg.deterministic:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if cfg.coordinator:
        parallel.initialize_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)


class Subset(DepthDataset):
    """The first `count` frames of a data set, each listed `repeats` times, for --overfit.

    Repeating makes an epoch (and so the evaluation and checkpoint at its end) span many steps.
    """

    def __init__(self, base: DepthDataset, count: int, repeats: int = 1):
        if count > len(base):
            raise ValueError(f"--overfit {count}: the training set has only {len(base)} frames")
        self.base, self.spec, self.split = base, base.spec, getattr(base, "split", "train")
        self.count = count
        take = np.tile(np.arange(count), repeats)
        self._set_labels([base.frame_ids[i] for i in take], base.centers[take], base.joints[take], {})
        self.sources, self.cube_mm = [base.sources[i] for i in take], base.cube_mm  # the checks of `base`

    def read_depth(self, i: int) -> np.ndarray:
        return self.base.read_depth(i % self.count)


def spec_for(cfg: Config) -> cameras.DatasetSpec:
    """The synthetic set uses MSRA's camera, joints and cube."""
    return cameras.MSRA if cfg.data == "synth" else cameras.get(cfg.data)


def open_datasets(cfg: Config) -> tuple[DepthDataset, DepthDataset, cameras.DatasetSpec]:
    """(train, test, spec) for the configuration; the synthetic set is generated on first use and reused."""
    checks = dict(on_bad_frame=cfg.on_bad_frame, cube_mm=cfg.cube_mm or spec_for(cfg).cube_mm)  # bad frames
    if cfg.data == "synth":
        root = Path(cfg.root or DEFAULT_SYNTH_ROOT)
        write_msra_dataset(root, frames=cfg.synth_frames, seed=cfg.synth_seed, subjects=cfg.synth_subjects)
        test_subject = cfg.synth_subjects - 1 if cfg.test_subject is None else cfg.test_subject
        train = MSRA(root, root / "center", test_subject, split="train", **checks)
        test = MSRA(root, root / "center", test_subject, split="test", **checks)
    else:
        if cfg.root is None:
            raise ValueError(f"--data {cfg.data} needs --root DIR (and usually --centers)")
        kw = dict(test_subject=cfg.test_subject if cfg.data == "msra" else None, view=cfg.itop_view, **checks)
        train = open_dataset(cfg.data, cfg.root, cfg.centers, "train", **kw)
        test = open_dataset(cfg.data, cfg.root, cfg.centers, "test", **kw)
    for ds in (train, test):
        if ds.num_skipped:
            print(ds.report())
    if cfg.overfit:
        test = Subset(train, cfg.overfit)
        train = Subset(train, cfg.overfit, repeats=max(1, OVERFIT_STEPS_PER_EPOCH * cfg.batch_size // cfg.overfit))
    return train, test, train.spec


def describe(cfg: Config) -> str:
    return (f"grid {cfg.grid}^3, cube {cfg.cube_mm or 'data set'} mm, width {cfg.width}, batch {cfg.batch_size}, "
            f"{cfg.optimizer} lr {cfg.lr}, {cfg.dtype}")


def repeat_flags(cfg: Config) -> str:
    """Flags other than --out/--resume that differ from the defaults, to repeat on resume."""
    default = Config()
    skip = {"out", "resume"}
    flags = [f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(cfg).items()
             if k not in skip and v != getattr(default, k)]
    return "".join(flags)


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


class SteadyRate:
    """Training speed after the first steps (compilation, warm-up) have passed, for the final report."""

    def __init__(self, first_step: int, batch_size: int, warmup: int = 5):
        self.start_step, self.batch_size = first_step + warmup, batch_size
        self.t0 = self.t1 = None
        self.last_step = first_step

    def tick(self, step: int) -> None:
        if step == self.start_step:
            self.t0 = time.perf_counter()
        self.t1, self.last_step = time.perf_counter(), step

    def __str__(self) -> str:
        if self.t0 is None or self.last_step <= self.start_step:
            return "too few steps for a steady-state rate"
        per_s = (self.last_step - self.start_step) / (self.t1 - self.t0)
        return f"steady state {per_s:.2f} steps/s ({per_s * self.batch_size:.1f} samples/s)"


class RawSampleCheck:
    """SPEC §8 lesson 1: raw samples must come back unchanged after every epoch of augmented training."""

    def __init__(self, dataset: DepthDataset, count: int = 4):
        self.dataset = dataset
        self.indices = list(range(min(count, len(dataset))))
        self.reference = frames_digest(dataset, self.indices)

    def verify(self, epoch: int) -> None:
        if frames_digest(self.dataset, self.indices) != self.reference:
            raise RuntimeError(f"raw training samples changed during epoch {epoch}: something mutates the data")


def output_layer_floor(targets: np.ndarray, width: int) -> float:
    """The lowest MSE a V2V of this width can reach on these (B, M, M, M, J) heatmap targets.

    Its output layer is a 1x1x1 convolution from `width` features, so at every voxel the J outputs are an affine
    function of `width` numbers: the best fit is the rank-`width` PCA of the (voxels x joints) target matrix
    (Eckart-Young), whatever the layers before it do. Width 8 with 21 joints cannot go below ~7 % of the all-zero
    loss; width >= J can reach 0.
    """
    h = np.asarray(targets, np.float64).reshape(-1, targets.shape[-1])
    centred = h - h.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)  # ascending: the J - width smallest are out of reach
    return float(max(eigenvalues[:max(h.shape[1] - width, 0)].sum(), 0.0) / h.size)


def report_initial_loss(state, train_def, batch, geo, width: int) -> dict[str, float]:
    """Prints the first batch's loss beside the loss of an all-zero output and the output layer's floor.

    A loss that stays at the all-zero value means dead outputs (the final-ReLU bug of SPEC §8 lesson 4); one that
    stays at the floor means the network is too narrow for its joints (`output_layer_floor`).
    """
    voxels, coords = geometry.encode_batch(batch["depth"], batch["center"], batch["joints"], None, geo.spec,
                                           geo.grid, geo.cube_mm)
    model = nnx.merge(train_def, state.params, jax.tree.map(jnp.copy, state.batch_stats))  # stats stay untouched
    pred = model(voxels)
    dtype = jnp.promote_types(pred.dtype, jnp.float32)  # as heatmap_mse: float64 runs keep float64 targets
    targets = jax.vmap(lambda c: geometry.gaussian_heatmaps(c, pred.shape[1], dtype=dtype))(coords)
    losses = {"train_loss": float(geometry.heatmap_mse(pred, coords)),
              "zero_output_loss": float(jnp.mean(jnp.square(targets))),
              "output_floor_loss": output_layer_floor(parallel.gather(targets), width), "num_joints": pred.shape[-1]}
    print(f"initial loss {losses['train_loss']:.4e}; an all-zero output gives {losses['zero_output_loss']:.4e} "
          f"(ratio {losses['train_loss'] / losses['zero_output_loss']:.3f}); width {width} can reach "
          f"{losses['output_floor_loss']:.2e} on this batch at best")
    return losses


def dead_output_warning(losses: list[float], zero_loss: float, tolerance: float = 0.02) -> str | None:
    """A message if the loss has stayed within `tolerance` of the all-zero-output loss."""
    if len(losses) >= 2 and all(abs(x / zero_loss - 1) < tolerance for x in losses[len(losses) // 2:]):
        return (f"the loss has stayed at the all-zero-output value {zero_loss:.3e}: the outputs look dead "
                "(a ReLU after the output layer, or no gradient reaching it)")
    return None


def report_overfit(log: list[dict]) -> bool:
    """Prints whether the training loss fell at least 100x over an --overfit run; returns that."""
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    if not losses:
        print("overfit: no training loss was logged")
        return False
    first, last = losses[0], losses[-1]
    fell = first / max(last, 1e-30)
    ok = fell >= 100
    print(f"overfit: loss {first:.3e} -> {last:.3e} ({fell:.0f}x); {'falls' if ok else 'does NOT fall'} >= 100x")
    start = initial_record(log)
    if start is None:
        return ok
    floor = start.get("output_floor_loss", 0.0)
    if not ok and floor > first / 100:
        joints = start["num_joints"]
        print(f"  the output layer cannot go below {floor:.3e} on these samples ({first / floor:.0f}x): the network "
              f"is narrower than its {joints} joints; fit with --width {joints} or more")
    warning = dead_output_warning(losses, start["zero_output_loss"])
    if warning:
        print("WARNING: " + warning)
    return ok
