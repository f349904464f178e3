"""How far this project's geometry ('ours') is from the public PyTorch port's, convention by convention, in mm and
voxels; the numbers of docs/conventions.md.

    python bench/conventions.py [--frames 8] [--nyu-gt ../shared/data/eval/nyu_gt.txt]

Scenes: frames of the synthetic set (`v2v_jax.data.synth`, MSRA camera, 88^3 grid, 200 mm cube, each frame's own
reference centre) and, with --nyu-gt, depth maps of real NYU test poses (the oracle's stick hands on the
ground-truth joints, NYU camera, 250 mm cube). The port's pipeline is `v2v_torch_ref.port_pipeline`, in float64;
the product's geometry runs as `predict` runs it (jitted, float32).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from v2v_jax import geometry, metrics, vis
from v2v_jax.data import cameras, render, synth
from v2v_torch_ref import geometry_ref as ref
from v2v_torch_ref.port_pipeline import N, PORT_FRAME, port_coord, port_points, port_scatter

encode = jax.jit(geometry.encode_batch, static_argnames=("spec", "grid_size", "cube_mm", "geometry"))


def synthetic_scenes(count: int):
    rows = synth.plan_frames(len(cameras.MSRA_GESTURES) * 2, 2)
    rows = rows[np.linspace(0, len(rows) - 1, count).astype(int)]  # both subjects, gestures spread
    frames = synth.render_rows(rows, seed=0)
    return cameras.MSRA, frames.depth, frames.centers.astype(np.float64)


def nyu_scenes(path, count: int):
    joints = metrics.read_world(path, "nyu")[::500][:count]
    hands = [ref.stick_hand(j, vis.SKELETONS["nyu"]) for j in joints]
    depth, _ = render.render_spheres(np.stack([c for c, _ in hands]), hands[0][1], cameras.NYU)
    return cameras.NYU, depth, joints.mean(axis=1)


def product_voxels(depth, center, spec, name):
    voxels, _ = encode(jnp.asarray(depth)[None], jnp.asarray(center, jnp.float32)[None],
                       jnp.zeros((1, 1, 3), jnp.float32), None, spec, N, spec.cube_mm, geometry=name)
    return np.asarray(voxels[0, ..., 0])


def voxel_table(spec, depths, centers) -> None:
    print(f"\n{spec.name}: {len(depths)} depth maps, {N}^3 grid, {spec.cube_mm:g} mm cube "
          f"({spec.cube_mm / N:.3f} mm voxels)")
    print(f"{'frame':>5} {'z mm':>5} {'x shift mm':>10} {'vox':>5} {'occupied':>8} {'ours != port':>12} "
          f"{'same points':>11} {'(-1,0) pts':>10} {'port(JAX) != port':>17}")
    for k, (depth, center) in enumerate(zip(depths, centers)):
        points = port_points(depth, spec, spec.background_mm)
        coords = port_coord(points, center, spec.cube_mm)
        expected = port_scatter(coords)
        inside = np.all((coords > -1) & (coords < N), axis=1)
        shift = points[inside, 2] / spec.fx                 # port x - ours x, exactly
        ours = product_voxels(depth, center, spec, "ours")
        same_points = ref.scattering(coords, N)             # our floor on the port's own points
        sliver = int((inside & np.any(coords < 0, axis=1)).sum())
        print(f"{k:>5} {np.median(points[inside, 2]):>5.0f} {shift.min():>4.2f}-{shift.max():<5.2f} "
              f"{np.median(shift) * N / spec.cube_mm:>5.2f} {int(expected.sum()):>8} "
              f"{int((ours != expected).sum()):>12} {int((same_points != expected).sum()):>11} {sliver:>10} "
              f"{int((product_voxels(depth, center, spec, 'port') != expected).sum()):>17}")


def augmentation_frame(draws: int, rng: np.random.Generator) -> float:
    """Largest |port - ours| in voxels over random draws, ours with s = new_size/100, the angle, t = 4 - trans."""
    center = np.array([12.0, -30.0, 350.0])
    points = center + rng.uniform(-120, 120, (200, 3))
    worst = 0.0
    for _ in range(draws):
        new_size, angle, trans = rng.uniform(80, 120), np.deg2rad(rng.uniform(-40, 40)), rng.uniform(0, 8, 3)
        port = port_coord(points, center, 200.0, new_size, angle, trans)
        ours = ref.generate_coord(points, center, 200.0, N, scale=new_size / 100, angle=angle,
                                  trans=(PORT_FRAME - N) / 2 - trans)
        worst = max(worst, float(np.abs(port - ours).max()))
    return worst


def heatmaps_and_decoding(rng: np.random.Generator) -> tuple[float, float]:
    """(largest |H_ours - H_port| over 21 joints' targets, largest decoded-joint difference in mm)."""
    coords = rng.uniform(4, N - 4, (21, 3))
    port = ref.heatmaps_from_coord(coords, N // 2)                       # (J, M, M, M), the port's layout
    ours = np.moveaxis(np.asarray(geometry.gaussian_heatmaps(jnp.asarray(coords, jnp.float32))), -1, 0)
    centers = rng.uniform(-50, 400, (1, 3))
    decoded_port = ref.V2VVoxelization(200.0).evaluate(port[None], centers)
    decoded_ours = geometry.decode_heatmaps(jnp.asarray(np.moveaxis(port, 0, -1)[None], jnp.float32),
                                            jnp.asarray(centers, jnp.float32), 200.0, N)
    return float(np.abs(ours - port).max()), float(np.abs(np.asarray(decoded_ours) - decoded_port).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="depth maps per scene set")
    parser.add_argument("--nyu-gt", help="the NYU ground-truth result file, for depth maps of real poses")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for spec in (cameras.MSRA, cameras.NYU):
        print(f"pixel numbering, {spec.name}: port x - ours x = z/fx = {300 / spec.fx:.3f} mm at 300 mm, "
              f"{400 / spec.fx:.3f} at 400, {800 / spec.fx:.3f} at 800; port y - ours y = -z/fy")
    voxel_table(*synthetic_scenes(args.frames))
    if args.nyu_gt:
        voxel_table(*nyu_scenes(args.nyu_gt, args.frames))
    print(f"\naugmentation frame: largest |port - ours (s = new_size/100, t = 4 - trans)| over 1000 draws: "
          f"{augmentation_frame(1000, rng):.1e} voxels")
    heat, decoded = heatmaps_and_decoding(rng)
    print(f"heatmap targets: largest |ours (float32, M^3 x J) - port (J x M^3)| = {heat:.1e}; argmax decoding: "
          f"largest difference {decoded:.1e} mm")


if __name__ == "__main__":
    main()
