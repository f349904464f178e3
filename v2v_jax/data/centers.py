"""Reference-centre files as released with V2V-PoseNet (mks0601/V2V-PoseNet_RELEASE): one `x y z` line per frame,
or `invalid invalid invalid`.

`read_centers` returns (N, 3) float64 with NaN rows for invalid lines, in the file's units; `centers_for` pairs a
centre file with the frames of a label file (the data sets drop the invalid ones and count them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2v_jax.data.base import DataError, parse_rows, read_text, require_file, to_floats

INVALID = "invalid"


def read_centers(path) -> np.ndarray:
    """Parse a centre file: (N, 3) float64, a row of NaN for each `invalid invalid invalid` line."""
    path = require_file(Path(path), "reference centre")
    rows = parse_rows(path, read_text(path), 3)
    for k, row in enumerate(rows, start=1):
        flags = [value.lower() == INVALID for value in row]
        if any(flags) and not all(flags):
            raise DataError(f"{path}:{k}: partly invalid centre {' '.join(row)!r}")
    invalid = np.array([row[0].lower() == INVALID for row in rows], bool)
    centers = to_floats(path, [["nan"] * 3 if bad else row for row, bad in zip(rows, invalid)]) if rows \
        else np.zeros((0, 3))
    if not np.isfinite(centers[~invalid]).all():
        raise DataError(f"{path}: centre file contains NaN or infinite values (write 'invalid invalid invalid' for "
                        "a frame without a centre)")
    return centers


def check_count(centers: np.ndarray, num_frames: int, path, labels) -> None:
    if len(centers) != num_frames:
        raise DataError(f"{path}: {len(centers)} centres but {num_frames} labelled frames in {labels}")


def centers_for(path, joints: np.ndarray, labels, scale: float = 1.0) -> np.ndarray:
    """The centres of the frames labelled `joints` (read from `labels`): the file at `path` times `scale`, checked
    to hold one line per frame; without a file, the mean of each frame's joints (ground truth, so optimistic)."""
    if path is None:
        if np.isnan(joints).any():
            raise DataError(f"{labels}: frames without joint labels need a reference centre file")
        return joints.mean(axis=1)
    centers = read_centers(path)
    check_count(centers, len(joints), path, labels)
    return centers * scale
