"""The public PyTorch port's data geometry (dragonbook/V2V-PoseNet-pytorch), transcribed step by step in float64, to
check the 'port' geometry of `v2v_jax.geometry` and `geometry_ref` against, and to measure how far ours is from it.

Transcribed from datasets/msra_hand.py (`pixel2world`, `depthmap2points`, the background of `load_depthmap`) and
src/v2v_util.py (`generate_coord`, `scattering`). The port stores its points in float32; that rounding is the
port's precision, not its formula, and is left to the caller (tests/test_geometry_port.py).
"""

from __future__ import annotations

import numpy as np

N = 88           # the port's `cropped_size`
PORT_FRAME = 96  # its `original_size`: it augments inside a 96^3 frame and crops the 88^3 grid out of it


def port_points(depth, spec, background):
    """Pixels numbered from 1 on both axes, centred on w/2 and h/2; y up (the port's only data set is MSRA)."""
    depth = np.where(depth == 0, background, depth).astype(np.float64)
    h, w = depth.shape
    col, row = np.meshgrid(np.arange(w) + 1, np.arange(h) + 1)
    x = (col - w / 2) * depth / spec.fx
    y = (h / 2 - row) * depth / spec.fy
    return np.stack([x, y, depth], axis=-1).reshape(-1, 3)


def port_coord(points, refpoint, cubic_size, new_size=100.0, angle=0.0, trans=None):
    """World mm -> coordinates of the 88^3 grid; `trans` None is the port's test mode, (96 - 88) / 2 = 4."""
    trans = (PORT_FRAME - N) / 2 if trans is None else np.asarray(trans, np.float64)
    coord = (np.asarray(points, np.float64) - refpoint) / (cubic_size / 2)  # [-1, 1]
    coord = (coord + 1) / (2 / N)                                           # [0, 88]
    coord = coord + (PORT_FRAME / 2 - N / 2)                                # into the 96^3 frame
    scale = new_size / 100
    if new_size < 100:
        coord = coord * scale + PORT_FRAME / 2 * (1 - scale)
    elif new_size > 100:
        coord = coord * scale - PORT_FRAME / 2 * (scale - 1)
    if angle != 0:
        x, y = coord[:, 0] - PORT_FRAME / 2, coord[:, 1] - PORT_FRAME / 2
        coord = coord.copy()
        coord[:, 0] = x * np.cos(angle) - y * np.sin(angle) + PORT_FRAME / 2
        coord[:, 1] = x * np.sin(angle) + y * np.cos(angle) + PORT_FRAME / 2
    return coord - trans


def port_scatter(coord):
    """Occupancy of the 88^3 grid: voxel trunc(c) (`astype(int32)`, toward zero) where it lies in [0, 88)."""
    index = coord.astype(np.int32)
    keep = np.all((index >= 0) & (index < N), axis=1)
    cubic = np.zeros((N, N, N))
    cubic[tuple(index[keep].T)] = 1
    return cubic


def port_voxels(depth, spec, refpoint, cube_mm, **aug):
    """Depth map -> the port's 88^3 occupancy around `refpoint`; `aug`: new_size, angle, trans as `port_coord`."""
    return port_scatter(port_coord(port_points(depth, spec, spec.background_mm), refpoint, cube_mm, **aug))
