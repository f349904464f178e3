"""Per-data-set constants (camera intrinsics, y-axis direction, cube size, background depth, joints) and the one
home of the pinhole camera maths, pixel <-> world.

World coordinates are millimetres for every data set, ITOP included (its files are in metres; loaders convert).
Pixel u is the column and v the row of the depth map, numbered from `pixel_origin` (0 here; 1 in the PyTorch port's
`depthmap2points`, docs/conventions.md). The functions take NumPy or JAX arrays and return the same kind, so the
data readers and loader workers use them without importing JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    y_up: bool                  # True: Y = (cy - v) z / fy; False: Y = (v - cy) z / fy
    cube_mm: float              # side C of the cube around the reference centre
    background_mm: float | None  # depth given to zero pixels; None: zero pixels stay at z = 0 (ITOP)
    joint_names: tuple[str, ...]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


def _fingers(parts: tuple[str, ...], fingers: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{f}_{p}" for f in fingers for p in parts)


MSRA = DatasetSpec(
    "msra", 320, 240, 241.42, 241.42, 160.0, 120.0, True, 200.0, 700.0,
    ("wrist",) + _fingers(("mcp", "pip", "dip", "tip"), ("index", "middle", "ring", "little", "thumb")))

ICVL = DatasetSpec(
    "icvl", 320, 240, 241.42, 241.42, 160.0, 120.0, False, 200.0, 600.0,
    ("palm",) + _fingers(("root", "mid", "tip"), ("thumb", "index", "middle", "ring", "pinky")))

NYU = DatasetSpec(
    "nyu", 640, 480, 588.036865, 587.075073, 320.0, 240.0, True, 250.0, 1200.0,
    ("pinky_tip", "pinky_mid", "ring_tip", "ring_mid", "middle_tip", "middle_mid", "index_tip", "index_mid",
     "thumb_tip", "thumb_mid", "thumb_root", "wrist_back", "wrist", "palm"))

HANDS2017 = DatasetSpec(
    "hands2017", 640, 480, 475.065948, 475.065857, 315.944855, 245.287079, False, 250.0, 1500.0,
    ("wrist", "thumb_mcp", "index_mcp", "middle_mcp", "ring_mcp", "pinky_mcp")
    + _fingers(("pip", "dip", "tip"), ("thumb", "index", "middle", "ring", "pinky")))

ITOP = DatasetSpec(
    "itop", 320, 240, 1 / 0.0035, 1 / 0.0035, 160.0, 120.0, True, 2000.0, None,
    ("head", "neck", "r_shoulder", "l_shoulder", "r_elbow", "l_elbow", "r_hand", "l_hand", "torso",
     "r_hip", "l_hip", "r_knee", "l_knee", "r_foot", "l_foot"))

DATASETS = {s.name: s for s in (MSRA, ICVL, NYU, HANDS2017, ITOP)}

# Intrinsics of the community evaluator (AHPE compute_error.py) for result files in pixel u v d.
EVAL_INTRINSICS = {  # fx, fy, cx, cy
    "icvl": (240.99, 240.96, 160.0, 120.0),
    "nyu": (588.03, -587.07, 320.0, 240.0),
    "msra": (241.42, 241.42, 160.0, 120.0),
}

NYU_EVAL_JOINT_IDS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
MSRA_GESTURES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "I", "IP", "L", "MP", "RP", "T", "TIP", "Y")
MSRA_FRAMES_PER_SUBJECT = (8499, 8499, 8406, 8498, 8500, 8497, 8498, 8498, 8496)


def intrinsics(camera) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) with fy negative for y-up data sets, the sign convention of `EVAL_INTRINSICS`.

    `camera` is a DatasetSpec or such a 4-tuple already.
    """
    if isinstance(camera, DatasetSpec):
        return camera.fx, -camera.fy if camera.y_up else camera.fy, camera.cx, camera.cy
    fx, fy, cx, cy = camera
    return fx, fy, cx, cy


def _namespace(array):
    return array.__array_namespace__() if hasattr(array, "__array_namespace__") else np


def pixel_to_world_xyz(u, v, d, camera, pixel_origin: int = 0):
    """Components: x = (u + o - cx) d / fx, y = (v + o - cy) d / fy, z = d, with o = `pixel_origin`."""
    fx, fy, cx, cy = intrinsics(camera)
    return (u + pixel_origin - cx) * d / fx, (v + pixel_origin - cy) * d / fy, d


def pixel_to_world(uvd, camera, pixel_origin: int = 0):
    """(..., 3) pixel u (column), v (row), depth d -> world x, y, z; NumPy in gives NumPy out (float64 stays)."""
    xyz = pixel_to_world_xyz(uvd[..., 0], uvd[..., 1], uvd[..., 2], camera, pixel_origin)
    return _namespace(uvd).stack(xyz, axis=-1)


def world_to_pixel(xyz, camera, pixel_origin: int = 0):
    """Inverse of `pixel_to_world`: u = x fx / z + cx - o, v = y fy / z + cy - o."""
    fx, fy, cx, cy = intrinsics(camera)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return _namespace(xyz).stack([x * fx / z + cx - pixel_origin, y * fy / z + cy - pixel_origin, z], axis=-1)


def get(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}") from None
