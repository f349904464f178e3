"""BatchNorm on channels with a large mean and a tiny variance: the failure mode of cuDNN's persistent BatchNorm
and of the one-pass variance E[x^2] - E[x]^2."""

import numpy as np
import pytest
import torch

from parity_tests.cases import block_pair
from parity_tests.compare import OUTPUT, compare_models, first_divergence, format_table

MEANS = torch.tensor([100.0, 200.0, 300.0, 400.0])  # conv bias of the 4 channels: the BN input's mean


def large_mean_pair(dtype, **numerics_fields):
    torch_block, jax_block, x = block_pair("basic_k3", dtype, **numerics_fields)
    with torch.no_grad():
        torch_block.block[0].bias.copy_(MEANS)
        pre_bn = torch_block.block[0].double()(torch.from_numpy(x.astype(np.float64)))
    torch_block = torch_block.to(torch.float64 if dtype == "float64" else torch.float32)
    ratio = float((pre_bn.mean((0, 2, 3, 4)) / pre_bn.std((0, 2, 3, 4))).max())
    return torch_block, jax_block, x, ratio


def forward_tolerance(dtype, ratio):
    """Both frameworks round the BN input x ~ mu to u*mu; normalising divides that by sigma, so each output may be
    off by u * mu/sigma, and the two by twice that. A factor 2 more for the mean's own rounding, floor 1e-4/1e-10."""
    u = np.finfo(dtype).eps / 2
    return max({"float64": 1e-10, "float32": 1e-4}[dtype], 4 * u * ratio)


def gradient_tolerance(dtype, ratio, n):
    """The parameter gradients sum dy * x_hat over the n = B*D*H*W values of a channel: the rounding error of x_hat
    (shared mu and sigma) adds up coherently, n terms, while the exact sum of randomly signed terms grows as
    sqrt(n); relative to it the error is the forward one times sqrt(n). In float32 at mu/sigma ~ 1e5 this bound
    is ~0.6: the gradients carry no digits worth comparing, so float32 is compared forward only."""
    return forward_tolerance(dtype, ratio) * np.sqrt(n)


@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.x64), "float32"])
def test_large_mean_tiny_variance(dtype):
    torch_block, jax_block, x, ratio = large_mean_pair(dtype)
    assert ratio > 1e4  # the case is as hard as claimed: mean / std of some BN input channel
    with_grads = dtype == "float64"
    n = x.size // x.shape[1]
    tol = gradient_tolerance(dtype, ratio, n) if with_grads else forward_tolerance(dtype, ratio)
    rows = compare_models(torch_block, jax_block, x, train=True, grads=with_grads, tol=tol)
    assert first_divergence(rows) is None, format_table(rows)
    assert max(r.fwd_rel for r in rows if r.fwd_rel is not None) <= forward_tolerance(dtype, ratio)


def test_one_pass_variance_fails_there():
    """Numerics(batchnorm='flax') computes E[x^2] - E[x]^2: in float32 its error u * mu^2 exceeds sigma^2 when
    mu/sigma > 1/sqrt(u) ~ 3e3, so the same comparison must report the block's output as diverging."""
    torch_block, jax_block, x, ratio = large_mean_pair("float32", batchnorm="flax")
    rows = compare_models(torch_block, jax_block, x, train=True, grads=False, tol=forward_tolerance("float32", ratio))
    divergence = first_divergence(rows)
    assert divergence is not None and divergence.path == OUTPUT and divergence.quantity == "forward", \
        format_table(rows)
