"""The pictures a run leaves in its directory: loss curves, success rates, and test samples."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from v2v_jax import geometry, metrics, vis
from v2v_jax.geometry import world_to_pixel


def plot_curves(path: Path, log: list[dict]) -> None:
    """Training loss per logged step, test loss and test mean error per epoch."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    train = [(r["step"], r["train_loss"]) for r in log if "train_loss" in r]
    test = [(r["step"], r["test_loss"], r["test_mean_error_mm"]) for r in log if "test_loss" in r]
    zero = [r["zero_output_loss"] for r in log if "zero_output_loss" in r]
    if train:
        ax_loss.semilogy(*zip(*train), label="train (batch)")
    if test:
        steps, losses, errors = zip(*test)
        ax_loss.semilogy(steps, losses, "o-", label="test")
        ax_err.plot(steps, errors, "o-")
    if zero:
        ax_loss.axhline(zero[0], color="gray", linestyle="--", label="all-zero output")
    ax_loss.set(xlabel="step", ylabel="heatmap MSE", title="loss")
    ax_loss.legend()
    ax_err.set(xlabel="step", ylabel="mean joint error (mm)", title="test error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def save_run_figures(run_dir: Path, log: list[dict], final: dict, test_set, geo, spec, samples: int = 3) -> None:
    plot_curves(run_dir / "curves.png", log)
    vis.plot_success_curves(run_dir / "success.png", {"test": final["success"]["max_frame"]},
                            metrics.THRESHOLDS_MM, per_joint={"test": final["per_joint_mm"]},
                            joint_names=spec.joint_names)
    edges = vis.SKELETONS.get(spec.name, ())
    for i in np.linspace(0, len(test_set) - 1, samples).astype(int):
        frame = test_set[int(i)]
        pred, gt = final["pred"][i], final["gt"][i]
        voxels, coords = geometry.encode_sample(jnp.asarray(frame.depth), jnp.asarray(frame.center),
                                                jnp.asarray(gt), None, spec, geo.grid, geo.cube_mm)
        pred_coords = geometry.world_to_grid(jnp.asarray(pred), jnp.asarray(frame.center), geo.cube_mm, geo.grid)
        vis.plot_volume_projections(run_dir / f"sample_{i}_voxels.png", np.asarray(voxels[..., 0]),
                                    joints=np.asarray(coords), decoded=np.asarray(pred_coords), edges=edges,
                                    title=f"{frame.frame_id}: true (blue) and predicted (red) joints, grid units")
        vis.plot_depth_skeleton(frame.depth, {"true": world_to_pixel(gt, spec)[:, :2],
                                              "predicted": world_to_pixel(pred, spec)[:, :2]},
                                edges, path=run_dir / f"sample_{i}_depth.png", title=frame.frame_id)
