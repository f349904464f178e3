"""ITOP body pose data set (Haque et al., ECCV 2016), side (the paper's front) or top view.

Files in `root`: `ITOP_{view}_{split}_depth_map.h5` (key `data`, (N, 240, 320), metres) and
`ITOP_{view}_{split}_labels.h5` (key `real_world_coordinates`, (N, 15, 3), metres; optional `is_valid` (N,) and
`id` (N,) byte strings). Centres: `ITOP_{view}_center_{split}.txt` in `centers_dir`, metres or `invalid`.

Units: everything is converted to mm on reading, so ITOP frames look like every other data set's. Depth is
`float32(file value) * float32(1000)`; joints and centres are scaled in float64, then stored as float32.
Frames whose centre is invalid or whose `is_valid` is 0 are skipped and counted separately.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.base import UNREADABLE, DataError, DepthDataset, check_depth, require_file
from v2v_jax.data.centers import centers_for

MM_PER_M = 1000.0
VIEWS = ("side", "top")


def _dataset(file: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if key not in file:
        raise DataError(f"{path}: no dataset {key!r} (found {sorted(file.keys())})")
    return file[key]


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"{path}: cannot read HDF5 ({type(error).__name__}: {error})")


def _open_h5(path: Path) -> h5py.File:
    require_file(path, "ITOP HDF5")
    try:
        return h5py.File(path, "r")
    except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
        raise _unreadable(path, error) from None


def _read_h5(path: Path, read):
    """read(file) on the HDF5 file at `path`; any failure to parse it becomes a DataError naming the file."""
    with _open_h5(path) as file:
        try:
            return read(file)
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
            raise _unreadable(path, error) from None


class ITOP(DepthDataset):
    spec = cameras.ITOP

    def __init__(self, root, centers_dir=None, view: str = "side", split: str = "train", on_bad_frame: str = "error",
                 cube_mm: float | None = None):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.view, self.split = Path(root), view, split
        self.depth_path = self.root / f"ITOP_{view}_{split}_depth_map.h5"
        labels_path = self.root / f"ITOP_{view}_{split}_labels.h5"

        def read_labels(labels):
            joints = _dataset(labels, "real_world_coordinates", labels_path)[()] * MM_PER_M
            num = len(joints)
            marked_valid = labels["is_valid"][()].astype(bool) if "is_valid" in labels else np.ones(num, bool)
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in labels["id"][()]] if "id" in labels \
                else [f"{i:06d}" for i in range(num)]
            return joints, num, marked_valid, ids

        joints, num, marked_valid, ids = _read_h5(labels_path, read_labels)
        if joints.shape[1:] != (self.spec.num_joints, 3):
            raise DataError(f"{labels_path}: real_world_coordinates has shape {joints.shape}, "
                            f"expected (N, {self.spec.num_joints}, 3)")
        if len(marked_valid) != num or len(ids) != num:
            raise DataError(f"{labels_path}: is_valid/id lengths ({len(marked_valid)}, {len(ids)}) differ from the "
                            f"{num} frames of real_world_coordinates")
        shape = _read_h5(self.depth_path, lambda depth: _dataset(depth, "data", self.depth_path).shape)
        if shape != (num, self.spec.height, self.spec.width):
            raise DataError(f"{self.depth_path}: data has shape {shape}, expected ({num}, {self.spec.height}, "
                            f"{self.spec.width}) to match {labels_path.name}")
        centers_file = None if centers_dir is None else Path(centers_dir) / f"ITOP_{view}_center_{split}.txt"
        centers = centers_for(centers_file, joints, labels_path, scale=MM_PER_M)
        self._file, self._pid = None, None
        self._set_frames(range(num), [f"{view}/{split}/{i}" for i in ids], centers, joints, marked_valid,
                         centers_source=centers_file or labels_path, on_bad_frame=on_bad_frame, cube_mm=cube_mm)

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def read_depth(self, i: int) -> np.ndarray:
        if self._pid != os.getpid():  # one handle per process: h5py handles must not cross a fork
            self._file, self._pid = _open_h5(self.depth_path), os.getpid()
        try:
            depth = self._file["data"][self.sources[i]].astype(np.float32) * np.float32(MM_PER_M)
        except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
            raise DataError(f"{self.source_name(i)}: cannot read depth ({type(error).__name__}: {error})",
                            UNREADABLE) from None
        return check_depth(depth, self.source_name(i), (self.spec.height, self.spec.width))

    def source_name(self, i: int) -> str:
        return f"{self.depth_path}[{self.sources[i]}]"
