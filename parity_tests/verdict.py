"""Norm-wise errors against a float64 truth and the three-way verdict "JAX deviates" / "PyTorch deviates" /
"both within rounding".

A low-precision run of a framework is judged by its error against the same framework's float64 run of the same
weights and input (its own rounding, nothing else); the other framework's error against its own float64 run is the
yardstick. A framework deviates when its error exceeds `multiplier` times the other's plus a floor (the form of
torch._dynamo's `same(ref, res, fp64_ref)`), where the multiplier and the floor are measured (docs/parity.md,
"Calibration"). A bug that is present in a framework's float64 run as well is caught separately, by the two
float64 runs disagreeing beyond float64 rounding (`float64_bound`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

JAX, TORCH = "JAX", "PyTorch"
WITHIN = "both within rounding"
QUANTILE = 0.999
METRICS = ("rel_fro", "q999")


def deviates(framework: str) -> str:
    return f"{framework} deviates"


def unit_roundoff(dtype: str) -> float:
    """u = 2^-p for a p-bit significand: float64 1.1e-16, float32 6.0e-8, bfloat16 3.9e-3; tf32 (10 stored bits)
    rounds each product's inputs to 4.9e-4."""
    return {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11, "bfloat16": 2.0 ** -8}[dtype]


@dataclasses.dataclass(frozen=True)
class Errors:
    """rel_fro: ||a - t|| / ||t|| (= RMSE / RMS(t)); rmse; q999: the 99.9 % quantile of |a - t| / RMS(t).

    Scaled by the truth's RMS, not elementwise: a relative error per element is dominated by entries near zero.
    Where the truth is exactly 0 everywhere the scale is RMS(a), so any nonzero value has error 1.
    """

    rel_fro: float
    rmse: float
    q999: float

    def __getitem__(self, metric: str) -> float:
        return getattr(self, metric)


ZERO = Errors(0.0, 0.0, 0.0)
INF = Errors(math.inf, math.inf, math.inf)


def errors(a, truth) -> Errors:
    a, t = np.asarray(a, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    if a.shape != t.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {t.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(t))):
        return ZERO if np.array_equal(a, t, equal_nan=True) else INF
    diff = np.abs(a - t)
    if a.size == 0 or not diff.any():
        return ZERO
    scale = math.sqrt(np.mean(np.square(t))) or math.sqrt(np.mean(np.square(a)))
    rmse = math.sqrt(np.mean(np.square(diff)))
    return Errors(rmse / scale, rmse, float(np.quantile(diff, QUANTILE)) / scale)


@dataclasses.dataclass(frozen=True)
class Rule:
    """err_a <= multiplier * err_b + floor * u, per metric, for a low-precision run with unit roundoff u."""

    multiplier: float
    floor: float  # in units of u


# Derived in docs/parity.md ("Calibration") from the ratio err_JAX / err_PyTorch of every tensor over seeds and
# sizes on unmodified code, float32 on the CPU: the multiplier is twice the largest ratio seen either way; the
# floor is the largest error seen on the tensors whose errors are a single rounding (the loss: 1 u) times 64, so
# tensors at rounding level are never judged by ratios of near-zero numbers.
# The first step (activations, gradients, batch statistics, the loss): largest ratio 48, the q99.9 of the output
# conv's parameter gradient at width 32, 32^3, seed 2 (PyTorch 1.6e-5 against JAX 3.4e-7: its bias gradient, a
# same-signed sum over 8,192 positions, which PyTorch accumulates less accurately); at width 8, 16^3 it was 12.2 (a
# BN weight gradient's q99.9, 16 values).
RULE = Rule(multiplier=96.0, floor=64.0)
# After the RMSprop steps (parameters, running variances, losses): RMSprop's first steps are ~10 lr sign(g), so
# entries whose gradient is near its rounding error move at full step size in a random direction. Against plain
# float64 the errors were chaotic (up to 1,734x either way, flipped ReLU decisions included); on the run's own
# decisions (parity_tests/decisions.py) they are within 20x either way over 5 runs, and 512 stays until more
# sizes and seeds are measured.
TRAINING_RULE = Rule(multiplier=512.0, floor=64.0)

