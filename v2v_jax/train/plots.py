"""The pictures a run leaves in its directory: loss curves, success rates, and test samples.

`python -m v2v_jax.train.plots RUN_DIR [RUN_DIR ...] --out PNG` overlays the training losses of several runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from v2v_jax import geometry, metrics, vis
from v2v_jax.data.cameras import world_to_pixel
from v2v_jax.train.run_dir import initial_record, read_log


def plot_curves(path: Path, log: list[dict]) -> None:
    """Training loss per logged step, test loss and test mean error per epoch."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    train = [(r["step"], r["train_loss"]) for r in log if "train_loss" in r]
    test = [(r["step"], r["test_loss"], r["test_mean_error_mm"]) for r in log if "test_loss" in r]
    start = initial_record(log) or {}
    if train:
        ax_loss.semilogy(*zip(*train), label="train (batch)")
    if test:
        steps, losses, errors = zip(*test)
        ax_loss.semilogy(steps, losses, "o-", label="test")
        ax_err.plot(steps, errors, "o-")
    if "zero_output_loss" in start:
        ax_loss.axhline(start["zero_output_loss"], color="gray", linestyle="--", label="all-zero output")
    if start.get("output_floor_loss", 0) > 0:  # first batch only: a guide, not a bound for other batches
        ax_loss.axhline(start["output_floor_loss"], color="gray", linestyle=":",
                        label="output layer's floor (first batch)")
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
    for i in np.linspace(0, len(final["pred"]) - 1, samples).astype(int):  # --eval-batches: fewer than the set
        frame = test_set[int(i)]
        pred, gt = final["pred"][i], final["gt"][i]
        voxels, coords = geometry.encode_sample(jnp.asarray(frame.depth), jnp.asarray(frame.center),
                                                jnp.asarray(gt), None, spec, geo.grid, geo.cube_mm,
                                                geometry=geo.geometry)
        pred_coords = geometry.world_to_grid(jnp.asarray(pred), jnp.asarray(frame.center), geo.cube_mm, geo.grid)
        vis.plot_volume_projections(run_dir / f"sample_{i}_voxels.png", np.asarray(voxels[..., 0]),
                                    joints=np.asarray(coords), decoded=np.asarray(pred_coords), edges=edges,
                                    title=f"{frame.frame_id}: true (blue) and predicted (red) joints, grid units")
        origin = geometry.geometry_of(geo.geometry).pixel_origin
        vis.plot_depth_skeleton(frame.depth, {"true": world_to_pixel(gt, spec, origin)[:, :2],
                                              "predicted": world_to_pixel(pred, spec, origin)[:, :2]},
                                edges, path=run_dir / f"sample_{i}_depth.png", title=frame.frame_id)


def compare_runs(path: Path, runs: list[Path], title: str = "training loss") -> None:
    """The training loss of each run, as a multiple of its all-zero-output loss, with its output layer's floor."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for run in runs:
        log = read_log(run)
        if not log:
            raise FileNotFoundError(f"{run / 'metrics.jsonl'}: no log records")
        cfg = json.loads((run / "config.json").read_text())
        start = initial_record(log)
        if start is None:
            raise ValueError(f"{run / 'metrics.jsonl'}: no step-0 record with the all-zero-output loss")
        steps, losses = zip(*[(r["step"], r["train_loss"]) for r in log if "train_loss" in r])
        label = f"{run.name} (width {cfg['width']}, {cfg['dtype']})"
        line, = ax.semilogy(steps, np.asarray(losses) / start["zero_output_loss"], label=label)
        if start.get("output_floor_loss", 0) > 0:
            ax.axhline(start["output_floor_loss"] / start["zero_output_loss"], color=line.get_color(),
                       linestyle=":", label=f"{run.name}: output layer's floor")
    ax.axhline(1e-2, color="gray", linestyle="--", label="1/100 of the start")
    ax.set(xlabel="step", ylabel="loss / all-zero-output loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m v2v_jax.train.plots", description=compare_runs.__doc__)
    p.add_argument("runs", type=Path, nargs="+", help="run directories (with metrics.jsonl and config.json)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="training loss")
    args = p.parse_args(argv)
    compare_runs(args.out, args.runs, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
