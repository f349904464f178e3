"""HANDS 2017 challenge data set (BigHand2.2M based; Yuan et al., CVPR 2018).

Train: `training/Training_Annotation.txt`, lines `name x1 y1 z1 ... x21 y21 z21` (world mm, the data set's axes,
y down), depth `training/images/<name>`. Test: `frame/BoundingBox.txt`, lines `name x y w h` (the box is not used;
its exact layout is unverified), depth `frame/images/<name>`; the test joints are withheld, so they are NaN and a
reference centre file is required. Depth PNG uint16 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.base import (DataError, DepthDataset, check_depth, parse_rows, read_text, require_file,
                               require_files, to_floats)
from v2v_jax.data.centers import centers_for
from v2v_jax.data.images import read_png_uint16

SPLITS = {"train": ("training", "Training_Annotation.txt"), "test": ("frame", "BoundingBox.txt")}
TEST_FIELDS = 5  # name x y w h


class HANDS2017(DepthDataset):
    spec = cameras.HANDS2017

    def __init__(self, root, centers_file=None, split: str = "train", on_bad_frame: str = "error",
                 cube_mm: float | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.root, self.split = Path(root), split
        folder, label_file = SPLITS[split]
        labels = require_file(self.root / folder / label_file, "label")
        lines = read_text(labels)
        num_joints = self.spec.num_joints
        if split == "train":
            rows = parse_rows(labels, lines, 1 + 3 * num_joints)
            joints = to_floats(labels, [r[1:] for r in rows]).reshape(len(rows), num_joints, 3)
            if not np.isfinite(joints).all():
                raise DataError(f"{labels}: joint labels contain NaN or infinite values")
        else:
            rows = parse_rows(labels, lines, TEST_FIELDS)
            joints = np.full((len(rows), num_joints, 3), np.nan)
        names = [r[0] for r in rows]
        paths = [self.root / folder / "images" / n for n in names]
        require_files(paths, "depth")
        centers = centers_for(centers_file, joints, labels)
        self._set_frames(paths, names, centers, joints, centers_source=centers_file or labels,
                         on_bad_frame=on_bad_frame, cube_mm=cube_mm)

    def read_depth(self, i: int) -> np.ndarray:
        path = self.sources[i]
        shape = (self.spec.height, self.spec.width)
        return check_depth(read_png_uint16(path, shape), path, shape)
