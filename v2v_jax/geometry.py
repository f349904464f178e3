"""Data geometry on the device: depth -> points -> voxels, heatmap targets, and heatmaps -> joints.

Everything is jittable and vmappable with static shapes: a depth image of H x W is always H*W points, and points
outside the cube are masked out of the scatter, never filtered. Coordinates (docs/conventions.md):
- world: millimetres, camera frame of the data set (`DatasetSpec.y_up` decides the sign of Y);
- grid (c'): continuous voxel coordinates of the N^3 input grid, voxel i covers [i, i+1) on each axis;
- heatmap cells (M = N/2 per axis): g = c'/2, cell a has its centre at a + 0.5.
Array axes (0, 1, 2) are world (x, y, z). Computation runs in the wider of float32 and the inputs' dtype.

Two geometries (`GEOMETRIES`) differ in how a depth map becomes voxels: 'ours' numbers pixels from 0 and floors
voxel coordinates; 'port' numbers pixels from 1 and truncates them toward zero, as the public PyTorch port
(dragonbook/V2V-PoseNet-pytorch, datasets/msra_hand.py `depthmap2points` and src/v2v_util.py `scattering`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from v2v_jax.data.cameras import DatasetSpec, pixel_to_world_xyz

SCALE_RANGE = (0.8, 1.2)
MAX_ANGLE_DEG = 40.0
MAX_TRANSLATION_VOXELS = 4.0
POOL_FACTOR = 2
SIGMA = 1.7
OCCUPANCY_DTYPE = jnp.uint8  # 0/1 in one byte: a quarter of float32's memory traffic; the first conv casts it
DECODE_METHODS = ("argmax", "parabola", "window_mean", "soft_argmax")


class Geometry(NamedTuple):
    """How depth pixels become voxels: the number of the first pixel column and row, and the voxel rounding."""

    pixel_origin: int  # pixel (u, v) of the depth array is the camera's (u + o, v + o)
    truncate: bool     # voxel index trunc(c') (points in (-1, 0) land in voxel 0) instead of floor(c')


GEOMETRIES = {"ours": Geometry(pixel_origin=0, truncate=False), "port": Geometry(pixel_origin=1, truncate=True)}


def geometry_of(name: str) -> Geometry:
    try:
        return GEOMETRIES[name]
    except KeyError:
        raise ValueError(f"unknown geometry {name!r}; choose one of {sorted(GEOMETRIES)}") from None


def _float_dtype(*arrays):
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


# --- depth -> points -------------------------------------------------------------------------------------------

def _depth_to_world_xyz(depth, spec: DatasetSpec, dtype, pixel_origin: int = 0):
    """(..., H, W) depth in mm -> world x, y, z, each (..., H, W)."""
    if depth.shape[-2:] != (spec.height, spec.width):
        raise ValueError(f"depth image of shape {depth.shape} does not match {spec.name}'s "
                         f"{spec.height} x {spec.width}")
    z = jnp.asarray(depth).astype(dtype)
    if spec.background_mm is not None:
        z = jnp.where(z == 0, jnp.asarray(spec.background_mm, dtype), z)
    v = jnp.arange(spec.height, dtype=dtype)[:, None]
    u = jnp.arange(spec.width, dtype=dtype)[None, :]
    return pixel_to_world_xyz(u, v, z, spec, pixel_origin)


def depth_to_points(depth: jax.Array, spec: DatasetSpec, dtype=jnp.float32, geometry: str = "ours") -> jax.Array:
    """(H, W) depth in mm -> (H*W, 3) world points; zero depth becomes `spec.background_mm` (None: stays 0)."""
    if depth.ndim != 2:
        raise ValueError(f"depth image of shape {depth.shape} is not one {spec.height} x {spec.width} image")
    xyz = _depth_to_world_xyz(depth, spec, dtype, geometry_of(geometry).pixel_origin)
    return jnp.stack(xyz, axis=-1).reshape(-1, 3)


# --- augmentation and the world <-> grid map -------------------------------------------------------------------

class Augmentation(NamedTuple):
    """One training draw: scale s, rotation angle (radians) about the depth axis, translation t (3,) in voxels."""

    scale: jax.Array
    angle: jax.Array
    translation: jax.Array


def identity_augmentation(dtype=jnp.float32) -> Augmentation:
    return Augmentation(jnp.ones((), dtype), jnp.zeros((), dtype), jnp.zeros((3,), dtype))


def sample_augmentation(key: jax.Array, dtype=jnp.float32,
                        max_translation: float = MAX_TRANSLATION_VOXELS) -> Augmentation:
    """s ~ U[0.8, 1.2), angle ~ U[-40, 40) degrees, t ~ U[-T, T)^3 voxels; the paper's T is 4 voxels of its 88^3
    grid."""
    k_scale, k_angle, k_trans = jax.random.split(key, 3)
    max_angle = np.deg2rad(MAX_ANGLE_DEG)
    return Augmentation(
        jax.random.uniform(k_scale, (), dtype, *SCALE_RANGE),
        jax.random.uniform(k_angle, (), dtype, -max_angle, max_angle),
        jax.random.uniform(k_trans, (3,), dtype, -max_translation, max_translation))


def _rotate_xy(x, y, angle, inverse=False):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    if inverse:
        sin = -sin
    return cos * x - sin * y, sin * x + cos * y


def _world_to_grid_xyz(xyz, center, cube_mm, grid_size: int, aug: Augmentation | None):
    """`world_to_grid` on the components (x, y, z) of the points; `center` (..., 3) and `aug` broadcast to them."""
    dtype = _float_dtype(*xyz, center)
    center, voxels_per_mm = jnp.asarray(center, dtype), jnp.asarray(grid_size / cube_mm, dtype)
    d = [(jnp.asarray(p, dtype) - center[..., i]) * voxels_per_mm for i, p in enumerate(xyz)]
    if aug is None:
        return tuple(di + grid_size / 2 for di in d)
    scale, translation = jnp.asarray(aug.scale, dtype), jnp.asarray(aug.translation, dtype)
    rotated = (*_rotate_xy(d[0], d[1], jnp.asarray(aug.angle, dtype)), d[2])
    return tuple(scale * r + grid_size / 2 + translation[..., i] for i, r in enumerate(rotated))


def world_to_grid(points, center, cube_mm, grid_size: int, aug: Augmentation | None = None) -> jax.Array:
    """(..., 3) world mm -> continuous voxel coordinates c' = s R(theta) (c - N/2) + N/2 + t, c = (p - r) N/C + N/2.

    The offset p - r is formed first, so its rounding error is relative to the offset, not to |p|.
    """
    xyz = (points[..., 0], points[..., 1], points[..., 2])
    return jnp.stack(_world_to_grid_xyz(xyz, center, cube_mm, grid_size, aug), axis=-1)


def grid_to_world(coords, center, cube_mm, grid_size: int, aug: Augmentation | None = None) -> jax.Array:
    """Inverse of `world_to_grid`: p = r + R(-theta)((c' - N/2 - t) / s) C/N."""
    dtype = _float_dtype(coords, center)
    d = jnp.asarray(coords, dtype) - grid_size / 2
    if aug is not None:
        d = (d - jnp.asarray(aug.translation, dtype)) / jnp.asarray(aug.scale, dtype)
        x, y = _rotate_xy(d[..., 0], d[..., 1], jnp.asarray(aug.angle, dtype), inverse=True)
        d = jnp.stack([x, y, d[..., 2]], axis=-1)
    return d * jnp.asarray(cube_mm / grid_size, dtype) + jnp.asarray(center, dtype)


def _occupancy(xyz, grid_size: int, batch_shape: tuple[int, ...], dtype, truncate: bool = False) -> jax.Array:
    """Grid coordinates as components (x, y, z), each of shape batch_shape + point axes -> batch_shape + (N, N, N).

    The batch is folded into one flat scatter, which XLA runs fastest on CPU and which reshapes to any
    (..., N, N, N[, 1]) without a copy (a vmapped scatter is about half as fast and copies to add a channel axis).
    """
    n, volumes = grid_size, math.prod(batch_shape)
    if volumes * n ** 3 >= 2 ** 31:
        raise ValueError(f"{volumes} grids of {n}^3 voxels overflow int32 indices; voxelise in smaller batches")
    x, y, z = xyz
    if truncate:  # 0 <= trunc(c) < N, and trunc(c) = floor(max(c, 0)) there
        inside = (x > -1) & (x < n) & (y > -1) & (y < n) & (z > -1) & (z < n)
        xyz = [jnp.maximum(c, 0) for c in xyz]
    else:  # 0 <= floor(c) < N
        inside = (x >= 0) & (x < n) & (y >= 0) & (y < n) & (z >= 0) & (z < n)  # NaN is outside
    i, j, k = [jnp.floor(jnp.where(inside, c, 0)).astype(jnp.int32) for c in xyz]
    volume = jnp.arange(volumes, dtype=jnp.int32).reshape(batch_shape + (1,) * (x.ndim - len(batch_shape)))
    flat = jnp.where(inside, ((volume * n + i) * n + j) * n + k, volumes * n ** 3)  # past the end: dropped
    grid = jnp.zeros((volumes * n ** 3,), dtype).at[flat.reshape(-1)].set(1, mode="drop")
    return grid.reshape(*batch_shape, n, n, n)


def voxelize_grid_coords(coords: jax.Array, grid_size: int, dtype=OCCUPANCY_DTYPE, geometry: str = "ours"
                         ) -> jax.Array:
    """(..., P, 3) continuous voxel coordinates -> (..., N, N, N) occupancy: voxel floor(c') is 1 where
    0 <= floor(c') < N on every axis, 0 elsewhere (geometry 'port': trunc(c') instead of floor(c'))."""
    return _occupancy((coords[..., 0], coords[..., 1], coords[..., 2]), grid_size, coords.shape[:-2], dtype,
                      geometry_of(geometry).truncate)


def voxelize(points, center, cube_mm, grid_size: int, aug: Augmentation | None = None,
             dtype=OCCUPANCY_DTYPE, geometry: str = "ours") -> jax.Array:
    """(P, 3) world points -> (N, N, N) occupancy of the cube of side `cube_mm` around `center`.

    float32 and float64 agree except for points within rounding of a voxel face (tests/test_geometry.py).
    """
    coords = world_to_grid(points, center, cube_mm, grid_size, aug)
    return voxelize_grid_coords(coords, grid_size, dtype, geometry)


def _computed_once(augs: Augmentation) -> Augmentation:
    """`augs` (one per sample) unchanged, as the output of a matrix product with the identity (exact for finite
    values, up to the sign of a zero).

    XLA:CPU fuses the operations that turn random bits into these draws into their consumers; in the voxel
    scatter's flat loop over B*H*W points it then redoes them for every point, unvectorised (encoding ~3x slower,
    bench/geometry.py). It never fuses a dot into its consumers, so behind one they are computed once.
    """
    flat = jnp.concatenate([augs.scale[:, None], augs.angle[:, None], augs.translation], axis=1)
    flat = jnp.matmul(flat, jnp.eye(flat.shape[1], dtype=flat.dtype), precision=jax.lax.Precision.HIGHEST)
    return Augmentation(flat[:, 0], flat[:, 1], flat[:, 2:])


def _per_sample(tree, point_axes: int):
    """Leaves (B, ...) -> (B, 1 x point_axes, ...): one value per sample, broadcast over its points."""
    return jax.tree.map(lambda a: a.reshape(a.shape[:1] + (1,) * point_axes + a.shape[1:]), tree)


def _encode(depths, centers, joints, augs: Augmentation | None, spec, grid_size, cube_mm, dtype, geometry):
    """The batched encoding, given one augmentation per sample (leading axis B) or None."""
    cube_mm = spec.cube_mm if cube_mm is None else cube_mm
    augs = None if augs is None else _computed_once(augs)
    pixel_origin, truncate = geometry_of(geometry)
    # Pixels stay (B, H, W) components: as stacked (B, H*W, 3) points the encoding took 2.6x longer on CPU.
    points = _depth_to_world_xyz(depths, spec, jnp.float32, pixel_origin)
    pixels = _world_to_grid_xyz(points, _per_sample(centers, 2), cube_mm, grid_size, _per_sample(augs, 2))
    voxels = _occupancy(pixels, grid_size, depths.shape[:1], dtype, truncate)
    joint_coords = world_to_grid(joints, _per_sample(centers, 1), cube_mm, grid_size, _per_sample(augs, 1))
    return voxels[..., None], joint_coords


def encode_sample(depth, center, joints, key: jax.Array | None, spec: DatasetSpec, grid_size: int = 88,
                  cube_mm: float | None = None, dtype=OCCUPANCY_DTYPE, geometry: str = "ours"
                  ) -> tuple[jax.Array, jax.Array]:
    """Depth (H, W), centre (3,), joints (J, 3) -> voxels (N, N, N, 1) of `dtype` and joint grid coordinates c'
    (J, 3).

    `key` None means no augmentation (evaluation); otherwise one draw shared by the voxels and the joints.
    `geometry` names the pixel origin and voxel rounding (`GEOMETRIES`); the joints' coordinates do not depend on it.
    """
    aug = None if key is None else jax.tree.map(lambda x: x[None], sample_augmentation(key))
    voxels, coords = _encode(depth[None], jnp.asarray(center)[None], jnp.asarray(joints)[None], aug, spec,
                             grid_size, cube_mm, dtype, geometry)
    return voxels[0], coords[0]


def encode_batch(depths, centers, joints, key: jax.Array | None, spec: DatasetSpec, grid_size: int = 88,
                 cube_mm: float | None = None, dtype=OCCUPANCY_DTYPE, geometry: str = "ours",
                 max_translation: float = MAX_TRANSLATION_VOXELS) -> tuple[jax.Array, jax.Array]:
    """Batched `encode_sample`: (B, H, W), (B, 3), (B, J, 3) -> (B, N, N, N, 1), (B, J, 3).

    Sample b draws its augmentation with `jax.random.split(key, B)[b]` (translations up to `max_translation`
    voxels); key None: no augmentation.
    """
    draw = functools.partial(sample_augmentation, max_translation=max_translation)
    augs = None if key is None else jax.vmap(draw)(jax.random.split(key, depths.shape[0]))
    return _encode(depths, centers, joints, augs, spec, grid_size, cube_mm, dtype, geometry)


# --- heatmap targets and loss ----------------------------------------------------------------------------------

def gaussian_heatmaps(joint_grid_coords, out_size: int = 44, sigma: float = SIGMA, dtype=jnp.float32) -> jax.Array:
    """(J, 3) grid coordinates c' -> (M, M, M, J) targets exp(-|cell centre - c'/2|^2 / (2 sigma^2)), separable."""
    g = jnp.asarray(joint_grid_coords, dtype) / POOL_FACTOR
    centres = jnp.arange(out_size, dtype=dtype) + 0.5
    profiles = jnp.exp(-jnp.square(centres[:, None, None] - g[None]) / (2 * sigma ** 2))  # (M, J, 3)
    gx, gy, gz = profiles[..., 0], profiles[..., 1], profiles[..., 2]
    return gx[:, None, None, :] * gy[None, :, None, :] * gz[None, None, :, :]


def heatmap_mse(pred: jax.Array, joint_grid_coords: jax.Array, sigma: float = SIGMA) -> jax.Array:
    """Mean squared error over B*M^3*J against targets built here, in the wider of float32 and pred's dtype."""
    out_size = pred.shape[1]
    if pred.ndim != 5 or pred.shape[1:4] != (out_size,) * 3 or pred.shape[4] != joint_grid_coords.shape[1]:
        raise ValueError(f"heatmaps of shape {pred.shape} do not fit joints of shape {joint_grid_coords.shape}")
    dtype = _float_dtype(pred)
    targets = jax.vmap(lambda c: gaussian_heatmaps(c, out_size, sigma, dtype))(joint_grid_coords)
    return jnp.mean(jnp.square(pred.astype(dtype) - targets))


def integral_l1(pred: jax.Array, joint_grid_coords: jax.Array, beta: float) -> jax.Array:
    """Mean |soft-argmax(pred) - c'| over B*J*3, in input voxels: the integral regression loss of Sun et al. 2018
    ("Integral Human Pose Regression"), the expectation of each joint's position under softmax(beta H), trained
    directly against the joint, so the heatmaps learn sub-cell positions."""
    coords = decode_grid_coords(pred, "soft_argmax", beta=beta, dtype=_float_dtype(pred))
    return jnp.mean(jnp.abs(coords - joint_grid_coords.astype(coords.dtype)))


def zero_output_loss(joint_grid_coords, out_size: int, sigma: float = SIGMA, dtype=jnp.float32) -> jax.Array:
    """`heatmap_mse` of an all-zero output, mean(H^2) over the targets: where a network with dead outputs stays.

    For a joint away from the border each target sums to (sqrt(pi) sigma)^3 in H^2, so the loss is that over M^3:
    3.21e-4 at M = 44 (the paper's 88^3 input).
    """
    coords = jnp.asarray(joint_grid_coords, dtype)
    return heatmap_mse(jnp.zeros((coords.shape[0], out_size, out_size, out_size, coords.shape[1]), dtype), coords,
                       sigma)


# --- decoding --------------------------------------------------------------------------------------------------

def _window(volume, index, radius):
    """The (2r+1)^3 values around `index` (indices clipped to the volume) and a mask of those inside it."""
    offsets = jnp.arange(-radius, radius + 1)
    axes = index[:, None] + offsets[None, :]  # (3, 2r+1)
    inside = (axes >= 0) & (axes < volume.shape[0])
    axes = jnp.clip(axes, 0, volume.shape[0] - 1)
    values = volume[axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return values, mask, axes


def _parabola_offset(volume, index, eps):
    """Per-axis vertex of the parabola through log H at the argmax and its two neighbours, clamped to +-0.5."""
    values, mask, _ = _window(volume, index, 1)
    logs = jnp.log(jnp.maximum(values, eps))
    lines = jnp.stack([logs[:, 1, 1], logs[1, :, 1], logs[1, 1, :]])  # (3, 3): axis, (minus, centre, plus)
    interior = jnp.stack([mask[0, 1, 1] & mask[2, 1, 1], mask[1, 0, 1] & mask[1, 2, 1], mask[1, 1, 0] & mask[1, 1, 2]])
    minus, centre, plus = lines[:, 0], lines[:, 1], lines[:, 2]
    curvature = minus - 2 * centre + plus
    ok = interior & (curvature < 0)
    delta = (minus - plus) / (2 * jnp.where(ok, curvature, -1))
    return jnp.where(ok, jnp.clip(delta, -0.5, 0.5), 0)


def _window_mean(volume, index, radius):
    """Weighted mean of cell centres with weights max(H, 0) in a window around the argmax."""
    values, mask, axes = _window(volume, index, radius)
    weights = jnp.where(mask, jnp.maximum(values, 0), 0)
    total = weights.sum()
    marginals = jnp.stack([weights.sum((1, 2)), weights.sum((0, 2)), weights.sum((0, 1))])  # (3, 2r+1)
    mean = (marginals * (axes + 0.5)).sum(-1) / jnp.where(total > 0, total, 1)
    return jnp.where(total > 0, mean, index + 0.5)


def _soft_argmax(volume, beta):
    weights = jax.nn.softmax(beta * volume.reshape(-1)).reshape(volume.shape)
    centres = jnp.arange(volume.shape[0], dtype=weights.dtype) + 0.5
    marginals = jnp.stack([weights.sum((1, 2)), weights.sum((0, 2)), weights.sum((0, 1))])
    return marginals @ centres


def _decode_volume(volume, method, radius, beta, dtype):
    volume = volume.astype(_float_dtype(volume))  # refinements in at least float32, also for bfloat16 outputs
    index = jnp.stack(jnp.unravel_index(jnp.argmax(volume), volume.shape))  # C order, first maximum
    if method == "argmax":
        cell = index + 0.5
    elif method == "parabola":
        cell = index + 0.5 + _parabola_offset(volume, index, jnp.finfo(volume.dtype).tiny)
    elif method == "window_mean":
        cell = _window_mean(volume, index, radius)
    else:
        cell = _soft_argmax(volume, beta)
    return cell.astype(dtype) * POOL_FACTOR


def decode_grid_coords(heatmaps: jax.Array, method: str = "argmax", *, radius: int = 3, beta: float = 30.0,
                       dtype=jnp.float32) -> jax.Array:
    """(B, M, M, M, J) heatmaps -> (B, J, 3) grid coordinates c' = 2 g.

    method: 'argmax' (the original's, g = k + 0.5), 'parabola' (per-axis log-parabola vertex), 'window_mean'
    (weighted mean of max(H, 0) within `radius` cells of the argmax) or 'soft_argmax' (expectation under
    softmax(beta H) over the whole volume).
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {DECODE_METHODS}")
    volumes = jnp.moveaxis(heatmaps, -1, 1)
    decode = functools.partial(_decode_volume, method=method, radius=radius, beta=beta, dtype=dtype)
    return jax.vmap(jax.vmap(decode))(volumes)


def decode_heatmaps(heatmaps: jax.Array, centers: jax.Array, cube_mm: float, grid_size: int = 88,
                    method: str = "argmax", **options) -> jax.Array:
    """(B, M, M, M, J) heatmaps, (B, 3) centres -> (B, J, 3) world mm (in the wider of float32 and centres' dtype).

    argmax: c = (k + 0.5) * 2, p = (c - N/2) C/N + r; `options` go to `decode_grid_coords`.
    """
    dtype = _float_dtype(centers)
    coords = decode_grid_coords(heatmaps, method, dtype=dtype, **options)
    return grid_to_world(coords, jnp.asarray(centers, dtype)[:, None, :], cube_mm, grid_size)
