"""Every V2V block type, torch vs Flax: forward per sub-block, gradients of the input and of every parameter, BN
running statistics after a train-mode step; train-mode and eval-mode BatchNorm; every formulation."""

import pytest

from parity_tests.cases import BLOCKS, block_pair
from parity_tests.compare import INPUT, OUTPUT, calibrate_running_stats, compare_models, first_divergence, format_table
from v2v_jax.layers import CONV_IMPLS, UPSAMPLE_IMPLS, Numerics

# Per-block relative tolerances (compare.TOLERANCES): a block here has at most 2 convs in a row (EncoderDecoder:
# 12 conv/BN pairs on its longest path) with reductions of K <= 4*27 = 108 terms. A random-walk estimate is
# sqrt(L*K)*u: EncoderDecoder sqrt(24*108)*u = 51u = 5.7e-15 in float64 and 3.1e-6 in float32, so the
# model-wide 1e-10 and 1e-4 hold with margin; the worst-case bound L*K*u (2.9e-13, 1.6e-4 in float32) shows why
# float32 cannot be much tighter.
TOL = {"float64": 1e-10, "float32": 1e-4}


def check(rows):
    assert first_divergence(rows) is None, format_table(rows)


def _parity_cases():
    for name in BLOCKS:
        for dtype in ("float64", "float32"):
            for mode in ("train", "eval"):
                marks = [pytest.mark.x64] if dtype == "float64" else []
                if name == "encoder_decoder" and mode == "train":
                    # 16-22 s each on CI's 2 cores. The default run still compares the encoder-decoder in train mode
                    # inside the whole V2V: float64 in test_model.py (width 8), float32 in test_anchored.py.
                    marks.append(pytest.mark.slow)
                yield pytest.param(name, dtype, mode, marks=marks, id=f"{name}-{dtype}-{mode}")


@pytest.mark.parametrize("name, dtype, mode", list(_parity_cases()))
def test_block_parity(name, dtype, mode):
    torch_block, jax_block, x = block_pair(name, dtype)
    if mode == "eval":  # running statistics of another batch, so that eval differs from train
        _, _, other = block_pair(name, dtype, seed=5)
        torch_block = calibrate_running_stats(torch_block, other)
    rows = compare_models(torch_block, jax_block, x, train=mode == "train", tol=TOL[dtype])
    check(rows)
    by_path = {r.path: r for r in rows}
    assert by_path[INPUT].grad_rel is not None  # the input gradient was compared
    has_params = any(True for _ in torch_block.parameters())
    assert (by_path[OUTPUT].grad_rel is not None or name == "encoder_decoder") == has_params
    if mode == "train" and has_params:  # running statistics were compared
        assert any(r.stat_rel is not None for r in rows)


ALTERNATIVES = ([("conv", impl, case) for impl in CONV_IMPLS if impl != Numerics.conv
                 for case in ("basic_k3", "res_conv_skip")]
                + [("upsample", impl, "upsample") for impl in UPSAMPLE_IMPLS if impl != Numerics.upsample])


@pytest.mark.x64
@pytest.mark.parametrize("field,impl,name", ALTERNATIVES)
def test_alternative_formulations(field, impl, name):
    """Every formulation in CONV_IMPLS / UPSAMPLE_IMPLS besides the default, on the cheap blocks, float64."""
    torch_block, jax_block, x = block_pair(name, "float64", **{field: impl})
    check(compare_models(torch_block, jax_block, x, train=True, tol=TOL["float64"]))
