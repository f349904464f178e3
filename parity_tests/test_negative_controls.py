"""The parity comparison must FAIL on deliberately wrong models, and name the block where they go wrong."""

import jax
import numpy as np
import pytest
from flax import nnx

from parity_tests.cases import block_pair, model_pair, numerics, sparse_voxels
from parity_tests.compare import OUTPUT, compare_models, first_divergence, format_table
from v2v_jax import model as jmodel
from v2v_torch_ref import model as tmodel

pytestmark = pytest.mark.x64  # the controls run at the float64 tolerance

TOL = 1e-10  # float64, as in test_model


class ReluHeadV2V(jmodel.V2VModel):
    """The original author's plateau bug: a ReLU after the output conv."""

    def __call__(self, x):
        return jax.nn.relu(super().__call__(x))


class NoSkipRes3DBlock(jmodel.Res3DBlock):
    """A residual block that forgot its skip connection."""

    def __call__(self, x):
        return self._record(jax.nn.relu(jmodel.sequential(self.res_branch, x)))


def test_final_relu_is_caught_at_the_output():
    torch_model, _ = model_pair("float64")
    wrong = ReluHeadV2V(1, 4, 8, numerics=numerics("float64"), rngs=nnx.Rngs(0))
    rows = compare_models(torch_model, wrong, sparse_voxels((2, 1, 16, 16, 16)), train=True, tol=TOL)
    divergence = first_divergence(rows)
    # every block before the head agrees; the output (half its values clipped) does not
    assert divergence is not None and divergence.path == OUTPUT and divergence.quantity == "forward", \
        format_table(rows)
    assert all(r.fwd_rel <= TOL for r in rows[1:-1])


def test_biased_running_variance_is_caught_in_the_statistics():
    """Numerics(batchnorm='flax') keeps the biased variance: the running variance is off by 0.1*var/(n-1), a
    relative ~0.1 var/(0.9 + 0.1 var)/n ~ 1e-5 at n = 2 * 8^3 with PyTorch's init (var ~ 0.3; the authors' 1e-3
    weights would make var ~ 1e-6 and the error ~ 1e-10), while the block's forward still agrees."""
    torch_block, jax_block, x = block_pair("basic_k3", "float64", batchnorm="flax")
    tmodel.initialize(torch_block, "framework")
    rows = compare_models(torch_block, jax_block, x, train=True, tol=TOL)
    divergence = first_divergence(rows)
    assert divergence is not None and divergence.quantity == "running statistics", format_table(rows)
    n = x.size // x.shape[1]
    assert 0.001 / n < divergence.error < 1 / n


def test_missing_skip_is_caught():
    torch_block, _, x = block_pair("res_identity_skip", "float64")
    wrong = NoSkipRes3DBlock(4, 4, numerics=numerics("float64"), rngs=nnx.Rngs(0))
    rows = compare_models(torch_block, wrong, x, train=True, tol=TOL)
    divergence = first_divergence(rows)
    assert divergence is not None and divergence.path == OUTPUT and divergence.quantity == "forward"
    assert np.isfinite(divergence.error) and divergence.error > 1e-3
