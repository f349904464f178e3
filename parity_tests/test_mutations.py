"""The planted bugs: each changes its own framework's numbers and nothing else, is undone on exit, and the anchored
checker catches a diverse subset of them at a small size (a test that fails when the checker goes blind)."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from parity_tests import anchored
from parity_tests import mutations as M
from parity_tests import verdict as V
from parity_tests.test_anchored import CONFIG
from v2v_jax import convert, layers
from v2v_jax import model as jmodel
from v2v_jax.train import optim as joptim
from v2v_torch_ref import model as tmodel
from v2v_torch_ref import train as ttrain

# What a patch may touch, per framework: the product's modules and classes (and the loss the checker gives it).
TOUCHABLE = {
    V.JAX: [layers, jmodel, convert, joptim, *[getattr(layers, c) for c in ("BatchNorm3d", "Conv3d", "ConvTranspose3d")],
            *[getattr(jmodel, c) for c in ("V2VModel", "Res3DBlock", "Basic3DBlock", "Pool3DBlock", "EncoderDecoder")]],
    V.TORCH: [tmodel, ttrain, nn.BatchNorm3d, nn.Conv3d, nn.ConvTranspose3d,
              *[getattr(tmodel, c) for c in ("V2VModel", "Res3DBlock", "Basic3DBlock", "Pool3DBlock",
                                             "EncoderDecoder")]],
}
LOSSES = {V.JAX: "jax_loss", V.TORCH: "torch_loss"}


def _snapshot(framework):
    objs = {id(o): dict(vars(o)) for o in TOUCHABLE[framework]}
    objs["loss"] = getattr(anchored, LOSSES[framework])
    return objs


def _changed(before, after):
    return sorted(f"{k}.{a}" for k in before if k != "loss" for a in before[k].keys() | after[k].keys()
                  if before[k].get(a, None) is not after[k].get(a, None)) + (
        ["loss"] if before["loss"] is not after["loss"] else [])


@pytest.mark.parametrize("mutation", M.MUTATIONS, ids=lambda m: m.name)
def test_patch_touches_its_framework_only_and_is_undone(mutation):
    other = V.TORCH if mutation.framework == V.JAX else V.JAX
    mine_before, other_before = _snapshot(mutation.framework), _snapshot(other)
    with mutation.patch():
        inside = _snapshot(mutation.framework)
        assert not _changed(other_before, _snapshot(other)), "the patch reaches the other framework"
    assert _changed(mine_before, inside), "the patch changes nothing of its framework"
    assert not _changed(mine_before, _snapshot(mutation.framework)), "the patch is not undone on exit"


def test_the_suite_is_large_and_names_real_places():
    assert len(M.MUTATIONS) >= 24 and len(M.BY_NAME) == len(M.MUTATIONS)
    blocks = set(anchored.SOURCES)
    for m in M.MUTATIONS:
        assert m.framework in (V.JAX, V.TORCH) and (m.block is None or m.block in blocks), m
    assert {m.framework for m in M.MUTATIONS} == {V.JAX, V.TORCH}


# --------------------------------------------------------------------------- each bug changes its framework's numbers

TINY = anchored.Config(width=4, grid=8, joints=3, steps=2, dtype="float64")


def _differs(a: anchored.Trace, b: anchored.Trace) -> bool:
    pairs = [(a.input_grad, b.input_grad), ([a.loss], [b.loss]), (a.losses, b.losses)]
    for field in ("acts", "grads", "batch_stats", "trained"):
        pairs += [(getattr(a, field)[k], getattr(b, field)[k]) for k in getattr(b, field)]
    # beyond float64 rounding: a hand-written BN differs from F.batch_norm by ~1e-16
    return any(not np.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in pairs)


@pytest.fixture(scope="module")
def tiny_inputs():
    return anchored.make_inputs(TINY)


@pytest.fixture(scope="module")
def baseline(tiny_inputs):
    """The unpatched trace of each framework in each precision, computed once."""
    cache = {}

    def get(framework, dtype="float64"):
        if (framework, dtype) not in cache:
            cache[framework, dtype] = anchored.TRACERS[framework](TINY, tiny_inputs, dtype)
        return cache[framework, dtype]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mutation", M.MUTATIONS, ids=lambda m: m.name)
def test_mutation_changes_its_framework_and_is_undone(mutation, tiny_inputs, baseline):
    """Each bug changes its framework's float64 trace (a rounding-only bug: its float32 trace, and not the
    float64 one), and a run after exit equals the unpatched one."""
    trace = anchored.TRACERS[mutation.framework]
    dtype = "float32" if mutation.rounding_only else "float64"
    before = baseline(mutation.framework, dtype)
    with mutation.patch():
        planted = trace(TINY, tiny_inputs, dtype)
        if mutation.rounding_only:
            assert not _differs(trace(TINY, tiny_inputs, "float64"), baseline(mutation.framework))
        if mutation.op == M.INIT:  # the checker gives both frameworks the same weights: only a new model shows it
            weights = [m.weight for m in tmodel.V2VModel(1, 3, 4).modules() if isinstance(m, nn.Conv3d)]
    if mutation.op == M.INIT:
        assert 5e-3 < float(torch.cat([w.flatten() for w in weights]).std()) < 2e-2
    else:
        assert _differs(planted, before)
    assert not _differs(trace(TINY, tiny_inputs, dtype), before)


@pytest.mark.slow
@pytest.mark.parametrize("framework", [V.JAX, V.TORCH])
def test_all_patches_of_one_framework_leave_the_other_alone(framework, tiny_inputs, baseline):
    other = V.TORCH if framework == V.JAX else V.JAX
    trace = anchored.TRACERS[other]
    before = baseline(other)
    with contextlib.ExitStack() as stack:
        for m in M.MUTATIONS:
            if m.framework == framework:
                stack.enter_context(m.patch())
        assert not _differs(trace(TINY, tiny_inputs, "float64"), before)


# --------------------------------------------------------------------------------------- the checker catches them

# test_anchored's configuration: its unpatched runs are cached, so each planted bug here costs only its own
# framework's two runs and the op localiser. Measured (2 shared cores, load ~5): the PyTorch bugs 2-24 s each, the
# JAX one 134 s (two new compilations); the default run keeps the three cheapest, the rest are slow.
DEFAULT_SUBSET = ("avg_pool_once", "rmsprop_alpha_0.9", "init_std_1e-2")
SLOW_SUBSET = ("bn_biased_running_var", "bn_eps_1e-3", "bn_mean_without_gradient", "conv_kernel_flipped",
               "final_relu_added", "loss_sum_over_joints", "block_relu_dropped")


# Each must be named at the mutation's block (any block where it declares none), framework and op, because:
# - avg_pool_once: fed the float64 truth of the pool's input, PyTorch's pool leaves NumPy's max (ops.localise_op);
# - rmsprop_alpha_0.9: PyTorch's first RMSprop step is not NumPy's on its own float64 gradients
#   (anchored.judged_alone); the optimizer lies in no block;
# - init_std_1e-2: PyTorch's own init of front_layers.0's conv is ~10 sigma off the authors' (anchored.init_rows);
# - bn_biased_running_var: the variance PyTorch writes to the running variance is not NumPy's unbiased one;
# - bn_eps_1e-3: every JAX BN normalises off NumPy's eps-1e-5 one; the first, front_layers.0's, is named;
# - bn_mean_without_gradient: a bug in one JAX layer, which the op localiser reaches only by taking the block from
#   a whole V2V built inside the patch; JAX's BN backward leaves NumPy's;
# - conv_kernel_flipped: the flipped kernel's conv leaves NumPy's cross-correlation, in PyTorch;
# - block_relu_dropped: each op of PyTorch's back_layers.1 is right alone, and the block run whole leaves the
#   NumPy chain of its ops, equal to its value before the ReLU (ops.composition_deviation);
# - loss_sum_over_joints: every output agrees and PyTorch's loss is not NumPy's MSE of its own output
#   (anchored.judged_alone);
# except the op in NAMED_OP.
NAMED_OP = {
    # the ReLU sits inside the output conv's forward and the op localiser has no ReLU after that conv to name:
    # it names the op whose output the ReLU changes, the conv, in the right block and framework
    "final_relu_added": M.CONV,
}


@pytest.mark.parametrize("name", [*DEFAULT_SUBSET, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_SUBSET)])
def test_planted_bug_is_caught_and_localised(name):
    """Caught, and named at the mutation's block, framework and op (see above)."""
    mutation = M.BY_NAME[name]
    outcome = M.run(mutation, CONFIG)
    row = M.format_row(outcome)
    assert outcome.caught, row
    assert outcome.block_ok and outcome.framework_ok, row
    assert M.op_kind(outcome.named_op) == NAMED_OP.get(name, mutation.op), row


@pytest.mark.slow  # 243 s wall, 119 s CPU at load 19
def test_a_dropped_skip_join_is_localised_to_the_join():
    """A bug between blocks: the encoder-decoder's own op, its skip join, is named (docs/parity.md)."""
    outcome = M.run(M.BY_NAME["skip_join_dropped"], CONFIG)
    assert outcome.localised, M.format_row(outcome)


def test_unmodified_code_is_not_flagged():
    outcome = M.run(None, CONFIG)
    assert not outcome.caught, M.format_row(outcome)
