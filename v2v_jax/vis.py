"""Pictures: maximum-intensity projections of a voxel grid with joints, skeletons on depth maps, success curves.

Figures are built on `matplotlib.figure.Figure` (no pyplot state), so they work headless and in threads.
Grid coordinates are continuous voxel coordinates c' (voxel i covers [i, i+1)); heatmaps cover the same cube at half
the resolution. Run `python -m v2v_jax.vis --example docs/img/voxel_projection_example.png` for the example picture.
"""

from __future__ import annotations

import argparse

import numpy as np
from matplotlib.figure import Figure


def _path(*joints: int) -> tuple[tuple[int, int], ...]:
    return tuple(zip(joints[:-1], joints[1:]))


def _paths(*paths) -> tuple[tuple[int, int], ...]:
    return sum((_path(*p) for p in paths), ())


SKELETONS = {  # (parent, child) pairs in each data set's joint order (cameras.DatasetSpec.joint_names)
    "msra": _paths(*[(0, *range(1 + 4 * f, 5 + 4 * f)) for f in range(5)]),
    "icvl": _paths(*[(0, *range(1 + 3 * f, 4 + 3 * f)) for f in range(5)]),
    "nyu": _paths((13, 1, 0), (13, 3, 2), (13, 5, 4), (13, 7, 6), (13, 10, 9, 8), (13, 11), (13, 12)),
    "hands2017": _paths(*[(0, 1 + f, *range(6 + 3 * f, 9 + 3 * f)) for f in range(5)]),
    "itop": _paths((0, 1, 2, 4, 6), (1, 3, 5, 7), (1, 8, 9, 11, 13), (8, 10, 12, 14)),
}


def draw_skeleton(ax, points_2d, edges=(), color="tab:red", label=None, marker="o"):
    """Joints (J, 2) in the axis' coordinates as markers, joined by `edges`."""
    points_2d = np.asarray(points_2d)
    for a, b in edges:
        ax.plot(points_2d[[a, b], 0], points_2d[[a, b], 1], color=color, linewidth=1.2, alpha=0.8)
    ax.scatter(points_2d[:, 0], points_2d[:, 1], s=14, color=color, marker=marker, label=label, zorder=3)


def plot_depth_skeleton(depth, skeletons: dict, edges=(), path=None, title=None, ax=None):
    """A depth map (H, W) with one or more 2D skeletons {label: (J, 2) pixel (u, v)}; saved to `path` if given.

    Colours go in order through matplotlib's cycle; zero depth is drawn white.
    """
    fig = None
    if ax is None:
        fig = Figure(figsize=(5, 5 * depth.shape[0] / depth.shape[1] + 0.4))
        ax = fig.add_subplot()
    ax.imshow(np.ma.masked_equal(np.asarray(depth, np.float64), 0), cmap="gray_r")
    for i, (label, uv) in enumerate(skeletons.items()):
        draw_skeleton(ax, uv, edges, color=f"C{i}", label=label)
    ax.set(title=title, xlabel="u (px)", ylabel="v (px)")
    if len(skeletons) > 1:
        ax.legend(loc="lower right", fontsize=8)
    if fig is not None and path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return ax


_VIEWS = (  # (horizontal axis, vertical axis, projected axis), array axes (0, 1, 2) = world (x, y, z)
    (0, 1, 2),
    (0, 2, 1),
    (2, 1, 0),
)


def _projection(volume, axis, transpose):
    image = volume.max(axis=axis)
    return image.T if transpose else image


