"""ICVL hand posture data set (Tang et al., CVPR 2014).

Labels: `Training/labels.txt` (train) and `Testing/test_seq_1.txt`, `Testing/test_seq_2.txt` (test, in that order),
one line per frame `path u1 v1 d1 ... u16 v16 d16` in pixels and mm; converted to world mm with the data set's
intrinsics (241.42, y down). Depth: `Training/Depth/<path>` or `Testing/Depth/<path>`, PNG uint16 mm, or with
`depth_format='bin'` the headerless float32 H x W `.bin` of L's PNG2BIN.m beside it (same stem).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.base import (UNREADABLE, DataError, DepthDataset, check_depth, parse_rows, read_text,
                               require_file, require_files, to_floats)
from v2v_jax.data.centers import centers_for
from v2v_jax.data.images import read_png_uint16

SPLITS = {"train": ("Training", ("labels.txt",)), "test": ("Testing", ("test_seq_1.txt", "test_seq_2.txt"))}


def read_labels(path: Path, spec: cameras.DatasetSpec) -> tuple[list[str], np.ndarray]:
    """Image paths and (N, J, 3) world-mm joints of one ICVL label file."""
    path = require_file(path, "label")
    rows = parse_rows(path, read_text(path), 1 + 3 * spec.num_joints)
    uvd = to_floats(path, [row[1:] for row in rows]).reshape(len(rows), spec.num_joints, 3)
    if not np.isfinite(uvd).all():
        raise DataError(f"{path}: joint labels contain NaN or infinite values")
    return [row[0] for row in rows], cameras.pixel_to_world(uvd, spec).astype(np.float32)


def read_depth_raw(path, shape: tuple[int, int]) -> np.ndarray:
    """A headerless float32 H x W `.bin` (L's PNG2BIN.m output)."""
    data = Path(path).read_bytes()
    expected = shape[0] * shape[1] * 4
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, expected {expected} for a {shape[1]}x{shape[0]} float32 image",
                        UNREADABLE)
    return np.frombuffer(data, "<f4").reshape(shape).astype(np.float32)


class ICVL(DepthDataset):
    spec = cameras.ICVL

    def __init__(self, root, centers_file=None, split: str = "train", depth_format: str = "png",
                 on_bad_frame: str = "error", cube_mm: float | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if depth_format not in ("png", "bin"):
            raise ValueError(f"depth_format must be 'png' or 'bin', got {depth_format!r}")
        self.root, self.split, self.depth_format = Path(root), split, depth_format
        folder, label_files = SPLITS[split]
        names, joints = [], []
        for label_file in label_files:
            file_names, file_joints = read_labels(self.root / folder / label_file, self.spec)
            names += file_names
            joints.append(file_joints)
        joints = np.concatenate(joints)
        suffix = ".png" if depth_format == "png" else ".bin"
        paths = [(self.root / folder / "Depth" / n).with_suffix(suffix) for n in names]
        require_files(paths, "depth")
        centers = centers_for(centers_file, joints, self.root / folder)
        self._set_frames(paths, names, centers, joints, centers_source=centers_file or self.root / folder,
                         on_bad_frame=on_bad_frame, cube_mm=cube_mm)

    def read_depth(self, i: int) -> np.ndarray:
        shape = (self.spec.height, self.spec.width)
        path = self.sources[i]
        depth = read_png_uint16(path, shape) if self.depth_format == "png" else read_depth_raw(path, shape)
        return check_depth(depth, path, shape)
