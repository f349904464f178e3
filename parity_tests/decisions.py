"""The float64 truth on the low-precision run's own decisions: ReLU masks and max-pool winners.

A ReLU input or a max-pool tie within rounding of its boundary can fall either way in float32, and one voxel that
falls the other way changes the gradients of every layer before it by ~1e-3 at the authors' init (docs/parity.md,
"The float32 gradient gap"). Which framework flips which voxel is chance, so a float64 truth with its own
decisions turns a coin toss into a verdict. The aligned truth is the float64 function on the pieces the
low-precision run chose: its ReLUs pass where the low-precision input was positive, its pools take the
low-precision winner (the first maximum of each window, as torch and `v2v_jax.layers.max_pool` do). Against it,
a framework's error is its arithmetic only. The choices themselves are judged apart (`flip_scores`): a decision
that differs from float64's must lie within the rounding its input tensor shows.

Each decision is recorded at its call, in call order, as the op's input, keyed "NNN relu" or "NNN pool2"; a run
that imposes decisions is handed the same keys from the low-precision run of the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from v2v_jax import model as jmodel

RELU, POOL = "relu", "pool"


@dataclasses.dataclass
class _Hooks:
    imposed: Mapping | None  # key -> the low-precision input of that decision, or None to record only
    seen: dict = dataclasses.field(default_factory=dict)

    def next(self, kind: str, x):
        """Records `x` as the next decision's input and returns the input to decide on."""
        key = f"{len(self.seen):03d} {kind}"
        self.seen[key] = x
        if self.imposed is None:
            return x
        if key not in self.imposed:
            raise ValueError(f"decision {key} was not recorded by the run it is aligned to")
        return self.imposed[key]


def _pool_key(size: int) -> str:
    return f"{POOL}{size}"


# ------------------------------------------------------------------------------------------------------ JAX


def _jax_windows(x, size: int):
    """(N, D, H, W, C) -> (N, D/s, H/s, W/s, C, s^3), the window in depth-first scan order."""
    n, d, h, w, c = x.shape
    d, h, w = d // size, h // size, w // size
    x = x[:, :d * size, :h * size, :w * size].reshape(n, d, size, h, size, w, size, c)
    return x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(n, d, h, w, c, size ** 3)


@contextlib.contextmanager
def jax_hooks(imposed: Mapping | None = None) -> Iterator[dict]:
    """Inside: `jax.nn.relu` and the model's max pool record their inputs into the yielded dict and, given
    `imposed`, decide on those arrays instead (call at trace time, inside the function being differentiated)."""
    hooks = _Hooks(imposed)
    relu, max_pool = jax.nn.relu, jmodel.max_pool

    def aligned_relu(x):
        decide_on = hooks.next(RELU, x)
        return relu(x) if hooks.imposed is None else jnp.where(decide_on > 0, x, jnp.zeros_like(x))

    def aligned_max_pool(x, size):
        decide_on = hooks.next(_pool_key(size), x)
        if hooks.imposed is None:
            return max_pool(x, size)
        winner = jnp.argmax(_jax_windows(decide_on, size), axis=-1)[..., None]
        return jnp.take_along_axis(_jax_windows(x, size), winner, axis=-1)[..., 0]

    jax.nn.relu, jmodel.max_pool = aligned_relu, aligned_max_pool
    try:
        yield hooks.seen
    finally:
        jax.nn.relu, jmodel.max_pool = relu, max_pool


# ------------------------------------------------------------------------------------------------------ torch


