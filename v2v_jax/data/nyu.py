"""NYU hand pose data set (Tompson et al., TOG 2014).

`{train,test}/joint_data.mat`, key `joint_xyz` of shape (kinect, frame, 36, 3), world mm, y up: kinect 1 and the
14 evaluated joints (`cameras.NYU_EVAL_JOINT_IDS`). Depth `{train,test}/depth_1_%07d.png` (1-based), an RGB PNG
with depth mm = B + 256 G.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from v2v_jax.data import cameras
from v2v_jax.data.base import DataError, DepthDataset, check_depth, require_dir, require_file, require_files
from v2v_jax.data.centers import centers_for
from v2v_jax.data.images import read_png_nyu

NUM_RAW_JOINTS = 36


def read_joint_data(path: Path) -> np.ndarray:
    """(N, 14, 3) float32 world mm: kinect 1, the evaluated joints."""
    path = require_file(path, "joint label")
    try:
        mat = scipy.io.loadmat(path, variable_names=["joint_xyz"])
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 files are not supported; save it as v7 (-v7)") from None
    except Exception as error:  # noqa: BLE001 - scipy raises many types on a damaged file
        raise DataError(f"{path}: cannot read .mat ({type(error).__name__}: {error})") from None
    if "joint_xyz" not in mat:
        raise DataError(f"{path}: no variable 'joint_xyz'")
    xyz = mat["joint_xyz"]
    if not np.issubdtype(xyz.dtype, np.number):
        raise DataError(f"{path}: joint_xyz holds {xyz.dtype}, not numbers")
    if xyz.ndim != 4 or xyz.shape[0] < 1 or xyz.shape[2:] != (NUM_RAW_JOINTS, 3):
        raise DataError(f"{path}: joint_xyz has shape {xyz.shape}, expected (kinects, frames, 36, 3)")
    joints = xyz[0][:, cameras.NYU_EVAL_JOINT_IDS].astype(np.float32)
    if not np.isfinite(joints).all():
        raise DataError(f"{path}: joint_xyz contains NaN or infinite values")
    return joints


class NYU(DepthDataset):
    spec = cameras.NYU

    def __init__(self, root, centers_file=None, split: str = "train", on_bad_frame: str = "error",
                 cube_mm: float | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.split = Path(root), split
        folder = require_dir(self.root / split, f"NYU {split}")
        joints = read_joint_data(folder / "joint_data.mat")
        names = [f"depth_1_{i + 1:07d}.png" for i in range(len(joints))]
        paths = [folder / n for n in names]
        require_files(paths, "depth")
        centers = centers_for(centers_file, joints, folder / "joint_data.mat")
        self._set_frames(paths, [f"{split}/{n[:-4]}" for n in names], centers, joints,
                         centers_source=centers_file or folder / "joint_data.mat", on_bad_frame=on_bad_frame,
                         cube_mm=cube_mm)

    def read_depth(self, i: int) -> np.ndarray:
        path = self.sources[i]
        shape = (self.spec.height, self.spec.width)
        return check_depth(read_png_nyu(path, shape), path, shape)
