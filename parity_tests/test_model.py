"""The whole V2V, torch vs Flax, block by block: train and eval BatchNorm, float64 and float32, and the hard
inputs from the original author's experience (sparse binary voxels, all zeros, batch size 1)."""

import numpy as np
import pytest

from parity_tests.cases import model_pair, sparse_voxels
from parity_tests.compare import OUTPUT, calibrate_running_stats, compare_models, first_divergence, format_table

GRID, BATCH = 16, 2

# Model-wide per-block tolerances (compare.TOLERANCES): at width 8 the longest path has L = 50 conv/BN layers with
# reductions of K <= 32*27 = 864 terms (the 7^3 first conv: 343); the random-walk estimate sqrt(L*K)*u is
# 208u = 2.3e-14 (float64) and 1.2e-5 (float32), against 1e-10 and 1e-4. Measured: ~1e-14 and ~3e-6.
TOL = {"float64": 1e-10, "float32": 1e-4}


def check(rows):
    assert first_divergence(rows) is None, format_table(rows)


# float32 in train mode is judged by the calibrated verdict at the real width instead (test_anchored.py): a fixed
# tolerance holds at width 8 but not at width 32, where float32 gradients are ~1e-2 from float64 in both frameworks.
@pytest.mark.parametrize("dtype,mode", [pytest.param("float64", "train", marks=pytest.mark.x64),
                                        pytest.param("float64", "eval", marks=pytest.mark.x64), ("float32", "eval")])
def test_model_parity_on_sparse_voxels(dtype, mode):
    torch_model, jax_model = model_pair(dtype)
    x = sparse_voxels((BATCH, 1, GRID, GRID, GRID), density=0.05).astype(dtype)
    if mode == "eval":
        torch_model = calibrate_running_stats(torch_model, sparse_voxels(x.shape, density=0.05, seed=7))
    rows = compare_models(torch_model, jax_model, x, train=mode == "train", tol=TOL[dtype])
    check(rows)
    assert len(rows) == 22  # input, 20 blocks, output: nothing skipped


@pytest.mark.x64
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_all_zero_input(mode):
    """Train mode: every BN sees a constant channel (variance 0), so everything is exactly 0 but the output bias
    gradient; eval mode: the running statistics of another batch act on a zero volume."""
    torch_model, jax_model = model_pair("float64")
    x = np.zeros((BATCH, 1, GRID, GRID, GRID))
    if mode == "eval":
        torch_model = calibrate_running_stats(torch_model, sparse_voxels(x.shape, density=0.05, seed=7))
    check(compare_models(torch_model, jax_model, x, train=mode == "train", tol=TOL["float64"]))


@pytest.mark.x64
def test_batch_size_one():
    """BN statistics over one volume only (n = D*H*W per channel, 2^3 = 8 at the innermost level)."""
    torch_model, jax_model = model_pair("float64")
    x = sparse_voxels((1, 1, GRID, GRID, GRID), density=0.05, seed=3)
    check(compare_models(torch_model, jax_model, x, train=True, tol=TOL["float64"]))


@pytest.mark.x64
@pytest.mark.parametrize("density", [0.002, 0.5])
def test_very_sparse_and_dense_voxels(density):
    """A handful of set voxels (near-constant channels everywhere) and a half-full volume."""
    torch_model, jax_model = model_pair("float64")
    x = sparse_voxels((BATCH, 1, GRID, GRID, GRID), density=density, seed=4)
    check(compare_models(torch_model, jax_model, x, train=True, tol=TOL["float64"]))


@pytest.mark.slow  # the default run judges float32 at width 32 with the calibrated verdict (test_anchored.py)
def test_full_size_forward_float32():
    """V2V as published (width 32, 21 joints) on one 88^3 volume, forward in train-mode BN. float32 tolerance as
    above with L = 50, K = 3456: sqrt(L*K)*u = 416u = 2.5e-5 <= 1e-4."""
    torch_model, jax_model = model_pair("float32", width=32, joints=21)
    x = sparse_voxels((1, 1, 88, 88, 88), density=0.02, seed=5).astype(np.float32)
    rows = compare_models(torch_model, jax_model, x, train=True, grads=False, tol=TOL["float32"])
    check(rows)
    assert rows[-1].path == OUTPUT and rows[-1].fwd_rel is not None