def _torch_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, C, D/s, H/s, W/s, s^3), the window in depth-first scan order."""
    n, c, d, h, w = x.shape
    d, h, w = d // size, h // size, w // size
    x = x[:, :, :d * size, :h * size, :w * size].reshape(n, c, d, size, h, size, w, size)
    return x.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(n, c, d, h, w, size ** 3)


@contextlib.contextmanager
def torch_hooks(imposed: Mapping | None = None) -> Iterator[dict]:
    """As `jax_hooks`, for `F.relu` (nn.ReLU calls it too) and `F.max_pool3d` with kernel = stride, no padding;
    imposed arrays are numpy, in the run's layout. Recorded inputs are detached copies (nn.ReLU(True) is in place)."""
    hooks = _Hooks(imposed)
    relu, max_pool3d = F.relu, F.max_pool3d

    def aligned_relu(x, inplace=False):
        decide_on = hooks.next(RELU, x.detach().clone())
        if hooks.imposed is None:
            return relu(x, inplace=inplace)
        return torch.where(torch.as_tensor(decide_on, device=x.device) > 0, x, torch.zeros_like(x))

    def aligned_max_pool3d(x, kernel_size, stride=None, padding=0, *args, **kwargs):
        if stride not in (None, kernel_size) or padding != 0 or args or kwargs or not isinstance(kernel_size, int):
            return max_pool3d(x, kernel_size, stride, padding, *args, **kwargs)
        decide_on = hooks.next(_pool_key(kernel_size), x.detach().clone())
        if hooks.imposed is None:
            return max_pool3d(x, kernel_size, kernel_size)
        decide_on = torch.as_tensor(decide_on, device=x.device)
        winner = _torch_windows(decide_on, kernel_size).argmax(-1, keepdim=True)
        return torch.take_along_dim(_torch_windows(x, kernel_size), winner, -1).squeeze(-1)

    F.relu, F.max_pool3d = aligned_relu, aligned_max_pool3d
    try:
        yield hooks.seen
    finally:
        F.relu, F.max_pool3d = relu, max_pool3d


# ------------------------------------------------------------------------------------------------ the choices


@dataclasses.dataclass(frozen=True)
class Flips:
    """How the low-precision decisions of one run differ from float64's."""

    decisions: int  # ReLU inputs and pool windows decided
    flipped: int  # of them, decided otherwise than float64 decides
    worst: float  # the largest distance of a flipped decision from its boundary, in its input's RMS error
    worst_key: str  # the decision where it lies ('' when none flipped)


def flip_scores(low: Mapping[str, np.ndarray], exact: Mapping[str, np.ndarray]) -> Flips:
    """Each flipped decision's distance from its boundary in float64 (|x| for a ReLU; the float64 maximum minus
    the float64 value at the low-precision winner for a pool), over the RMS of low - exact on the rest of that
    input tensor (the flipped entries' own errors left out, or a far flip would set its own scale).

    A flip by rounding lies within a few RMS errors of its boundary (the rounding of one element is rarely many
    times the tensor's RMS rounding); a decision flipped far beyond that is not rounding.
    """
    decisions = flipped = 0
    worst, worst_key = 0.0, ""
    for key, xl in low.items():
        xl, x64 = np.asarray(xl, np.float64), np.asarray(exact[key], np.float64)
        kind = key.split()[1]
        if kind == RELU:
            flips = (xl > 0) != (x64 > 0)
            distance, error = np.abs(x64)[flips], (xl - x64)[~flips]
        else:
            size = int(kind.removeprefix(POOL))
            w64, wl = (_numpy_windows(a, size) for a in (x64, xl))
            at_winner = np.take_along_axis(w64, wl.argmax(-1)[..., None], -1)[..., 0]
            gap = w64.max(-1) - at_winner
            distance, error = gap[gap > 0], (wl - w64)[gap <= 0]
        decisions += flips.size if kind == RELU else gap.size
        flipped += distance.size
        if distance.size:
            rms = float(np.sqrt(np.mean(np.square(error)))) if error.size else 0.0
            score = float(distance.max()) / rms if rms else np.inf
            if score > worst:
                worst, worst_key = score, key
    return Flips(decisions, flipped, worst, worst_key)


def _numpy_windows(x: np.ndarray, size: int) -> np.ndarray:
    """Torch layout (N, C, D, H, W) -> (N, C, D/s, H/s, W/s, s^3)."""
    return _torch_windows(torch.from_numpy(np.ascontiguousarray(x)), size).numpy()
