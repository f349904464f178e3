"""Data geometry throughput (NumPy reference vs jitted JAX) and the accuracy of each heatmap decoding method.

    python bench/geometry.py [--batch B] [--rounds R] [--out DIR]

Throughput: one sample = a 320 x 240 depth map (76,800 points, MSRA camera, toy hand of spheres) -> 88^3 occupancy
and 21 x 44^3 Gaussian targets, with a training augmentation draw.
- reference: `v2v_torch_ref.geometry_ref`, one sample at a time like the PyTorch port's data loader (float64,
  float32 occupancy);
- JAX "train step": `geometry.encode_batch` + `heatmap_mse` against a prediction already on the device, under one
  jit: the targets are built inside the loss and never stored, as in training; occupancy in uint8, the project's
  default (`geometry.OCCUPANCY_DTYPE`; the model's first convolution casts it);
- JAX "train step, f32 voxels": the same with float32 occupancy, as the reference stores it;
- JAX "materialised": `encode_batch` + `gaussian_heatmaps`, returning voxels and targets like the reference;
- JAX "from host": the train-step form with the depth maps copied from the host every step.
Like `python train.py`, the script restarts itself with malloc on huge pages (`v2v_jax/hugepages.py`;
`V2V_HUGEPAGES=0` keeps the default malloc). JAX runs a batch at a time (default 32 on CPU, 64 on GPU) with inputs
on the device. The forms are timed in interleaved rounds; the best and the median of the rounds are reported.
Unless --all-cores is given, the process is pinned to one CPU core before JAX starts (its thread pool then shares
that core), so CPU figures are per core. On a GPU the JAX figures are the device's and the reference stays one core.
Decoding: per-axis error (in input voxels) of argmax and of the refinements on synthetic heatmaps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path

from v2v_jax.hugepages import restart_with_huge_pages


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="JAX batch size (default 32 on CPU, 64 on GPU)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="JAX steps per round and form")
    parser.add_argument("--reference-samples", type=int, default=6, help="reference samples per round")
    parser.add_argument("--decode-volumes", type=int, default=256, help="synthetic heatmaps per decoding case")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one CPU core")
    parser.add_argument("--out", type=Path, help="write geometry.json here")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    restart_with_huge_pages()  # as train.py does; V2V_HUGEPAGES=0 measures the default malloc
    if not ARGS.all_cores:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before JAX creates its threads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from v2v_jax import geometry  # noqa: E402
from v2v_jax.data import cameras  # noqa: E402
from v2v_torch_ref import geometry_ref as ref  # noqa: E402

SPEC = cameras.MSRA
N = 88


def toy_batch(batch: int, distinct: int = 4, seed: int = 0):
    """`batch` samples cycling through `distinct` rendered toy hands (rendering is slow NumPy)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(distinct):
        centres, radii, joints = ref.toy_hand([rng.uniform(-40, 40), rng.uniform(-60, 0), rng.uniform(280, 420)], rng)
        scenes.append((ref.render_spheres(SPEC, centres, radii), joints.mean(0) + rng.uniform(-10, 10, 3), joints))
    picks = [scenes[i % distinct] for i in range(batch)]
    return tuple(np.stack([p[k] for p in picks]).astype(np.float32) for k in range(3))


def time_reference(depths, centers, joints, samples: int, rng: np.random.Generator) -> float:
    """Samples per second of the port-style per-sample pipeline (depth -> points -> voxels + targets)."""
    transform = ref.V2VVoxelization(SPEC.cube_mm, N)
    start = time.perf_counter()
    for i in range(samples):
        b = i % len(depths)
        sample = {"points": ref.depth_to_points(depths[b], SPEC), "keypoints": joints[b], "refpoint": centers[b]}
        transform(sample, scale=rng.uniform(0.8, 1.2), angle=np.deg2rad(rng.uniform(-40, 40)),
                  trans=rng.uniform(-4, 4, 3))
    return samples / (time.perf_counter() - start)


@functools.partial(jax.jit, static_argnames="dtype")
def train_step_geometry(depths, centers, joints, key, prediction, dtype=geometry.OCCUPANCY_DTYPE):
    voxels, coords = geometry.encode_batch(depths, centers, joints, key, SPEC, N, dtype=dtype)
    return voxels, geometry.heatmap_mse(prediction, coords)


@jax.jit
def materialised_geometry(depths, centers, joints, key):
    voxels, coords = geometry.encode_batch(depths, centers, joints, key, SPEC, N)
    return voxels, jax.vmap(geometry.gaussian_heatmaps)(coords)


