"""The interface every data set implements, and the checks that keep bad files from becoming silent wrong samples.

A data set holds file names and labels in memory and reads depth on access. Its frames carry world coordinates in
mm in the data set's own axes (`spec.y_up`), so `Frame.center` and `Frame.joints` are directly comparable.

Frame arrays are read-only: the depth is read fresh on every access, and centre and joints are read-only views
of the in-memory labels, so an augmentation that works in place raises instead of corrupting later epochs
(SPEC §8 lesson 1).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Frame:
    depth: np.ndarray   # (H, W) float32 mm, 0 = no data
    center: np.ndarray  # (3,) float32 world mm, reference centre of the cube
    joints: np.ndarray  # (J, 3) float32 world mm, the data set's joint order (NaN where unlabelled)
    frame_id: str       # stable id, e.g. "P3/IP/000012"


def read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class DepthDataset:
    """Base class: subclasses set `spec` and call `_set_frames`, and implement `read_depth(i)`.

    After `_set_frames`, `sources` (what `read_depth` reads: a path or a row index), `frame_ids`, `centers`
    (N, 3) and `joints` (N, J, 3) float32 hold the frames kept. Frames whose reference centre is `invalid`, or
    that the labels mark invalid, are dropped and counted in `skipped`.
    """

    spec: cameras.DatasetSpec
    split: str
    sources: list
    frame_ids: list[str]
    centers: np.ndarray
    joints: np.ndarray
    skipped: dict[str, int]

    def _set_frames(self, sources, frame_ids, centers, joints, marked_valid=None) -> None:
        """Keep the frames with a valid centre (and `marked_valid`, if given); count the others by reason."""
        keep = ~np.isnan(centers).any(axis=1)
        skipped = {"invalid centre": int((~keep).sum())}
        if marked_valid is not None:
            skipped["marked invalid in labels"] = int((keep & ~marked_valid).sum())
            keep &= marked_valid
        self.sources = [s for s, k in zip(sources, keep) if k]
        self._set_labels([f for f, k in zip(frame_ids, keep) if k], np.asarray(centers)[keep],
                         np.asarray(joints)[keep], skipped)

    def _set_labels(self, frame_ids, centers, joints, skipped: dict[str, int]) -> None:
        """Store the labels of the frames kept, as read-only float32 arrays."""
        self.frame_ids = list(frame_ids)
        self.centers = read_only(np.asarray(centers, np.float32))
        self.joints = read_only(np.asarray(joints, np.float32))
        self.skipped = dict(skipped)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def read_depth(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Frame:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i = i % len(self)
        depth = self.read_depth(i)
        return Frame(read_only(depth), self.centers[i], self.joints[i], self.frame_ids[i])

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def report(self) -> str:
        """One line: frames kept and frames skipped, by reason."""
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return f"{self.spec.name} {self.split}: {len(self)} frames kept, {self.num_skipped} skipped ({reasons})"


def check_depth(depth: np.ndarray, path, shape: tuple[int, int]) -> np.ndarray:
    """Return `depth` if it is a finite, non-negative image of `shape`; raise DataError naming `path` otherwise."""
    if depth.shape != shape:
        raise DataError(f"{path}: depth image has shape {depth.shape}, expected {shape}")
    if np.isnan(depth).any():
        raise DataError(f"{path}: depth contains NaN ({int(np.isnan(depth).sum())} pixels)")
    if (depth < 0).any():
        raise DataError(f"{path}: depth contains negative values (min {float(depth.min())})")
    if np.isinf(depth).any():
        raise DataError(f"{path}: depth contains infinite values")
    return depth


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing {what} folder")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file")
    return path


def require_files(paths, what: str) -> None:
    """Raise DataError naming the first missing file; lists each folder once instead of one stat per file."""
    by_folder = defaultdict(list)
    for p in paths:
        p = Path(p)
        by_folder[p.parent].append(p.name)
    for folder, names in by_folder.items():
        present = set(os.listdir(folder)) if folder.is_dir() else set()
        missing = [n for n in names if n not in present]
        if missing:
            more = f" (and {len(missing) - 1} more in that folder)" if len(missing) > 1 else ""
            raise DataError(f"{folder / missing[0]}: missing {what} file{more}")


def parse_rows(path: Path, lines: list[str], num_values: int, first_line: int = 1) -> list[list[str]]:
    """Split each line (trailing blank lines dropped); raise DataError naming file and line if one has not
    exactly `num_values` fields. Row k is line `first_line + k`."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    rows = [line.split() for line in lines]
    for k, fields in enumerate(rows, start=first_line):
        if len(fields) != num_values:
            raise DataError(f"{path}:{k}: expected {num_values} values, found {len(fields)}")
    return rows


def to_floats(path: Path, rows: list[list[str]], first_line: int = 1) -> np.ndarray:
    try:
        return np.array(rows, np.float64)
    except ValueError:
        for k, row in enumerate(rows, start=first_line):
            for value in row:
                try:
                    float(value)
                except ValueError:
                    raise DataError(f"{path}:{k}: not a number: {value!r}") from None
        raise
