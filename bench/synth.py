"""Synthetic hand data: generation speed in one process, the time to write the default set, and the gallery.

    python bench/synth.py                    # speed (frames/s and the share of each stage), default-set time
    python bench/synth.py --gallery docs/img/synth_gallery.png --no-speed --no-default-set

Speed is reported as wall-clock frames/s and as CPU-time frames/s (the process's own CPU seconds, less sensitive to
other processes on a shared machine); each stage is timed on the same frames in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from v2v_jax.data import cameras, hand_model, render, synth
from v2v_jax.data.cameras import world_to_pixel

FINGER_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:orange")  # index, middle, ring, little, thumb


def _timed(fn, repeats: int):
    """(best wall seconds, best CPU seconds, result) over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def speed(frames: int, repeats: int, seed: int = 0) -> None:
    rows = synth.plan_frames(frames, subjects=1)
    shape = synth.subject_shape(seed, 0)

    def scenes():
        return [synth.sample_scene(synth.frame_rng(seed, *map(int, r)), shape, cameras.MSRA_GESTURES[r[1]])
                for r in rows]

    wall, cpu, _ = _timed(lambda: synth.render_rows(rows, seed), repeats)
    print(f"generate ({frames} frames, one process): {frames / wall:.0f} frames/s wall, {frames / cpu:.0f} frames/s "
          f"CPU time; goal 100 frames/s: x{frames / wall / 100:.2f} (wall)")
    stage_scene = _timed(scenes, repeats)
    spheres = np.stack([s.spheres for s in stage_scene[2]])
    stage_render = _timed(lambda: render.render_spheres(spheres, shape.sphere_radii), repeats)
    clean, cosine = stage_render[2]
    rng = np.random.default_rng(seed)
    stage_sensor = _timed(lambda: [render.sensor_model(d, c, rng) for d, c in zip(clean, cosine)], repeats)
    total = stage_scene[1] + stage_render[1] + stage_sensor[1]
    for name, stage in (("pose + view sampling", stage_scene), ("ray casting", stage_render),
                        ("sensor model", stage_sensor)):
        print(f"  {name:22s} {stage[1] / frames * 1e3:6.2f} ms/frame CPU ({stage[1] / total:5.1%} of the stages)")


def default_set(workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for w in sorted({1, workers}):
            start = time.perf_counter()
            synth.write_msra_dataset(f"{tmp}/w{w}", workers=w)
            times[w] = time.perf_counter() - start
            size = sum(p.stat().st_size for p in Path(f"{tmp}/w{w}").rglob("*") if p.is_file()) / 2 ** 20
            print(f"default set ({synth.DEFAULT_FRAMES} frames, {synth.DEFAULT_SUBJECTS} subjects), workers={w}: "
                  f"{times[w]:.1f} s ({synth.DEFAULT_FRAMES / times[w]:.0f} frames/s incl. writing), {size:.0f} MiB")
        if len(times) > 1:
            print(f"  speed-up with {workers} workers: x{times[1] / times[workers]:.2f}")


def gallery(path: str, seed: int = 0) -> None:
    """4 x 4 depth maps (16 gestures, subjects in turn) with the projected skeleton, bones coloured per finger."""
    gestures = [g for g in cameras.MSRA_GESTURES if g != "7"]
    subjects = synth.DEFAULT_SUBJECTS
    rows = np.array([(k % subjects, cameras.MSRA_GESTURES.index(g), 0) for k, g in enumerate(gestures)])
    frames = synth.render_rows(rows, seed)
    fig = Figure(figsize=(12, 12.6))
    for k, (depth, joints, (subject, gesture, _)) in enumerate(zip(frames.depth, frames.joints, rows)):
        ax = fig.add_subplot(4, 4, k + 1)
        uv = world_to_pixel(joints.astype(np.float64), cameras.MSRA)[:, :2]
        ax.imshow(np.ma.masked_equal(depth, 0), cmap="viridis", interpolation="nearest")
        for chain, colour in enumerate(FINGER_COLOURS):
            path_ids = [0] + [hand_model.chain_joint(chain, j) for j in range(4)]
            ax.plot(uv[path_ids, 0], uv[path_ids, 1], "-o", color=colour, linewidth=1.2, markersize=2,
                    alpha=0.9)
        vs, us = np.nonzero(depth)
        lo = np.minimum([us.min(), vs.min()], uv.min(0)) - 6
        hi = np.maximum([us.max(), vs.max()], uv.max(0)) + 6
        half = (hi - lo).max() / 2
        mid = (hi + lo) / 2
        ax.set_xlim(mid[0] - half, mid[0] + half)
        ax.set_ylim(mid[1] + half, mid[1] - half)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"P{subject}/{cameras.MSRA_GESTURES[gesture]}  palm {hand_model.palm_centre(joints)[2]:.0f} mm", fontsize=10)
    fig.suptitle("Synthetic MSRA-layout frames (seed 0): depth (near dark, far yellow) with the projected "
                 "skeleton; bones: index red, middle green, ring blue, little purple, thumb orange", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=340, help="frames for the speed measurement")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--workers", type=int, default=2, help="also time the default set with this many workers")
    parser.add_argument("--gallery", help="write the gallery PNG here")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-default-set", action="store_true")
    args = parser.parse_args()
    if not args.no_speed:
        speed(args.frames, args.repeats)
    if not args.no_default_set:
        default_set(args.workers)
    if args.gallery:
        gallery(args.gallery)


if __name__ == "__main__":
    main()
