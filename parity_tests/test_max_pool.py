"""Max pooling against torch's MaxPool3d where the frameworks could differ: tied maxima (the gradient goes to the
first maximum of a window, in depth-height-width scan order) and sizes that do not divide into whole windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from v2v_jax.layers import max_pool

pytestmark = pytest.mark.x64  # exact equality with torch's float64


@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 3), (1, 9, 7, 10, 2)])
@pytest.mark.parametrize("values", ["quantised", "constant"])
def test_max_pool_matches_torch_with_ties(shape, values):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal(shape) * 2) / 2 if values == "quantised" else np.full(shape, 0.5)
    g = rng.standard_normal((shape[0], *(n // 2 for n in shape[1:4]), shape[4]))
    y, vjp = jax.vjp(lambda v: max_pool(v, 2), jnp.asarray(x))
    xt = torch.tensor(x.transpose(0, 4, 1, 2, 3), requires_grad=True)
    yt = torch.nn.functional.max_pool3d(xt, 2)
    yt.backward(torch.tensor(g.transpose(0, 4, 1, 2, 3)))
    # Selection and routing move values without arithmetic: exact equality in float64.
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 4, 1))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.numpy().transpose(0, 2, 3, 4, 1))