def jax_forms(depths, centers, joints):
    """{name: step(key)}: each form of the JAX pipeline, compiled, inputs already on the device."""
    on_device = [jax.device_put(x) for x in (depths, centers, joints)]
    prediction = jnp.zeros((len(depths), N // 2, N // 2, N // 2, joints.shape[1]), jnp.float32)
    forms = {
        "train step": lambda key: train_step_geometry(*on_device, key, prediction),
        "train step, f32 voxels": lambda key: train_step_geometry(*on_device, key, prediction, jnp.float32),
        "materialised": lambda key: materialised_geometry(*on_device, key),
        "from host": lambda key: train_step_geometry(jax.device_put(depths), *on_device[1:], key, prediction),
    }
    for step in forms.values():
        jax.block_until_ready(step(jax.random.key(0)))
    return forms


def time_jax(step, batch: int, steps: int, seed: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        jax.block_until_ready(step(jax.random.key(seed + i)))
    return steps * batch / (time.perf_counter() - start)


def throughput(depths, centers, joints, rounds: int, steps: int, reference_samples: int) -> dict:
    """Samples/s of the reference and of each JAX form over interleaved rounds: best and median of the rounds, and
    the ratios to the reference (of the bests, and the median of the per-round ratios)."""
    forms = jax_forms(depths, centers, joints)
    rng = np.random.default_rng(0)
    runs = {"reference": [], **{name: [] for name in forms}}
    for r in range(rounds):
        runs["reference"].append(time_reference(depths, centers, joints, reference_samples, rng))
        for name, step in forms.items():
            runs[name].append(time_jax(step, len(depths), steps, seed=1000 * r))
    best = {name: float(np.max(v)) for name, v in runs.items()}
    return {
        "samples_per_s_best": best,
        "samples_per_s_median": {name: float(np.median(v)) for name, v in runs.items()},
        "ratio_of_bests": {name: best[name] / best["reference"] for name in forms},
        "median_ratio": {name: float(np.median(np.divide(runs[name], runs["reference"]))) for name in forms},
    }


# --- decoding accuracy -----------------------------------------------------------------------------------------

DECODE_CASES = {  # name: (sigma, amplitude, noise standard deviation)
    "clean (sigma 1.7)": (1.7, 1.0, 0.0),
    "noisy (+N(0, 0.05))": (1.7, 1.0, 0.05),
    "blurred (sigma 3, peak 0.5)": (3.0, 0.5, 0.0),
    "blurred + noisy (0.02)": (3.0, 0.5, 0.02),
}
DECODE_METHODS = [("argmax", {}), ("parabola", {}), ("window_mean", {"radius": 1}), ("window_mean", {"radius": 2}),
                  ("window_mean", {"radius": 3}), ("window_mean", {"radius": 5}), ("soft_argmax", {"beta": 10.0}),
                  ("soft_argmax", {"beta": 30.0}), ("soft_argmax", {"beta": 100.0})]


decode = jax.jit(geometry.decode_grid_coords, static_argnames=("method", "radius", "beta"))


def method_name(method, options):
    return " ".join([method] + [f"{k}={v:g}" for k, v in options.items()])


def gaussian_volumes(coords, sigma, amplitude, noise, key):
    """(V, 1, 3) grid coordinates -> (V, M, M, M, 1) amplitude * Gaussian(sigma) + iid normal noise."""
    heatmaps = jax.vmap(lambda c: geometry.gaussian_heatmaps(c, sigma=sigma))(coords)
    return amplitude * heatmaps + noise * jax.random.normal(key, heatmaps.shape, heatmaps.dtype)


def decoding_errors(volumes: int, seed: int = 0, chunk: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    coords = rng.uniform(12, N - 12, (volumes, 1, 3)).astype(np.float32)  # cells 6..38: no window is cut
    table = {}
    for case, (sigma, amplitude, noise) in DECODE_CASES.items():
        make = jax.jit(lambda c, k, s=sigma, a=amplitude, n=noise: gaussian_volumes(c, s, a, n, k))
        decoded = {method_name(m, o): [] for m, o in DECODE_METHODS}
        for start in range(0, volumes, chunk):
            heatmaps = make(jnp.asarray(coords[start:start + chunk]), jax.random.key(start))
            for method, options in DECODE_METHODS:
                decoded[method_name(method, options)].append(np.asarray(decode(heatmaps, method, **options)))
        table[case] = {}
        for name, parts in decoded.items():
            error = np.abs(np.concatenate(parts) - coords)  # per axis, input voxels
            table[case][name] = {"mean_abs_voxels": float(error.mean()), "max_abs_voxels": float(error.max()),
                                 "mean_3d_mm_c200": float(np.linalg.norm(error, axis=-1).mean() * 200 / N)}
    return table


def main(args):
    backend = jax.default_backend()
    batch = args.batch or (64 if backend == "gpu" else 32)
    depths, centers, joints = toy_batch(batch)
    cores = len(os.sched_getaffinity(0))
    malloc = os.environ.get("GLIBC_TUNABLES", "default")
    print(f"device: {jax.devices()[0].device_kind} ({backend}); CPU cores usable: {cores}; malloc tunables: {malloc}")
    print(f"batch {batch}; {depths.shape[1]} x {depths.shape[2]} depth maps, {joints.shape[1]} joints, {N}^3 grid; "
          f"{args.rounds} interleaved rounds")
    speed = throughput(depths, centers, joints, args.rounds, args.steps, args.reference_samples)
    print(f"{'samples/s':<24} {'best':>9} {'median':>9}   vs reference: {'bests':>6} {'median':>7}")
    for name, best in speed["samples_per_s_best"].items():
        line = f"{name:<24} {best:9.1f} {speed['samples_per_s_median'][name]:9.1f}"
        if name in speed["ratio_of_bests"]:
            line += f"   {'':>13} {speed['ratio_of_bests'][name]:5.1f}x {speed['median_ratio'][name]:6.1f}x"
        print(line)

    decoding = decoding_errors(args.decode_volumes)
    print(f"\ndecoding error per axis, input voxels (mean / max); mean 3D error in mm at C = 200 mm "
          f"({args.decode_volumes} volumes per case)")
    methods = list(next(iter(decoding.values())))
    print(f"{'method':<30}" + "".join(f"{case:>30}" for case in decoding))
    for name in methods:
        cells = [decoding[c][name] for c in decoding]
        print(f"{name:<30}" + "".join(
            f"{r['mean_abs_voxels']:>11.3f} /{r['max_abs_voxels']:6.3f} ({r['mean_3d_mm_c200']:5.2f} mm)"
            for r in cells))

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"device": jax.devices()[0].device_kind, "backend": backend, "machine": platform.machine(),
                  "cpu_cores_used": cores, "malloc_tunables": malloc, "batch": batch, **speed, "decoding": decoding}
        (args.out / "geometry.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out / 'geometry.json'}")


if __name__ == "__main__":
    main(ARGS)
