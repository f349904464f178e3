"""The interface every data set implements, and the checks that keep bad files from becoming silent wrong samples.

A data set holds file names and labels in memory and reads depth on access. Its frames carry world coordinates in
mm in the data set's own axes (`spec.y_up`), so `Frame.center` and `Frame.joints` are directly comparable.

Frame arrays are read-only: the depth is read fresh on every access, and centre and joints are read-only views
of the in-memory labels, so an augmentation that works in place raises instead of corrupting later epochs.

Bad frames (docs/reliability.md): a depth file that cannot be read, depth that is NaN, infinite or negative, a
reference centre at zero or negative depth, and, when the data set is given the training cube (`cube_mm`), a frame none of
whose points falls inside the cube around its centre (the input grid would be empty). `on_bad_frame='error'` (the
default) raises DataError naming the file and the problem when the frame is opened (centres) or read (depth);
`on_bad_frame='skip'` reads every frame once when the data set is opened, drops the bad ones, logs each and counts
them by reason in `skipped`. A malformed label or centre file is never a frame's fault: it always raises, and so
does a joint label farther than MAX_RANGE_MM from the camera.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras

log = logging.getLogger(__name__)
BAD_FRAME_POLICIES = ("error", "skip")
UNREADABLE = "unreadable depth file"
# Farther than any camera of these data sets sees (hands within about 1.5 m; ITOP's bodies within about 5 m): a joint
# label beyond it is in the wrong units or corrupt.
MAX_RANGE_MM = 10_000.0
SKIP_HINT = "to skip such frames instead (logged and counted) use on_bad_frame='skip' (train.py --on-bad-frame skip)"


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem.

    `reason` is a short category ('unreadable depth file', 'empty cube', ...): on_bad_frame='skip' counts the frames
    it drops under it."""

    def __init__(self, message: str, reason: str = "malformed file"):
        super().__init__(message)
        self.reason = reason


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
    that the labels mark invalid, are dropped and counted in `skipped`; so are bad frames under
    `on_bad_frame='skip'` (module docstring).
    """

    spec: cameras.DatasetSpec
    split: str
    sources: list
    frame_ids: list[str]
    centers: np.ndarray
    joints: np.ndarray
    skipped: dict[str, int]
    on_bad_frame: str = "error"
    cube_mm: float | None = None  # given: a frame with no point inside the cube around its centre is bad

    def _set_frames(self, sources, frame_ids, centers, joints, marked_valid=None, *, centers_source,
                    on_bad_frame: str = "error", cube_mm: float | None = None) -> None:
        """Keep the frames with a valid centre (and `marked_valid`, if given); count the others by reason.

        `centers_source` (the centre file, or the label file the centres come from) is named by errors about
        centres; `on_bad_frame` and `cube_mm` as in the module docstring.
        """
        if on_bad_frame not in BAD_FRAME_POLICIES:
            raise ValueError(f"on_bad_frame must be one of {BAD_FRAME_POLICIES}, got {on_bad_frame!r}")
        self.on_bad_frame, self.cube_mm = on_bad_frame, cube_mm
        centers = np.asarray(centers)
        keep = ~np.isnan(centers).any(axis=1)
        skipped = {"invalid centre": int((~keep).sum())}
        if marked_valid is not None:
            skipped["marked invalid in labels"] = int((keep & ~marked_valid).sum())
            keep &= marked_valid
        zero_depth = np.flatnonzero(keep & (centers[:, 2] <= 0))
        problems = {i: f"{centers_source}: reference centre at {'zero' if centers[i, 2] == 0 else 'negative'} depth "
                       f"({centers[i].tolist()}) for frame {frame_ids[i]}" for i in zero_depth}
        reason = "centre at zero or negative depth"
        if problems and on_bad_frame == "error":
            more = f" (and {len(problems) - 1} more frames)" if len(problems) > 1 else ""
            raise DataError(f"{problems[zero_depth[0]]}{more}; {SKIP_HINT}", reason)
        for i, problem in problems.items():
            log.warning("skipping frame %s: %s", frame_ids[i], problem)
        if problems:
            skipped[f"bad frame: {reason}"] = len(problems)
            keep[zero_depth] = False
        far = np.argwhere(keep[:, None] & (np.linalg.norm(np.asarray(joints, np.float64), axis=-1) > MAX_RANGE_MM))
        if len(far):
            i, j = far[0]
            raise DataError(f"{getattr(self, 'root', centers_source)}: frame {frame_ids[i]}: joint {j} is labelled at "
                            f"{np.asarray(joints)[i, j].tolist()} mm, farther than {MAX_RANGE_MM / 1000:g} m from the "
                            f"camera ({len(far)} such labels): labels in the wrong units, or corrupt")
        self.sources = [s for s, k in zip(sources, keep) if k]
        self._set_labels([f for f, k in zip(frame_ids, keep) if k], centers[keep], np.asarray(joints)[keep],
                         skipped)
        if on_bad_frame == "skip":
            self._drop_bad_frames()

    def _drop_bad_frames(self) -> None:
        """Read every frame once; drop those that raise DataError, logging each and counting them by reason."""
        bad = {}
        for i in range(len(self)):
            try:
                self._read_checked(i)
            except DataError as error:
                bad[i] = error
                log.warning("skipping frame %s: %s", self.frame_ids[i], error)
        if not bad:
            return
        kept = [i for i in range(len(self)) if i not in bad]
        skipped = dict(self.skipped)
        for error in bad.values():
            key = f"bad frame: {error.reason}"
            skipped[key] = skipped.get(key, 0) + 1
        self.sources = [self.sources[i] for i in kept]
        self._set_labels([self.frame_ids[i] for i in kept], self.centers[kept], self.joints[kept], skipped)

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

    def source_name(self, i: int) -> str:
        """Where frame i's depth comes from, for messages."""
        return str(self.sources[i])

    def _read_checked(self, i: int) -> np.ndarray:
        """Frame i's depth, after every check of a bad frame that needs it (DataError if one fails)."""
        try:
            depth = self.read_depth(i)
        except OSError as error:
            raise DataError(f"{self.source_name(i)}: cannot read the depth file ({error.strerror or error})",
                            UNREADABLE) from None
        if self.cube_mm is not None and not points_in_cube(depth, self.centers[i], self.spec, self.cube_mm, enough=1):
            raise DataError(f"{self.source_name(i)}: no depth point of frame {self.frame_ids[i]} falls inside the "
                            f"{self.cube_mm:g} mm cube around its reference centre {self.centers[i].tolist()}: the "
                            "input grid would be empty", "empty cube")
        return depth

    def __getitem__(self, i: int) -> Frame:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i = i % len(self)
        try:
            depth = self._read_checked(i)
        except DataError as error:
            raise DataError(f"{error}; {SKIP_HINT}", error.reason) from None
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
        raise DataError(f"{path}: depth image has shape {depth.shape}, expected {shape}", "wrong image size")
    if np.isnan(depth).any():
        raise DataError(f"{path}: depth contains NaN ({int(np.isnan(depth).sum())} pixels)", "non-finite depth")
    if (depth < 0).any():
        raise DataError(f"{path}: depth contains negative values (min {float(depth.min())})", "negative depth")
    if np.isinf(depth).any():
        raise DataError(f"{path}: depth contains infinite values", "non-finite depth")
    return depth