# float64 runs of correct code disagree by float64 rounding amplified by the same conditioning that amplifies
# the low precision's: |jax64 - torch64| ~ (u64 / u) * err_low. Largest measured ratio 32, on a tensor where the
# floor holds it; 64 with the floor 2^12 u64 = 4.5e-13 keeps every measured disagreement below 2.4 % of its bound.
FLOAT64_MULTIPLIER, FLOAT64_FLOOR = 64.0, 2.0 ** 12
# The bound on a float64 result judged alone against NumPy (relative Frobenius). The parameters as loaded are the
# given float32 values, transposed at most: exact. The optimizer's first step is a handful of float64 operations
# per entry, each rounding by u64 relative: a correct one agrees with the NumPy step to ~10 u64 (RMSprop's step,
# ~10 lr = 2.5e-3, and the init are unrelated, so ||p1|| is not much below their sum). The loss sums K squares:
# (1 + log2 K) u64 (Higham 2002, section 4.2), 20 u64 at K = 2 * 21 * 16^3. A whole block against the NumPy chain
# of its ops: the ops' float64 errors, each within its op band (under ~1e-14), through a few ops. The bugs of the
# planted-bug suite move any of these by 1e-1 or more.
ALONE_BOUND = FLOAT64_FLOOR * unit_roundoff("float64")


# Where float64 is the only precision, the conditioning is measured by a float64 run on weights, input and target
# each multiplied by 1 +- PERTURBATION (8 u64: smaller relative steps round back to the same float64 value). The
# training steps after the first amplify float64 rounding up to 1e-10 (RMSprop divides by the root of the
# gradient's square: an entry whose gradient is near 0 moves by lr times its rounding error over the gradient), far
# above the floor; the perturbed run's error, scaled by u64 / PERTURBATION, tracks it: the largest multiplier the
# bound needed on correct code was 52.9 (widths 8-32, grids 16-32, 10 seeds each; docs/parity.md, "Calibration"),
# and 128 is the power of two above twice that.
PERTURBATION = 2.0 ** -50
PERTURBED_MULTIPLIER = 128.0


def perturbation(dtype: str) -> float:
    """The relative size of what the run that measures the conditioning changes: its rounding unit, or, for
    float64 alone, PERTURBATION."""
    return PERTURBATION if dtype == "float64" else unit_roundoff(dtype)


def float64_bound(err_jax: Errors, err_torch: Errors, dtype: str, metric: str) -> float:
    """The largest float64 cross-framework error that correct code produces on this tensor. `err_jax`, `err_torch`:
    each framework's `dtype` run against its float64 run, or, for dtype float64, its perturbed float64 run's."""
    u64 = unit_roundoff("float64")
    multiplier = PERTURBED_MULTIPLIER if dtype == "float64" else FLOAT64_MULTIPLIER
    conditioning = max(err_jax[metric], err_torch[metric]) / perturbation(dtype)
    return multiplier * u64 * conditioning + FLOAT64_FLOOR * u64


def rounding_verdict(err_jax: Errors, err_torch: Errors, dtype: str, rule: Rule = RULE) -> str:
    """The three-way verdict of one tensor from each framework's error against its own float64 run."""
    u = unit_roundoff(dtype)
    for metric in METRICS:
        j, t = err_jax[metric], err_torch[metric]
        if j > rule.multiplier * t + rule.floor * u:
            return deviates(JAX)
        if t > rule.multiplier * j + rule.floor * u:
            return deviates(TORCH)
    return WITHIN


def ratio(err_jax: Errors, err_torch: Errors, metric: str, dtype: str) -> float:
    """err_JAX / err_PyTorch with both floored at u: the statistic the calibration measures."""
    u = unit_roundoff(dtype)
    return max(err_jax[metric], u) / max(err_torch[metric], u)
