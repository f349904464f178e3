"""NumPy per-sample reference of the data geometry, laid out like the PyTorch port's `src/v2v_util.py`.

Slow and plain on purpose: float64, one sample at a time, loops where they read more clearly. It follows the port's
structure (generate_coord -> scattering / generate_heatmap_gt, extract_coord_from_output -> warp2continuous), with
the augmentation as c' = s R (c - N/2) + N/2 + t (the port's 96^3 frame is t = 4 - trans, docs/conventions.md) and
two geometries: 'ours' numbers pixels from 0 and floors voxel coordinates; 'port' numbers them from 1
(`depthmap2points` of the port's datasets/msra_hand.py) and truncates (`astype(int32)` in its `scattering`).
Heatmaps are (J, M, M, M) as in the port. Also a small sphere renderer for synthetic test scenes.

The camera maths here is the oracle's own, written apart from `v2v_jax.data.cameras`.
"""

from __future__ import annotations

import numpy as np

from v2v_jax.data.cameras import DatasetSpec

FIRST_PIXEL = {"ours": 0, "port": 1}                # the number of the depth map's first column and row
VOXEL_INDEX = {"ours": np.floor, "port": np.trunc}  # continuous voxel coordinate -> voxel index


def depth_to_points(depth: np.ndarray, spec: DatasetSpec, geometry: str = "ours") -> np.ndarray:
    z = depth.astype(np.float64)
    if spec.background_mm is not None:
        z[z == 0] = spec.background_mm
    first = FIRST_PIXEL[geometry]
    v, u = np.meshgrid(np.arange(first, spec.height + first), np.arange(first, spec.width + first), indexing="ij")
    x = (u - spec.cx) * z / spec.fx
    y = (spec.cy - v) * z / spec.fy if spec.y_up else (v - spec.cy) * z / spec.fy
    return np.stack([x, y, z], axis=-1).reshape(-1, 3)


