"""Depth rendering of sphere sets with a pinhole camera, and a depth-sensor model.

Camera coordinates are the data set's world frame: X right, Z depth (positive), Y up or down per `spec.y_up`.
Each sphere is splatted over the pixels of a disc that bounds its perspective silhouette, the ray through each such
pixel is intersected with the sphere exactly, and a z-buffer keeps the nearest hit. All spheres of all frames in a
call are processed as one flat array, so the cost is proportional to the pixels the spheres cover.
"""

from __future__ import annotations

import functools

import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.cameras import pixel_to_world_xyz, world_to_pixel

GRAZING_LIMIT_DEG = 75.0   # drop a pixel whose surface normal is further than this from the ray
EDGE_STEP_MM = 10.0        # a neighbour this much deeper (or background) makes a pixel a depth edge
HOLE_DIAMETER_PX = (2.0, 5.0)
MAX_HOLES = 3
NORMAL_STEP_PX = 3


@functools.lru_cache(maxsize=8)
def _disc_table(max_radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets (dx, dy) of discs of integer radius 0..max_radius, concatenated; with each disc's start, size."""
    dx, dy, starts, sizes = [], [], [], []
    for r in range(max_radius + 1):
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        inside = x * x + y * y <= r * r
        starts.append(sum(map(len, dx)))
        sizes.append(int(inside.sum()))
        dx.append(x[inside])
        dy.append(y[inside])
    return (np.concatenate(dx).astype(np.int32), np.concatenate(dy).astype(np.int32), np.array(starts),
            np.array(sizes))


def _silhouette_radius_px(centres: np.ndarray, radii: np.ndarray, focal: float) -> np.ndarray:
    """Pixels from the projected centre to the farthest point of the sphere's silhouette, plus the rounding of the
    centre to a pixel (< 0.75 px): f (tan(theta + beta) - tan(theta)) with theta the centre's angle off the optical
    axis and beta = asin(radius / distance) the sphere's angular radius."""
    distance = np.linalg.norm(centres, axis=-1)
    theta = np.arccos(centres[..., 2] / distance)
    beta = np.arcsin(radii / distance)
    reach = focal * np.sin(beta) / (np.cos(theta + beta) * np.cos(theta))
    return np.ceil(reach + 0.75).astype(np.int64)


def render_spheres(centres: np.ndarray, radii: np.ndarray, spec: cameras.DatasetSpec = cameras.MSRA
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the union of spheres, for a batch of frames.

    centres (B, S, 3) camera mm, radii (B, S) or (S,). Returns depth (B, H, W) float32 (z of the nearest hit, 0 where
    no sphere is hit) and cosine (B, H, W) float32 of the angle between the ray and the surface normal there.
    """
    centres = np.asarray(centres, np.float64)
    radii = np.broadcast_to(np.asarray(radii, np.float64), centres.shape[:-1])
    if np.any(centres[..., 2] <= radii):
        raise ValueError("every sphere must lie entirely in front of the camera (z > radius)")
    batch, height, width = centres.shape[0], spec.height, spec.width
    focal = max(spec.fx, spec.fy)
    q = centres.reshape(-1, 3)
    rho = radii.reshape(-1)
    u_c, v_c = np.rint(world_to_pixel(q, spec)[:, :2]).astype(np.int64).T
    reach = _silhouette_radius_px(q, rho, focal).reshape(-1)
    table_dx, table_dy, table_start, table_size = _disc_table(int(2 ** np.ceil(np.log2(reach.max() + 1))))
    counts = table_size[reach]
    first = np.cumsum(counts) - counts
    entry = np.arange(counts.sum()) - np.repeat(first - table_start[reach], counts)
    u = np.repeat(u_c, counts) + table_dx[entry]
    v = np.repeat(v_c, counts) + table_dy[entry]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    # Ray d = (a, b, 1) through pixel (u, v); |d x q|^2 avoids the cancellation of (d.q)^2 - |d|^2 |q|^2.
    a, b = (c.astype(np.float32) for c in pixel_to_world_xyz(u, v, 1.0, spec)[:2])
    qx, qy, qz = (np.repeat(q[:, i].astype(np.float32), counts) for i in range(3))
    r = np.repeat(rho.astype(np.float32), counts)
    dd = a * a + b * b + 1.0
    cross2 = (b * qz - qy) ** 2 + (qx - a * qz) ** 2 + (a * qy - b * qx) ** 2
    disc = dd * r * r - cross2
    hit = inside & (disc > 0)
    root = np.sqrt(np.where(hit, disc, 0.0))
    depth = np.where(hit, (a * qx + b * qy + qz - root) / dd, np.inf).astype(np.float32)
    frame = np.repeat(np.arange(batch), centres.shape[1])
    pixel = np.repeat(frame, counts) * (height * width) + np.where(inside, v * width + u, 0)
    zbuf = np.full(batch * height * width, np.inf, np.float32)
    np.minimum.at(zbuf, pixel, depth)
    front = hit & (depth == zbuf[pixel])
    cosine = np.zeros_like(zbuf)
    cosine[pixel[front]] = (root[front] / (np.sqrt(dd[front]) * r[front]))
    zbuf[np.isinf(zbuf)] = 0.0
    return zbuf.reshape(batch, height, width), cosine.reshape(batch, height, width)


def _bounding_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def _depth_edges(depth: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour that is background or more than EDGE_STEP_MM deeper or nearer."""
    padded = np.pad(depth, 1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(depth.shape, bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        edge |= (shifted == 0) | (np.abs(shifted - centre) > EDGE_STEP_MM)
    return edge & (depth > 0)


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-neighbours."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])


def surface_cosine(depth: np.ndarray, cosine: np.ndarray, rays: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Cosine between each pixel's ray and the normal of the depth surface, from central differences over
    +-NORMAL_STEP_PX pixels, where the surface is continuous over that span; the primitive's own `cosine` elsewhere.

    The differences span the bumps between neighbouring spheres, so grazing dropout follows the smooth skin that the
    spheres stand for rather than the bumps. `rays` are the x and y of the ray (x, y, 1) of each column and row.
    """
    s = NORMAL_STEP_PX
    a, b = rays[0][None, :], rays[1][:, None]
    z = np.pad(depth, s)
    xyz = (z * np.pad(a, ((0, 0), (s, s)), mode="edge"), z * np.pad(b, ((s, s), (0, 0)), mode="edge"), z)
    horizontal = [p[s:-s, 2 * s:] - p[s:-s, :-2 * s] for p in xyz]
    vertical = [p[2 * s:, s:-s] - p[:-2 * s, s:-s] for p in xyz]
    normal = (horizontal[1] * vertical[2] - horizontal[2] * vertical[1],
              horizontal[2] * vertical[0] - horizontal[0] * vertical[2],
              horizontal[0] * vertical[1] - horizontal[1] * vertical[0])
    dot = np.abs(normal[0] * a + normal[1] * b + normal[2])
    norms = np.sqrt((normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2) * (a * a + b * b + 1.0))
    continuous = norms > 0
    for side in (z[s:-s, 2 * s:], z[s:-s, :-2 * s], z[2 * s:, s:-s], z[:-2 * s, s:-s]):
        continuous &= (side > 0) & (np.abs(side - depth) < s * EDGE_STEP_MM)
    return np.where(continuous, dot / np.where(continuous, norms, 1.0), cosine)


def axial_noise_mm(depth_mm: np.ndarray) -> np.ndarray:
    """Kinect v1 axial noise, sigma = 1.2 + 1.9 (z - 0.4)^2 mm with z in metres (Nguyen et al. 2012)."""
    return 1.2 + 1.9 * (depth_mm / 1000.0 - 0.4) ** 2


def sensor_model(depth: np.ndarray, cosine: np.ndarray, rng: np.random.Generator,
                 spec: cameras.DatasetSpec = cameras.MSRA) -> np.ndarray:
    """A sensor's view of a clean rendering (H, W): pixels dropped at grazing angles, along depth edges (1-2 px band,
    p 0.3-0.5 per frame) and in a few 2-5 px holes; axial Gaussian noise (1-2 times `axial_noise_mm`); 1 mm steps.
    """
    out = np.zeros(depth.shape, np.float32)
    if not (depth > 0).any():
        return out
    window = _bounding_slices(depth > 0, margin=1)
    z = depth[window]
    rays = pixel_to_world_xyz(np.arange(spec.width)[window[1]], np.arange(spec.height)[window[0]], 1.0, spec)[:2]
    cos = surface_cosine(z, cosine[window], rays)
    keep = (z > 0) & (cos >= np.cos(np.deg2rad(GRAZING_LIMIT_DEG)))
    edges = _depth_edges(z)
    if rng.uniform() < 0.5:
        edges = _grow(edges) & (z > 0)
    keep &= ~(edges & (rng.uniform(size=z.shape) < rng.uniform(0.3, 0.5)))
    rows, cols = np.nonzero(z > 0)
    for _ in range(rng.integers(0, MAX_HOLES + 1)):
        k = rng.integers(rows.size)
        radius = 0.5 * rng.uniform(*HOLE_DIAMETER_PX)
        keep &= (np.arange(z.shape[0])[:, None] - rows[k]) ** 2 + (np.arange(z.shape[1]) - cols[k]) ** 2 > radius ** 2
    noisy = z + rng.uniform(1.0, 2.0) * axial_noise_mm(z) * rng.standard_normal(z.shape)
    out[window] = np.where(keep, np.rint(noisy), 0.0)
    return out
