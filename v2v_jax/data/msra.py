"""MSRA hand gesture data set (Sun et al., CVPR 2015): readers and writers of its on-disk formats.

Layout: `P<k>/<gesture>/%06d_depth.bin` and `P<k>/<gesture>/joint.txt`, gestures in `cameras.MSRA_GESTURES` order.

`.bin`: 6 little-endian uint32 (width, height, left, top, right, bottom; right and bottom exclusive), then the
(bottom - top) x (right - left) float32 crop, row-major, mm, 0 = no data. An all-zero image is written with the empty
box left = top = right = bottom = 0 and no payload.

`joint.txt`: first line N, then N lines of 63 floats, world mm, y up, z stored NEGATIVE (as MSRA ships it).
The writers print 9 significant digits, so float32 values read back bit-identical.

Folds: leave one subject out. Subjects are the `P<k>` folders present (P0..P8 in the real set), each with all 17
gesture folders. Reference centres: `center_{train,test}_{k}_refined.txt` in `centers_dir`, ordered subject,
gesture, frame, as the frames here; without `centers_dir` the centre is the mean of the joints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.base import (UNREADABLE, DataError, DepthDataset, check_depth, parse_rows, read_text,
                               require_dir, require_file, require_files, to_floats)
from v2v_jax.data.centers import centers_for

HEADER_DTYPE = np.dtype("<u4")
HEADER_LEN = 6
MSRA_SHAPE = (240, 320)  # (height, width)


def depth_name(i: int) -> str:
    return f"{i:06d}_depth.bin"


def _write_atomic(path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bounding_box(depth: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the non-zero pixels, right/bottom exclusive; (0, 0, 0, 0) if there are none."""
    rows = np.flatnonzero(depth.any(axis=1))
    cols = np.flatnonzero(depth.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def encode_depth_bin(depth: np.ndarray) -> bytes:
    depth = np.asarray(depth)
    if depth.shape != MSRA_SHAPE:
        raise ValueError(f"MSRA depth must have shape {MSRA_SHAPE}, got {depth.shape}")
    left, top, right, bottom = bounding_box(depth)
    header = np.array([depth.shape[1], depth.shape[0], left, top, right, bottom], HEADER_DTYPE)
    crop = np.ascontiguousarray(depth[top:bottom, left:right], dtype="<f4")
    return header.tobytes() + crop.tobytes()


def write_depth_bin(path, depth: np.ndarray) -> None:
    """Write a (240, 320) float32 mm depth image (0 = no data) as an MSRA `.bin` cropped to its non-zero pixels."""
    _write_atomic(path, encode_depth_bin(depth))


def format_joint_txt(joints: np.ndarray) -> str:
    joints = np.asarray(joints, np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (21, 3):
        raise ValueError(f"MSRA joints must have shape (N, 21, 3), got {joints.shape}")
    stored = joints * np.array([1.0, 1.0, -1.0])
    lines = [str(len(stored))] + [" ".join(f"{v:.9g}" for v in row) for row in stored.reshape(len(stored), -1)]
    return "\n".join(lines) + "\n"


def write_joint_txt(path, joints: np.ndarray) -> None:
    """Write (N, 21, 3) world-mm joints (y up, z positive) as an MSRA `joint.txt` (z stored negated)."""
    _write_atomic(path, format_joint_txt(joints).encode())


def format_centers(centers: np.ndarray) -> str:
    centers = np.asarray(centers, np.float64)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f"centres must have shape (N, 3), got {centers.shape}")
    lines = ["invalid invalid invalid" if np.isnan(c).any() else " ".join(f"{v:.9g}" for v in c) for c in centers]
    return "".join(line + "\n" for line in lines)


def write_centers(path, centers: np.ndarray) -> None:
    """Write (N, 3) world-mm centres, one `x y z` line each; a row containing NaN becomes `invalid invalid invalid`."""
    _write_atomic(path, format_centers(centers).encode())


def write_gesture(folder, depths: np.ndarray, joints: np.ndarray) -> None:
    """Write one gesture folder: `%06d_depth.bin` for each of the N depth images, and `joint.txt`."""
    if len(depths) != len(joints):
        raise ValueError(f"{len(depths)} depth images but {len(joints)} joint sets")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, depth in enumerate(depths):
        write_depth_bin(folder / depth_name(i), depth)
    write_joint_txt(folder / "joint.txt", joints)


def read_depth_bin(path) -> np.ndarray:
    """Read an MSRA `.bin` into a (240, 320) float32 mm image, the crop pasted at [top:bottom, left:right]."""
    data = Path(path).read_bytes()
    header_bytes = HEADER_LEN * HEADER_DTYPE.itemsize
    if len(data) < header_bytes:
        raise DataError(f"{path}: truncated .bin, {len(data)} bytes is shorter than the {header_bytes}-byte header",
                        UNREADABLE)
    width, height, left, top, right, bottom = (int(v) for v in np.frombuffer(data, HEADER_DTYPE, HEADER_LEN))
    if (height, width) != MSRA_SHAPE:
        raise DataError(f"{path}: header says {width}x{height}, expected {MSRA_SHAPE[1]}x{MSRA_SHAPE[0]}",
                        UNREADABLE)
    if not (0 <= left <= right <= width and 0 <= top <= bottom <= height):
        raise DataError(f"{path}: header box left={left} top={top} right={right} bottom={bottom} "
                        f"does not fit a {width}x{height} image", UNREADABLE)
    expected = (bottom - top) * (right - left) * 4
    payload = len(data) - header_bytes
    if payload < expected:
        raise DataError(f"{path}: truncated .bin, the header box {right - left}x{bottom - top} needs {expected} "
                        f"payload bytes, the file has {payload}", UNREADABLE)
    if payload > expected:
        raise DataError(f"{path}: header box {right - left}x{bottom - top} ({expected} bytes) does not match "
                        f"the payload size {payload} bytes", UNREADABLE)
    depth = np.zeros(MSRA_SHAPE, np.float32)
    depth[top:bottom, left:right] = np.frombuffer(data, "<f4", offset=header_bytes).reshape(bottom - top,
                                                                                            right - left)
    return check_depth(depth, path, MSRA_SHAPE)


def read_joint_txt(path) -> np.ndarray:
    """Read an MSRA `joint.txt` into (N, 21, 3) float32 world mm with z positive."""
    path = require_file(Path(path), "joint label")
    lines = read_text(path)
    try:
        count = int(lines[0])
    except (IndexError, ValueError):
        raise DataError(f"{path}:1: first line must be the frame count, found {lines[:1]}") from None
    rows = parse_rows(path, lines[1:], 63, first_line=2)
    if len(rows) != count:
        raise DataError(f"{path}: first line says {count} frames, found {len(rows)} label lines")
    joints = to_floats(path, rows, first_line=2).reshape(count, 21, 3) if rows else np.zeros((0, 21, 3))
    if not np.isfinite(joints).all():
        raise DataError(f"{path}: joint labels contain NaN or infinite values")
    return (joints * np.array([1.0, 1.0, -1.0])).astype(np.float32)


def subjects(root) -> list[int]:
    """The k of each `P<k>` folder under `root`, ascending."""
    root = require_dir(Path(root), "MSRA root")
    found = sorted(int(p.name[1:]) for p in root.iterdir() if p.is_dir() and p.name[:1] == "P" and p.name[1:].isdigit())
    if not found:
        raise DataError(f"{root}: no subject folders P0, P1, ... found")
    return found


class MSRA(DepthDataset):
    """Leave-one-subject-out fold `test_subject` of MSRA; `split` 'train' (the other subjects) or 'test'.

    `on_bad_frame` and `cube_mm`: see `base` (bad frames raise or are skipped)."""

    spec = cameras.MSRA

    def __init__(self, root, centers_dir, test_subject: int, split: str = "train", on_bad_frame: str = "error",
                 cube_mm: float | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.split, self.test_subject = Path(root), split, test_subject
        present = subjects(self.root)
        if test_subject not in present:
            raise DataError(f"{self.root}: no folder P{test_subject} for test subject {test_subject} "
                            f"(found {', '.join(f'P{k}' for k in present)})")
        chosen = [k for k in present if (k == test_subject) == (split == "test")]
        paths, frame_ids, joints = [], [], []
        for k in chosen:
            for gesture in cameras.MSRA_GESTURES:
                folder = require_dir(self.root / f"P{k}" / gesture, f"gesture {gesture!r} of subject P{k}")
                labels = read_joint_txt(require_file(folder / "joint.txt", "joint label"))
                names = [depth_name(i) for i in range(len(labels))]
                require_files([folder / n for n in names], "depth")
                paths += [folder / n for n in names]
                frame_ids += [f"P{k}/{gesture}/{n[:6]}" for n in names]
                joints.append(labels)
        joints = np.concatenate(joints) if joints else np.zeros((0, 21, 3), np.float32)
        centers_file = None if centers_dir is None else Path(centers_dir) / f"center_{split}_{test_subject}_refined.txt"
        labels = f"{self.root} (subjects {', '.join(f'P{k}' for k in chosen)})"
        centers = centers_for(centers_file, joints, labels)
        self._set_frames(paths, frame_ids, centers, joints, centers_source=centers_file or labels,
                         on_bad_frame=on_bad_frame, cube_mm=cube_mm)

    def read_depth(self, i: int) -> np.ndarray:
        return read_depth_bin(self.sources[i])
