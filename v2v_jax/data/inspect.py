"""Look at a data set before training on it: frame counts per split, depth range, how much depth falls inside the
cube around the reference centre, and a PNG of a few frames with their projected joints and centre.

    python -m v2v_jax.data.inspect --dataset msra --root DIR [--centers DIR] [--test-subject 3] [--out FILE.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from v2v_jax import vis
from v2v_jax.data import DATASET_NAMES, open_dataset
from v2v_jax.data.base import DepthDataset
from v2v_jax.data.cameras import DatasetSpec, pixel_to_world, world_to_pixel


def project(xyz: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """(..., 3) world mm -> (..., 2) pixel u, v."""
    return world_to_pixel(np.asarray(xyz, np.float64), spec)[..., :2]


def world_points(depth: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """(K, 3) world points of the non-zero pixels of `depth`."""
    v, u = np.nonzero(depth)
    return pixel_to_world(np.stack([u, v, depth[v, u]], axis=-1).astype(np.float64), spec)


def depth_stats(dataset: DepthDataset, indices) -> dict[str, float]:
    """Range of the non-zero depth, and the fraction of non-zero pixels whose point lies in the cube
    [c - C/2, c + C/2) around the reference centre, over the frames `indices`."""
    lo, hi, inside, total = np.inf, -np.inf, 0, 0
    half = dataset.spec.cube_mm / 2
    for i in indices:
        frame = dataset[int(i)]
        points = world_points(frame.depth, dataset.spec)
        if len(points):
            lo, hi = min(lo, points[:, 2].min()), max(hi, points[:, 2].max())
        offset = points - frame.center
        inside += int(np.all((offset >= -half) & (offset < half), axis=1).sum())
        total += len(points)
    return {"min_mm": lo, "max_mm": hi, "inside_cube": inside / max(total, 1), "pixels": total}


def draw(dataset: DepthDataset, indices, out: Path) -> None:
    """A row of frames: depth near the cube, joints and bones, the centre (cross) and the cube's outline."""
    spec = dataset.spec
    fig = Figure(figsize=(3.2 * len(indices), 3.6))
    for k, i in enumerate(indices):
        ax = fig.add_subplot(1, len(indices), k + 1)
        frame = dataset[int(i)]
        c, half = frame.center.astype(np.float64), spec.cube_mm / 2
        ax.set_facecolor("0.15")  # no-data pixels
        ax.imshow(np.ma.masked_equal(frame.depth, 0), cmap="viridis", vmin=c[2] - half, vmax=c[2] + half)
        corners = project(c + np.array([[-half, -half, 0], [half, half, 0]]), spec)
        (u0, u1), (v0, v1) = np.sort(corners[:, 0]), np.sort(corners[:, 1])
        ax.add_patch(Rectangle((u0, v0), u1 - u0, v1 - v0, fill=False, color="white", lw=0.8, ls="--"))
        if not np.isnan(frame.joints).all():
            vis.draw_skeleton(ax, project(frame.joints, spec), vis.SKELETONS[spec.name], color="red")
        cu, cv = project(c, spec)
        ax.plot(cu, cv, "w+", ms=12, mew=2)
        margin = 0.25 * (u1 - u0)
        ax.set_xlim(max(u0 - margin, 0), min(u1 + margin, spec.width - 1))
        ax.set_ylim(min(v1 + margin, spec.height - 1), max(v0 - margin, 0))
        ax.set_title(frame.frame_id, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{spec.name} {dataset.split}: depth within centre z ± C/2, joints (red), centre (+), cube (dashed)",
                 fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def evenly_spaced(num_frames: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--centers", type=Path, help="centre folder (MSRA, ITOP) or file; default: joint mean")
    parser.add_argument("--test-subject", type=int, help="MSRA: the held-out subject")
    parser.add_argument("--view", default="side", choices=("side", "top"), help="ITOP view")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--sample", type=int, default=32, help="frames per split for the depth statistics")
    parser.add_argument("--frames", type=int, default=4, help="frames to draw (from the last split)")
    parser.add_argument("--out", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    if args.dataset == "msra" and args.test_subject is None:
        parser.error("--dataset msra needs --test-subject")

    dataset = None
    for split in args.splits:
        dataset = open_dataset(args.dataset, args.root, args.centers, split, args.test_subject, view=args.view)
        print(dataset.report())
        if not len(dataset):
            continue
        sample = evenly_spaced(len(dataset), args.sample)
        stats = depth_stats(dataset, sample)
        print(f"  depth over {len(sample)} frames: {stats['min_mm']:.1f} to {stats['max_mm']:.1f} mm; "
              f"{100 * stats['inside_cube']:.1f} % of {stats['pixels']} non-zero pixels inside the "
              f"{dataset.spec.cube_mm:g} mm cube")
    if args.out is not None and dataset is not None and len(dataset):
        draw(dataset, evenly_spaced(len(dataset), args.frames), args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
