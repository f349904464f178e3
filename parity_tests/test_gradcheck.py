"""Each framework's gradients against finite differences, on every block, float64, train-mode BN, tiny sizes.

The points are kept away from kinks: PyTorch's default init (weights O(1/sqrt(fan_in))) so that pre-activations
are O(1) (with the authors' 1e-3 weights a step of 1e-6 crosses ReLU kinks), and standard normal inputs (no
exact zeros that tie in a max-pool window). Central differences with eps = 1e-6 in float64 have a
truncation error ~eps^2 = 1e-12 and a rounding error ~u/eps = 1e-10, far below the tolerances used (1e-5, 1e-3).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.test_util import check_grads

from parity_tests.cases import BLOCKS, block_pair
from parity_tests.compare import to_jax_layout, with_torch_weights
from v2v_torch_ref import model as tmodel

pytestmark = pytest.mark.x64  # finite differences need float64

EPS = 1e-6


def framework_init_pair(name):
    torch_block, jax_block, x = block_pair(name, "float64")
    tmodel.initialize(torch_block, "framework")
    x = np.random.default_rng(2).standard_normal(x.shape)
    return torch_block.train(), with_torch_weights(jax_block, torch_block), x


@pytest.mark.parametrize("name", list(BLOCKS))
def test_torch_gradcheck(name):
    block, _, x = framework_init_pair(name)
    names, params = zip(*block.named_parameters()) if any(True for _ in block.parameters()) else ((), ())

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    inputs = (torch.from_numpy(x).requires_grad_(True), *(p.detach().clone().requires_grad_(True) for p in params))
    # fast_mode: compares J v with finite differences along random directions (cheap for every parameter).
    assert torch.autograd.gradcheck(f, inputs, eps=EPS, atol=1e-5, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_jax_check_grads(name):
    _, block, x = framework_init_pair(name)
    block.train()
    graphdef, params, rest = nnx.split(block, nnx.Param, ...)

    @jax.jit
    def f(params, x):
        # Fresh copies of the BN statistics, so that the train-mode update writes arrays of the current trace.
        return nnx.merge(graphdef, params, jax.tree.map(jnp.array, rest))(x)

    # Reverse-mode derivatives (what training uses; some conv formulations define only a custom VJP) projected
    # on random directions, against central differences.
    check_grads(f, (params, jnp.asarray(to_jax_layout(x))), order=1, modes=("rev",), eps=EPS)
