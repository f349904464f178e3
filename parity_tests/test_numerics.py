"""Numerics: the Flax-flavoured BatchNorm equals flax's own, float64 is float64 everywhere, bfloat16 works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parity_tests.cases import model_pair, sparse_voxels
from parity_tests.compare import (_jax_forward_backward, compare_runs, label_blocks, rel_error, run_jax, run_torch, to_jax_layout,
                                  with_torch_weights)
from v2v_jax.layers import BatchNorm3d, Numerics
from v2v_jax.model import Basic3DBlock, V2VModel


@pytest.mark.x64
@pytest.mark.parametrize("train", [True, False])
def test_flax_flavour_equals_nnx_batchnorm(train):
    """Numerics(batchnorm='flax') == nnx.BatchNorm(use_fast_variance=True, momentum=0.9, epsilon=1e-5), float64:
    the same formulas in the same order, so agreement to a few ulps (1e-13)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 4, 3)) * 3 + 1)
    ours = BatchNorm3d(3, numerics=Numerics(jnp.float64, jnp.float64, batchnorm="flax"), rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(3, use_fast_variance=True, momentum=0.9, epsilon=1e-5, param_dtype=jnp.float64,
                           dtype=jnp.float64, rngs=nnx.Rngs(0))
    ours.mean[...], ours.var[...] = jnp.full(3, 0.3), jnp.full(3, 2.0)
    # nnx.BatchNorm creates its statistics in float32 whatever param_dtype says (with a FutureWarning)
    theirs.scale.value, theirs.mean.value, theirs.var.value = ours.scale[...], ours.mean[...], ours.var[...]
    theirs.use_running_average = ours.use_running_average = not train
    for _ in range(2):  # the second step starts from updated statistics
        assert rel_error(ours(x), theirs(x)) <= 1e-13
    assert rel_error(ours.mean[...], theirs.mean[...]) <= 1e-13
    assert rel_error(ours.var[...], theirs.var[...]) <= 1e-13


@pytest.mark.x64
def test_float64_is_float64_everywhere():
    _, model = model_pair("float64")
    model.train()
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    floats = [a for a in jax.tree.leaves(state) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float64 for a in floats)
    x = jnp.asarray(to_jax_layout(sparse_voxels((2, 1, 16, 16, 16))))
    # the jitted step of compare_models (compiled once for this configuration by test_model)
    _, y, taps, grads, x_grad = _jax_forward_backward(label_blocks(model), x, jnp.zeros((2, 8, 8, 8, 4)))
    assert y.dtype == jnp.float64 and all(t.dtype == jnp.float64 for t in taps.values())
    assert x_grad.dtype == jnp.float64 and all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads))
    stats = [a for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat)) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert all(a.dtype == jnp.float64 for a in stats)  # still float64 after the train-mode updates


def test_bfloat16_block_computes_in_bfloat16_on_float32_parameters():
    """bfloat16 at block size in the default run (the whole V2V's check below is slow): a Basic3DBlock (conv,
    train-mode BN, ReLU) on float32 parameters, against the same block computing in float32. Each value is
    rounded to bfloat16 (u = 2^-8) about L = 3 times forward (input, conv output, BN output) and 2L backward,
    the largest entry by at most u each: (1 + u)^L - 1 = 1.2e-2 forward, 2.4e-2 backward relative to the
    largest (compare.rel_error), for a BN whose output is O(1); 1e-1 leaves a factor 4 (float32: ~1e-7)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8, 4)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((2, 8, 8, 8, 8)), jnp.float32)

    def loss(block):
        y = block(x)
        return jnp.sum(y.astype(jnp.float32) * cotangent), y

    def run(dtype):
        block = Basic3DBlock(4, 8, 3, numerics=Numerics(dtype=dtype, param_dtype=jnp.float32), rngs=nnx.Rngs(0))
        (_, y), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(block)
        return block, y, grads

    block, y, grads = run(jnp.bfloat16)
    _, y32, grads32 = run(jnp.float32)
    assert y.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(block, nnx.Param)))
    assert rel_error(np.asarray(y, np.float32), np.asarray(y32)) <= 1e-1
    kernel = lambda g: np.asarray(g["block"][0]["kernel"][...])  # noqa: E731  (the bias before BN gets ~0)
    assert kernel(grads).dtype == np.float32
    assert rel_error(kernel(grads), kernel(grads32)) <= 1e-1


@pytest.mark.slow  # 40 s on CI's 2 cores; bfloat16 compute stays in the default run at block size (above)
def test_bfloat16_compute_with_float32_parameters():
    """bf16 stores every activation and cotangent with u = 2^-9: its errors are the float32 run's errors scaled
    by u_bf16/u_f32 = 2^15 (the same conditioning, coarser rounding), within a factor 16 for the extra roundings
    (each activation and each cotangent stored in bf16, not only the sums). Forward: sqrt(L)*u ~ 3e-2 <= 1e-1."""
    torch_model, _ = model_pair("float32")
    x = sparse_voxels((2, 1, 16, 16, 16)).astype(np.float32)
    reference, target = run_torch(torch_model, x, None, train=True)
    runs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = V2VModel(1, 4, 8, numerics=Numerics(dtype=dtype, param_dtype=jnp.float32), rngs=nnx.Rngs(0))
        runs[dtype] = compare_runs(reference, run_jax(with_torch_weights(model, torch_model), x, target, train=True),
                                   train=True, tol=1e-1)
    f32, bf16 = runs[jnp.float32], runs[jnp.bfloat16]
    assert model.output_layer.kernel[...].dtype == jnp.float32
    assert all(r.fwd_rel is None or r.fwd_rel <= 1e-1 for r in bf16)
    scale = 16 * 2.0 ** 15
    for a, b in zip(f32, bf16):
        for field in ("fwd_rel", "grad_rel", "stat_rel"):
            if getattr(a, field) is not None:
                bound = scale * max(getattr(a, field), np.finfo(np.float32).eps)
                assert getattr(b, field) <= bound, (a.path, field, getattr(a, field), getattr(b, field))
