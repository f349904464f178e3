"""Evaluation in NumPy: joint errors, success-rate curves, ITOP mAP, community result files.

Errors and curves follow the community evaluator (AHPE: xinghaochen/awesome-hand-pose-estimation,
`evaluation/compute_error.py`).

Result files (AHPE format): one line per test frame, `u v d` per joint (pixels, mm). The community evaluator converts
them to world with its own intrinsics (`cameras.EVAL_INTRINSICS`), the same for ground truth and predictions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras
from v2v_jax.data.base import MAX_RANGE_MM, DataError
from v2v_jax.data.cameras import pixel_to_world, world_to_pixel

THRESHOLDS_MM = np.arange(0, 81)
ITOP_THRESHOLD_MM = 100.0


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(F, J, 3), (F, J, 3) world mm -> (F, J) Euclidean distances."""
    if pred.shape != gt.shape:
        raise ValueError(f"predictions {pred.shape} and ground truth {gt.shape} differ in shape")
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


def per_joint_error(errors: np.ndarray) -> np.ndarray:
    """(F, J) -> (J,) mean over frames."""
    return errors.mean(axis=0)


def mean_error(errors: np.ndarray) -> float:
    """The mean over joints of the per-joint mean over frames."""
    return float(per_joint_error(errors).mean())


def success_rates(errors: np.ndarray, thresholds=THRESHOLDS_MM) -> dict[str, np.ndarray]:
    """Fractions with error <= threshold (inclusive), per threshold.

    max_frame: frames whose worst joint is within; mean_frame: frames whose mean joint error is; joint: all joints.
    """
    th = np.asarray(thresholds, np.float64)
    return {
        "max_frame": (errors.max(axis=1)[:, None] <= th).mean(axis=0),
        "mean_frame": (errors.mean(axis=1)[:, None] <= th).mean(axis=0),
        "joint": (errors.reshape(-1)[:, None] <= th).mean(axis=0),
    }


def itop_average_precision(errors_mm: np.ndarray, threshold_mm: float = ITOP_THRESHOLD_MM) -> np.ndarray:
    """(F, J) errors of the valid frames -> (J,) fraction of frames with error < threshold (strict)."""
    return (errors_mm < threshold_mm).mean(axis=0)


def itop_map(errors_mm: np.ndarray, threshold_mm: float = ITOP_THRESHOLD_MM) -> float:
    """ITOP mAP@10cm: the mean over joints of `itop_average_precision`."""
    return float(itop_average_precision(errors_mm, threshold_mm).mean())


# --- result files ----------------------------------------------------------------------------------------------

def read_result_file(path, num_joints: int | None = None) -> np.ndarray:
    """A community result file -> (F, J, 3) float64 `u v d`; DataError naming the file (and line) if it cannot be
    read, is not text, is empty, has a malformed line, another joint count than `num_joints`, or a non-finite
    value."""
    path = Path(path)
    expected = 3 * num_joints if num_joints else None
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                rows.append(_parse_line(path, line_number, line, expected))
                expected = expected or len(rows[-1])
    except OSError as e:
        raise DataError(f"{path}: cannot read the result file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text result file ({e.reason} at byte {e.start})") from None
    if not rows:
        raise DataError(f"{path}: no frames")
    return np.array(rows).reshape(len(rows), -1, 3)


def _parse_line(path: Path, line_number: int, line: str, expected: int | None) -> list[float]:
    where = f"{path}:{line_number}"
    try:
        values = [float(x) for x in line.split()]
    except ValueError as e:
        raise DataError(f"{where}: not a number ({e})") from None
    if expected is None and (not values or len(values) % 3):
        raise DataError(f"{where}: {len(values)} numbers, not a positive multiple of 3 (u v d per joint)")
    if expected is not None and len(values) != expected:
        raise DataError(f"{where}: {len(values)} numbers, expected {expected} ({expected // 3} joints x u v d)")
    if not np.isfinite(values).all():
        raise DataError(f"{where}: holds a non-finite value ({next(v for v in values if not np.isfinite(v))})")
    return values


def read_world(path, dataset: str, num_joints: int | None = None) -> np.ndarray:
    """A result file -> (F, J, 3) world mm with the community evaluator's intrinsics for `dataset`."""
    if dataset not in cameras.EVAL_INTRINSICS:
        raise ValueError(f"no evaluator intrinsics for {dataset!r}; choose one of {sorted(cameras.EVAL_INTRINSICS)}")
    return pixel_to_world(read_result_file(path, num_joints), cameras.EVAL_INTRINSICS[dataset])


def write_result_file(path, joints_world: np.ndarray, spec: cameras.DatasetSpec) -> None:
    """(F, J, 3) world mm -> a result file, projected with the camera that produced the world ground truth.

    Written to a temporary file first and moved into place, so an existing file is never left half written.
    """
    path = Path(path)
    joints_world = np.asarray(joints_world, np.float64)
    if joints_world.ndim != 3 or joints_world.shape[-1] != 3:
        raise ValueError(f"{path}: expected joints of shape (frames, joints, 3), got {joints_world.shape}; "
                         "nothing written")
    uvd = world_to_pixel(joints_world, spec)
    if not path.parent.is_dir():
        raise DataError(f"{path}: cannot write the result file: folder {path.parent} does not exist")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise DataError(f"{path}: cannot write the result file ({e.strerror})") from None
    try:
        with os.fdopen(descriptor, "w") as f:
            np.savetxt(f, uvd.reshape(len(uvd), -1), fmt="%.4f")
        os.replace(temporary, path)
    except OSError as e:
        os.unlink(temporary)
        raise DataError(f"{path}: cannot write the result file ({e.strerror})") from None
    except BaseException:
        os.unlink(temporary)
        raise


def evaluate_files(gt_path, pred_paths, dataset: str) -> dict[str, np.ndarray]:
    """Ground-truth file and prediction files -> {prediction path: (F, J) errors in mm}."""
    gt = read_world(gt_path, dataset)
    far = np.argwhere(np.linalg.norm(gt, axis=-1) > MAX_RANGE_MM)
    if len(far):
        frame, joint = far[0]
        raise DataError(f"{gt_path}:{frame + 1}: joint {joint} lies {np.linalg.norm(gt[frame, joint]) / 1000:.3g} m "
                        f"from the camera, farther than any of these cameras sees ({MAX_RANGE_MM / 1000:g} m): not "
                        f"{dataset} ground truth in mm")
    results = {}
    for pred_path in pred_paths:
        pred = read_world(pred_path, dataset, num_joints=gt.shape[1])
        if len(pred) != len(gt):
            raise DataError(f"{pred_path} has {len(pred)} frames but {gt_path} has {len(gt)}")
        results[str(pred_path)] = joint_errors(pred, gt)
    return results
