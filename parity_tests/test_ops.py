"""The op-level localiser: its NumPy definitions against torch's float64 ops, unmodified code within the bands at
width 32, planted bugs named at the right op and framework."""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parity_tests import mutations, ops
from parity_tests.cases import rectified_normal
from parity_tests.compare import OUTPUT
from v2v_jax import layers
from v2v_jax import model as jmodel

# float64 NumPy vs torch: reductions of K <= 4 * 27 terms, so ~K u = 1.2e-14 at worst; 1e-12 leaves a margin.
DEFINITION_TOL = 1e-12


def _close(a, b):
    a, b = np.asarray(a), b.detach().numpy()
    assert np.abs(a - b).max() <= DEFINITION_TOL * max(np.abs(b).max(), 1e-300)


def _t(a):
    return torch.tensor(a, requires_grad=True)


def test_numpy_definitions_match_torch_float64():
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, 4, 5, 6, 4)), rng.standard_normal((2, 3, 5, 6, 4))
    w, b = rng.standard_normal((3, 4, 3, 3, 3)), rng.standard_normal(3)
    xt, wt, bt = _t(x), _t(w), _t(b)
    y = F.conv3d(xt, wt, bt, padding=1)
    y.backward(torch.tensor(g))
    _close(ops.np_conv(x, w, b, 1), y)
    dx, dp = ops.np_conv_vjp(x, w, 1, g)
    for mine, theirs in ((dx, xt.grad), (dp["weight"], wt.grad), (dp["bias"], bt.grad)):
        _close(mine, theirs)

    wu = rng.standard_normal((4, 3, 2, 2, 2))
    xt, wt, bt = _t(x), _t(wu), _t(b)
    y = F.conv_transpose3d(xt, wt, bt, stride=2)
    gu = rng.standard_normal(tuple(y.shape))
    y.backward(torch.tensor(gu))
    _close(ops.np_upsample(x, wu, b), y)
    dx, dp = ops.np_upsample_vjp(x, wu, gu)
    for mine, theirs in ((dx, xt.grad), (dp["weight"], wt.grad), (dp["bias"], bt.grad)):
        _close(mine, theirs)

    gamma, beta = rng.random(4), rng.standard_normal(4)
    running = (rng.standard_normal(4), rng.random(4) + 0.5)
    for train in (True, False):
        xt, gt, bt = _t(x), _t(gamma), _t(beta)
        rm, rv = (torch.tensor(r.copy()) for r in running)
        y = F.batch_norm(xt, rm, rv, gt, bt, train, ops.BN_MOMENTUM, ops.BN_EPS)
        y.backward(torch.tensor(x[::-1].copy()))
        _close(ops.np_bn(x, gamma, beta, running, train), y)
        dx, dp = ops.np_bn_vjp(x, gamma, running, train, x[::-1])
        for mine, theirs in ((dx, xt.grad), (dp["weight"], gt.grad), (dp["bias"], bt.grad)):
            _close(mine, theirs)
        if train:
            for mine, theirs in zip(ops.np_bn_running(x, running), (rm, rv)):
                _close(mine, theirs)

    xp = np.round(rng.random((2, 3, 5, 6, 4)) * 2)  # ties, and an odd depth (a cropped partial window)
    xt = _t(xp)
    y = F.max_pool3d(xt, 2, 2)
    gp = rng.standard_normal(tuple(y.shape))
    y.backward(torch.tensor(gp))
    _close(ops.np_max_pool(xp, 2), y)
    _close(ops.np_max_pool_vjp(xp, 2, gp), xt.grad)


@pytest.fixture(scope="module")
def weights():
    return ops.reference_case(width=32, grid=16, batch=2, joints=21, seed=0)[0]


# Width-32 blocks of V2V on 4^3 inputs (convolutions do not care about the grid; a small one keeps the test short).
CASES = {"front_layers.0": ((2, 1, 6, 6, 6), (2, 16, 6, 6, 6)),
         "encoder_decoder.encoder_res1": ((2, 32, 4, 4, 4), (2, 64, 4, 4, 4)),
         "encoder_decoder.skip_res2": ((2, 64, 4, 4, 4), (2, 64, 4, 4, 4)),
         "encoder_decoder.decoder_upsample1": ((2, 64, 4, 4, 4), (2, 32, 8, 8, 8)),
         "encoder_decoder.encoder_pool2": ((2, 64, 4, 4, 4), (2, 64, 2, 2, 2))}


def _case(block, seed=1):
    x_shape, g_shape = CASES[block]
    return rectified_normal(x_shape, seed=seed), np.random.default_rng(seed).standard_normal(g_shape)


@pytest.mark.parametrize("block", ["encoder_decoder.encoder_res1", "encoder_decoder.decoder_upsample1",
                                   "encoder_decoder.encoder_pool2",
                                   pytest.param("encoder_decoder.skip_res2", marks=pytest.mark.slow),
                                   pytest.param("front_layers.0", marks=pytest.mark.slow)])
def test_unmodified_blocks_within_rounding_float32(weights, block):
    x, g = _case(block)
    rows = ops.op_errors(block, weights, x, g, "float32")
    assert {r.kind for r in rows} >= ({"pool"} if "pool" in block else {"BN normalise", "BN statistics", "ReLU"})
    assert ops.first_deviation(rows) is None, ops.format_table(rows)


