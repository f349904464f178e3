"""The numbers a run reports: mean and per-joint error, success rates, as a dict and as a printed table; its speed."""

from __future__ import annotations

import time

import numpy as np

from v2v_jax import metrics

TABLE_THRESHOLDS_MM = (10, 20, 40)


def summary(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Errors of predictions (F, J, 3) against ground truth (F, J, 3), world mm."""
    errors = metrics.joint_errors(pred, gt)
    rates = metrics.success_rates(errors)
    return {
        "mean_error_mm": metrics.mean_error(errors),
        "per_joint_mm": metrics.per_joint_error(errors),
        "success": rates,
        **{f"max_frame_within_{t}mm": float(rates["max_frame"][t]) for t in TABLE_THRESHOLDS_MM},
    }


def format_table(result: dict, joint_names) -> str:
    lines = [f"{'joint':<16}{'mean error (mm)':>16}"]
    lines += [f"{name:<16}{err:>16.2f}" for name, err in zip(joint_names, result["per_joint_mm"])]
    lines.append(f"{'MEAN':<16}{result['mean_error_mm']:>16.2f}")
    lines.append("frames with every joint within " + ", ".join(
        f"{t} mm: {100 * result[f'max_frame_within_{t}mm']:.1f}%" for t in TABLE_THRESHOLDS_MM))
    return "\n".join(lines)


class SteadyRate:
    """Training speed after the first steps (compilation, warm-up) have passed, for the final report."""

    def __init__(self, first_step: int, batch_size: int, warmup: int = 5):
        self.start_step, self.batch_size = first_step + warmup, batch_size
        self.t0 = self.t1 = None
        self.last_step = first_step

    def tick(self, step: int) -> None:
        if step == self.start_step:
            self.t0 = time.perf_counter()
        self.t1, self.last_step = time.perf_counter(), step

    def __str__(self) -> str:
        if self.t0 is None or self.last_step <= self.start_step:
            return "too few steps for a steady-state rate"
        per_s = (self.last_step - self.start_step) / (self.t1 - self.t0)
        return f"steady state {per_s:.2f} steps/s ({per_s * self.batch_size:.1f} samples/s)"