def points_in_cube(depth: np.ndarray, center: np.ndarray, spec: cameras.DatasetSpec, cube_mm: float,
                   enough: int | None = None, pixel_origin: int = 0) -> int:
    """How many points of `depth` voxelisation (v2v_jax/geometry.py) keeps: zero depth at the background,
    pixel -> world, then r - C/2 <= p < r + C/2 on every axis (float64, so up to rounding at the faces; the 'port'
    geometry's truncation also keeps the sliver of a voxel below the lower faces). With `enough`, counting may stop
    once that many are found. NumPy, so that loader workers stay JAX-free."""
    low, high = np.asarray(center, np.float64) - cube_mm / 2, np.asarray(center, np.float64) + cube_mm / 2
    candidates = (depth >= low[2] - 1) & (depth < high[2] + 1)  # float32 compare, widened; exact test below
    if spec.background_mm is not None and low[2] <= spec.background_mm < high[2]:
        candidates |= depth == 0
    index = np.flatnonzero(candidates)  # 10x faster than np.nonzero on a 2-D mask
    chunk = max(len(index), 1) if enough is None else 1024
    found = 0
    for start in range(0, len(index), chunk):
        part = index[start:start + chunk]
        rows, cols = np.divmod(part, depth.shape[1])
        z = depth.reshape(-1)[part].astype(np.float64)
        if spec.background_mm is not None:
            z[z == 0] = spec.background_mm
        x, y, _ = cameras.pixel_to_world_xyz(cols, rows, z, spec, pixel_origin)
        found += int(((z >= low[2]) & (z < high[2]) & (x >= low[0]) & (x < high[0]) & (y >= low[1])
                      & (y < high[1])).sum())
        if enough is not None and found >= enough:
            break
    return found


def read_text(path: Path) -> list[str]:
    """The lines of a text file; DataError naming the file if it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None


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