@pytest.mark.parametrize("tf32", [False, pytest.param(True, marks=pytest.mark.slow)])  # True: another compile
def test_unmodified_output_and_loss_within_rounding(weights, tf32):
    """tf32 (on the CPU, where JAX's default precision is full float32): the conv is judged with TF32's unit
    roundoff, the loss with float32's."""
    x = rectified_normal((2, 32, 4, 4, 4), seed=2)
    target = np.random.default_rng(3).random((2, 21, 4, 4, 4))
    rows = ops.op_errors(OUTPUT, weights, x, None, "float32", target=target, tf32=tf32)
    assert [r.kind for r in rows if r.quantity == "forward"] == ["conv", "loss"]
    assert {(r.kind, r.rounding) for r in rows} == {("conv", "tf32" if tf32 else "float32"), ("loss", "float32")}
    assert ops.first_deviation(rows) is None, ops.format_table(rows)


@contextlib.contextmanager
def torch_bn_eps_1e_3():
    batch_norm = F.batch_norm

    def planted(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, 1e-3)

    with mock.patch.object(F, "batch_norm", planted):
        yield


@contextlib.contextmanager
def jax_flipped_kernel():
    conv3d = layers.conv3d

    def planted(x, kernel, padding, impl="xla", precision=None):
        if kernel.shape[0] > 1:
            kernel = kernel[::-1, ::-1, ::-1]
        return conv3d(x, kernel, padding, impl, precision)

    with mock.patch.object(layers, "conv3d", planted):
        yield


@pytest.mark.x64
@pytest.mark.parametrize("dtype", ["float64", "float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_planted_bugs_named(weights, dtype):
    block = "encoder_decoder.decoder_upsample1"
    x, g = _case(block)
    found = ops.localise_op(block, weights, x, g, dtype, torch_patch=torch_bn_eps_1e_3)
    assert (found.op, found.kind, found.framework, found.quantity) == ("block.1", "BN normalise", ops.TORCH,
                                                                         "forward"), found
    block = "front_layers.0"
    x, g = _case(block)
    found = ops.localise_op(block, weights, x, g, dtype, jax_patch=jax_flipped_kernel)
    assert (found.op, found.kind, found.framework, found.quantity) == ("block.0", "conv", ops.JAX, "forward"), found


@pytest.mark.slow  # 3-6 s of CPU (both frameworks' encoder-decoder code traced)
def test_encoder_decoder_joins_within_rounding_and_a_dropped_join_named():
    """The encoder-decoder's own ops are its two skip joins: within rounding unmodified, and PyTorch's
    `skip_join_dropped` (parity_tests/mutations.py) named at the first join. Width 4, grid 8 (the encoder-decoder
    at 4^3): a join is one add whatever the size."""
    weights, x, target = ops.reference_case(width=4, grid=8, batch=2, joints=3, seed=0)
    truth = ops.truth_from_torch(weights, x, target, "encoder_decoder")
    rows = ops.op_errors("encoder_decoder", weights, truth.x, truth.cotangent, "float32")
    assert [(r.op, r.kind) for r in rows if r.quantity == "forward"] == [("(x + skip_x2)", "residual add"),
                                                                         ("(x + skip_x1)", "residual add")]
    assert ops.first_deviation(rows) is None, ops.format_table(rows)
    found = ops.localise_op("encoder_decoder", weights, truth.x, truth.cotangent, "float32",
                            torch_patch=mutations.BY_NAME["skip_join_dropped"].patch)
    assert (found.block, found.op, found.kind, found.framework, found.quantity) == (
        "encoder_decoder", "(x + skip_x2)", "residual add", ops.TORCH, "forward"), found


# One block of each kind: Basic k7 (the stem), pool, Res with a conv skip, Res with the identity, upsample, Basic k1.
COMPOSED = ("front_layers.0", "front_layers.1", "front_layers.2", "encoder_decoder.mid_res",
            "encoder_decoder.decoder_upsample1", "back_layers.1")


@contextlib.contextmanager
def jax_basic_block_without_relu():
    with mock.patch.object(jmodel.Basic3DBlock, "__call__", lambda b, x: b._record(b.block[1](b.block[0](x)))):
        yield


@pytest.mark.x64
def test_unmodified_blocks_compose_their_ops_and_a_skipped_relu_is_named():
    """Each leaf block of V2V run whole in float64, in both frameworks, against the NumPy chain of its ops: within
    verdict.ALONE_BOUND unmodified (width 8, 16^3, the inputs and cotangents of a float64 V2V); a Basic3DBlock
    whose forward skips its ReLU is named at that ReLU in the framework it was planted in, where judging each op
    alone finds nothing. One block of each kind (COMPOSED)."""
    weights, x, target = ops.reference_case(width=8, grid=16, batch=2, joints=3, seed=0)
    truths = ops.truths_from_torch(weights, x, target, COMPOSED)
    for block, truth in truths.items():
        assert ops.composition_deviation(block, weights, truth.x, truth.cotangent) is None, block
    truth = truths["back_layers.1"]
    assert ops.localise_op("back_layers.1", weights, truth.x, truth.cotangent, "float64",
                           torch_patch=mutations.BY_NAME["block_relu_dropped"].patch) is None
    for framework, patch in ((ops.TORCH, dict(torch_patch=mutations.BY_NAME["block_relu_dropped"].patch)),
                             (ops.JAX, dict(jax_patch=jax_basic_block_without_relu))):
        found = ops.composition_deviation("back_layers.1", weights, truth.x, truth.cotangent, **patch)
        assert (found.op, found.kind, found.framework, found.quantity) == (
            "block.2 skipped", "ReLU", framework, "forward"), found