def generate_coord(points, refpoint, cube_size, cropped_size, scale=1.0, angle=0.0, trans=(0.0, 0.0, 0.0)):
    """World mm -> continuous voxel coordinates: c = (p - r) N/C + N/2, then c' = s R (c - N/2) + N/2 + t."""
    coord = (np.asarray(points, np.float64) - refpoint) * cropped_size / cube_size  # offset from the centre, voxels
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                         [np.sin(angle), np.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    coord = scale * coord @ rotation.T
    return coord + cropped_size / 2 + np.asarray(trans, np.float64)


def scattering(coord, cropped_size, geometry="ours"):
    """Voxel floor(c) ('port': trunc(c)) is occupied when it lies in [0, N) on every axis; other points are dropped."""
    index = VOXEL_INDEX[geometry](coord).astype(np.int64)
    mask = np.all((index >= 0) & (index < cropped_size), axis=1)
    index = index[mask]
    cubic = np.zeros((cropped_size,) * 3)
    cubic[index[:, 0], index[:, 1], index[:, 2]] = 1
    return cubic


def generate_cubic_input(points, refpoint, cube_size, cropped_size, geometry="ours", **aug):
    return scattering(generate_coord(points, refpoint, cube_size, cropped_size, **aug), cropped_size, geometry)


def generate_heatmap_gt(keypoints, refpoint, cube_size, cropped_size, pool_factor=2, std=1.7, **aug):
    """(J, 3) world joints -> (J, M, M, M) Gaussians at the cell centres, the direct (not separable) formula."""
    coord = generate_coord(keypoints, refpoint, cube_size, cropped_size, **aug)
    return heatmaps_from_coord(coord, cropped_size // pool_factor, pool_factor, std)


def heatmaps_from_coord(coord, output_size, pool_factor=2, std=1.7):
    coord = np.asarray(coord, np.float64) / pool_factor
    grid_x, grid_y, grid_z = np.meshgrid(*[np.arange(output_size)] * 3, indexing="ij")
    heatmap = np.zeros((coord.shape[0], output_size, output_size, output_size))
    for i, (xi, yi, zi) in enumerate(coord):
        heatmap[i] = np.exp(-((grid_x + 0.5 - xi) ** 2 + (grid_y + 0.5 - yi) ** 2 + (grid_z + 0.5 - zi) ** 2)
                            / (2 * std ** 2))
    return heatmap


def extract_coord_from_output(output):
    """(..., M, M, M) -> (..., 3) cell centres k + 0.5 of the first maximum (C order)."""
    size = output.shape[-3:]
    flat = output.reshape(-1, np.prod(size))
    index = np.array(np.unravel_index(np.argmax(flat, axis=1), size)).T
    return index.reshape(*output.shape[:-3], 3) + 0.5


def refine_parabola(output, cell):
    """Per-axis log-parabola vertex through the argmax cell and its two neighbours, clamped to +-0.5."""
    size = output.shape[0]
    index = np.floor(cell).astype(int)
    refined = np.asarray(cell, np.float64).copy()
    eps = np.finfo(output.dtype).tiny
    for axis in range(3):
        if not 0 < index[axis] < size - 1:
            continue
        logs = []
        for step in (-1, 0, 1):
            at = index.copy()
            at[axis] += step
            logs.append(np.log(max(float(output[tuple(at)]), eps)))
        curvature = logs[0] - 2 * logs[1] + logs[2]
        if curvature < 0:
            refined[axis] += np.clip((logs[0] - logs[2]) / (2 * curvature), -0.5, 0.5)
    return refined


def refine_window_mean(output, cell, radius):
    """Mean of the cell centres within `radius` cells of the argmax (inside the volume), weighted by max(H, 0)."""
    index = np.floor(cell).astype(int)
    total, moment = 0.0, np.zeros(3)
    for offset in np.ndindex(*(2 * radius + 1,) * 3):
        at = index + np.array(offset) - radius
        if np.all((at >= 0) & (at < output.shape[0])):
            weight = max(float(output[tuple(at)]), 0.0)
            total += weight
            moment += weight * (at + 0.5)
    return moment / total if total > 0 else np.asarray(cell, np.float64)


def soft_argmax(output, beta):
    logits = beta * output.astype(np.float64)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    centres = np.stack(np.meshgrid(*[np.arange(output.shape[0]) + 0.5] * 3, indexing="ij"), axis=-1)
    return (weights[..., None] * centres).reshape(-1, 3).sum(0)


def warp2continuous(coord, refpoint, cube_size, cropped_size):
    """Continuous voxel coordinates -> world mm: p = (c - N/2) C/N + r."""
    return (coord - cropped_size / 2) * cube_size / cropped_size + refpoint


class V2VVoxelization:
    """Per-sample voxels and targets (the port's data transform) and decoding (the port's `evaluate`)."""

    def __init__(self, cubic_size, cropped_size=88, pool_factor=2, std=1.7, geometry="ours"):
        self.cubic_size, self.cropped_size = cubic_size, cropped_size
        self.pool_factor, self.std, self.geometry = pool_factor, std, geometry

    def __call__(self, sample, scale=1.0, angle=0.0, trans=(0.0, 0.0, 0.0)):
        aug = dict(scale=scale, angle=angle, trans=trans)
        points, keypoints, refpoint = sample["points"], sample["keypoints"], sample["refpoint"]
        voxels = generate_cubic_input(points, refpoint, self.cubic_size, self.cropped_size, self.geometry, **aug)
        heatmap = generate_heatmap_gt(keypoints, refpoint, self.cubic_size, self.cropped_size, self.pool_factor,
                                      self.std, **aug)
        return voxels[None], heatmap

    def evaluate(self, heatmaps, refpoints):
        """(B, J, M, M, M), (B, 3) -> (B, J, 3) world mm by argmax."""
        coords = extract_coord_from_output(heatmaps) * self.pool_factor
        return warp2continuous(coords, np.asarray(refpoints)[:, None, :], self.cubic_size, self.cropped_size)


# --- synthetic scenes ------------------------------------------------------------------------------------------

def render_spheres(spec: DatasetSpec, centres, radii) -> np.ndarray:
    """(H, W) float32 depth of opaque spheres (world mm) seen by the data set's camera; 0 where no sphere is hit."""
    v, u = np.meshgrid(np.arange(spec.height), np.arange(spec.width), indexing="ij")
    ray_y = (spec.cy - v) / spec.fy if spec.y_up else (v - spec.cy) / spec.fy
    rays = np.stack([(u - spec.cx) / spec.fx, ray_y, np.ones(u.shape)], axis=-1).reshape(-1, 3)  # z = 1 per ray
    centres, radii = np.asarray(centres, np.float64), np.asarray(radii, np.float64)
    along = rays @ centres.T                                     # (P, S): t * |ray|^2 at the closest approach
    norm2 = np.sum(rays ** 2, axis=1, keepdims=True)
    disc = along ** 2 - norm2 * (np.sum(centres ** 2, axis=1) - radii ** 2)
    depth = np.where(disc >= 0, (along - np.sqrt(np.maximum(disc, 0))) / norm2, np.inf).min(axis=1)
    return np.where(np.isfinite(depth), depth, 0).reshape(spec.height, spec.width).astype(np.float32)


def toy_hand(wrist, rng: np.random.Generator, num_fingers: int = 5):
    """A hand-like set of spheres: returns sphere centres, radii and joints (1 + 4 * num_fingers, 3) in world mm.

    Joint 0 is the wrist under a palm sphere; each finger is a straight chain of 4 joints in a fan, tilted in depth.
    """
    wrist = np.asarray(wrist, np.float64)
    joints, centres, radii = [wrist], [wrist + [0, 25, 0]], [30.0]
    along = np.array([0.0, 20.0, 35.0, 46.0])  # joint positions along a finger from its base, mm
    for finger in range(num_fingers):
        angle = np.deg2rad(-60 + 120 * finger / max(num_fingers - 1, 1) + rng.uniform(-8, 8))
        direction = np.array([np.sin(angle), np.cos(angle), rng.uniform(-0.3, 0.1)])
        direction /= np.linalg.norm(direction)
        base = wrist + 55 * direction
        joints.extend(base + a * direction for a in along)
        for a in np.linspace(0, along[-1], 16):
            centres.append(base + a * direction)
            radii.append(9.0 - 3 * a / along[-1])
    return np.array(centres), np.array(radii), np.array(joints)


def stick_hand(joints, edges, joint_radius: float = 12.0, bone_radius: float = 9.0, spacing: int = 10):
    """Spheres standing for a hand at given joints (J, 3): one on each joint, and `spacing` - 1 along each bone
    (a, b) of `edges`; returns sphere centres and radii."""
    joints, edges = np.asarray(joints, np.float64), np.asarray(edges)
    along = np.linspace(0, 1, spacing + 1)[1:-1, None]
    bones = [joints[a] + along * (joints[b] - joints[a]) for a, b in edges]
    centres = np.concatenate([joints, *bones])
    return centres, np.concatenate([np.full(len(joints), joint_radius), np.full(len(centres) - len(joints),
                                                                                bone_radius)])
