"""The debugging checks a run makes on itself: raw samples unchanged by training, the first batch's loss against
the all-zero-output loss and the output layer's floor, and whether an --overfit run fitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v2v_jax import geometry
from v2v_jax.data.base import DepthDataset
from v2v_jax.data.loader import frames_digest
from v2v_jax.train import parallel
from v2v_jax.train.run_dir import initial_record


class RawSampleCheck:
    """Raw samples must come back unchanged after every epoch of augmented training: an augmentation that works in
    place would otherwise corrupt every later epoch without a word."""

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

    A loss that stays at the all-zero value means dead outputs (a ReLU after the output layer); one that
    stays at the floor means the network is too narrow for its joints (`output_layer_floor`).
    """
    voxels, coords = geometry.encode_batch(batch["depth"], batch["center"], batch["joints"], None, geo.spec,
                                           geo.grid, geo.cube_mm, geometry=geo.geometry)
    model = nnx.merge(train_def, state.params, jax.tree.map(jnp.copy, state.batch_stats))  # stats stay untouched
    pred = model(voxels)
    dtype = jnp.promote_types(pred.dtype, jnp.float32)  # as heatmap_mse: float64 runs keep float64 targets
    targets = jax.vmap(lambda c: geometry.gaussian_heatmaps(c, pred.shape[1], dtype=dtype))(coords)
    losses = {"train_loss": float(geometry.heatmap_mse(pred, coords)),
              "zero_output_loss": float(geometry.zero_output_loss(coords, pred.shape[1], dtype=dtype)),
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