def plot_volume_projections(path, voxels, heatmaps=None, joints=None, decoded=None, edges=(), title=None):
    """Save the three maximum-intensity projections of an (N, N, N) grid.

    heatmaps: (M, M, M, J), shown as the maximum over joints in colour where it exceeds 0.1;
    joints (J, 3): grid coordinates of the target peaks (circles, joined by `edges`);
    decoded (J, 3): decoded grid coordinates (crosses).
    """
    voxels = np.asarray(voxels)
    n = voxels.shape[0]
    fig = Figure(figsize=(13, 4.6))
    axes = fig.subplots(1, 3)
    names = "xyz"
    for ax, (h, v, p) in zip(axes, _VIEWS):
        image = _projection(voxels, p, h < v)  # rows must run along the vertical axis
        ax.imshow(image, origin="lower", extent=(0, n, 0, n), cmap="gray_r", vmin=0, vmax=2.5)
        if heatmaps is not None:
            peaks = _projection(np.asarray(heatmaps).max(axis=3), p, h < v)
            ax.imshow(np.ma.masked_less(peaks, 0.1), origin="lower", extent=(0, n, 0, n), cmap="YlOrRd",
                      alpha=0.6, vmin=0, vmax=1)
        if joints is not None:
            draw_skeleton(ax, np.asarray(joints)[:, [h, v]], edges, color="tab:blue", label="target peak")
        if decoded is not None:
            draw_skeleton(ax, np.asarray(decoded)[:, [h, v]], (), color="tab:red", label="decoded", marker="x")
        ax.set(xlim=(0, n), ylim=(0, n), xlabel=f"{names[h]} (voxels)", ylabel=f"{names[v]} (voxels)",
               title=f"max over {names[p]}")
    if joints is not None or decoded is not None:
        axes[0].legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_success_curves(path, curves: dict, thresholds, per_joint: dict | None = None, joint_names=None,
                        title=None):
    """Max-frame success rate against threshold, one curve per entry of `curves` {label: (T,) fractions}.

    per_joint {label: (J,) mean errors in mm}, if given, adds a bar chart of per-joint mean errors.
    """
    fig = Figure(figsize=(12 if per_joint else 6, 4.5))
    axes = fig.subplots(1, 2 if per_joint else 1, squeeze=False)[0]
    for label, rates in curves.items():
        axes[0].plot(thresholds, 100 * np.asarray(rates), label=label)
    axes[0].set(xlim=(thresholds[0], thresholds[-1]), ylim=(0, 100), xlabel="threshold (mm)",
                ylabel="frames with every joint within threshold (%)", title="max-frame success rate")
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if per_joint:
        width = 0.8 / len(per_joint)
        for i, (label, errors) in enumerate(per_joint.items()):
            axes[1].bar(np.arange(len(errors)) + (i - (len(per_joint) - 1) / 2) * width, errors, width, label=label)
        count = len(next(iter(per_joint.values())))
        axes[1].set_xticks(np.arange(count), joint_names or [str(j) for j in range(count)], rotation=70,
                           fontsize=7)
        axes[1].set(ylabel="mean error (mm)", title="per-joint mean error")
        axes[1].grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def example_projection(path, seed: int = 0):
    """The example picture: one synthetic frame (v2v_jax.data.synth, MSRA camera), its grid, targets, and
    argmax-decoded targets."""
    import jax
    import jax.numpy as jnp

    from v2v_jax import geometry
    from v2v_jax.data import cameras, synth

    frame = synth.render_rows(np.array([[0, 0, 0]]), seed)
    voxels, coords = geometry.encode_sample(jnp.asarray(frame.depth[0]), jnp.asarray(frame.centers[0]),
                                            jnp.asarray(frame.joints[0]), jax.random.key(seed), cameras.MSRA)
    heatmaps = geometry.gaussian_heatmaps(coords)
    decoded = geometry.decode_grid_coords(heatmaps[None])[0]
    plot_volume_projections(path, np.asarray(voxels[..., 0]), np.asarray(heatmaps), np.asarray(coords),
                            np.asarray(decoded), SKELETONS["msra"],
                            title="synthetic hand, 88³ grid, one augmentation draw: occupied voxels (grey), "
                                  "targets (colour), target peaks (circles), argmax decoding of the targets (x)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", required=True, metavar="PNG", help="write the example projection picture here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    example_projection(args.example, args.seed)


if __name__ == "__main__":
    main()
