"""Reference-centre files (SPEC §5, shared/data/README.md): one `x y z` line per frame, or `invalid invalid invalid`.

`read_centers` returns (N, 3) float64 with NaN rows for invalid lines, in the file's units; `centers_for` pairs a
centre file with the frames of a label file (the data sets drop the invalid ones and count them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2v_jax.data.base import DataError, parse_rows, require_file, to_floats

INVALID = "invalid"


def read_centers(path) -> np.ndarray:
    """Parse a centre file: (N, 3) float64, a row of NaN for each `invalid invalid invalid` line."""
    path = require_file(Path(path), "reference centre")
    rows = parse_rows(path, path.read_text().splitlines(), 3)
    for k, row in enumerate(rows, start=1):
        flags = [value.lower() == INVALID for value in row]
        if any(flags) and not all(flags):
            raise DataError(f"{path}:{k}: partly invalid centre {' '.join(row)!r}")
    rows = [["nan"] * 3 if row[0].lower() == INVALID else row for row in rows]
    centers = to_floats(path, rows) if rows else np.zeros((0, 3))
    if np.isinf(centers).any():
        raise DataError(f"{path}: centre file contains infinite values")
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
