"""The aligned float64 truth (parity_tests/decisions.py): imposing a run's own decisions changes nothing, imposing
other decisions is obeyed, and flipped decisions are scored by their distance from the boundary."""

import dataclasses

import numpy as np
import pytest
from torch import nn

from parity_tests import anchored as A
from parity_tests import decisions as D
from parity_tests import verdict as V
from v2v_torch_ref import model as tmodel

CONFIG = A.Config(width=4, grid=8, batch=2, joints=2, steps=1)  # batch 2: torch BN needs 2 values at 1^3


@pytest.mark.x64
@pytest.mark.parametrize("framework", [pytest.param(V.JAX, marks=pytest.mark.slow), V.TORCH])  # JAX: 3 compiles
def test_imposed_decisions_are_obeyed_and_own_decisions_change_nothing(framework):
    inputs = A.make_inputs(CONFIG)
    trace = A.TRACERS[framework]
    free = trace(CONFIG, inputs, "float64")
    own = trace(CONFIG, inputs, "float64", imposed=free.decisions)
    # where(x > 0, x, 0) and max(x, 0), and the winner's value and the window's maximum, are the same numbers:
    # the same function, up to the order XLA fuses the rest in (a few float64 roundings)
    # (the checker's tensors: a conv bias before BN, whose exact gradient is 0, goes with its weight)
    free_tensors, own_tensors = A.tensors(free, CONFIG.steps), A.tensors(own, CONFIG.steps)
    worst = max(free_tensors, key=lambda k: V.errors(own_tensors[k], free_tensors[k]).rel_fro)
    assert V.errors(own_tensors[worst], free_tensors[worst]).rel_fro <= 1e-13, worst
    kinds = [k.split()[1] for k in free.decisions[0]]
    modules = list(tmodel.V2VModel(1, CONFIG.joints, CONFIG.width).modules())
    relus = sum(isinstance(m, nn.ReLU) for m in modules) + sum(isinstance(m, tmodel.Res3DBlock) for m in modules)
    pools = sum(isinstance(m, tmodel.Pool3DBlock) for m in modules)  # a Res3DBlock adds one ReLU after its sum
    assert (kinds.count("relu"), kinds.count("pool2"), len(kinds)) == (relus, pools, relus + pools), kinds
    # the stem's ReLU told that every input is negative passes nothing: the stem's output and weight gradient are 0
    stem = next(iter(free.decisions[0]))
    negative = [{k: (-np.ones_like(v) if k == stem else v) for k, v in free.decisions[0].items()}]
    dead = trace(CONFIG, inputs, "float64", imposed=negative)
    assert not dead.acts["front_layers.0"].any() and not dead.grads["front_layers.0.block.0.weight"].any()
    assert free.acts["front_layers.0"].any()


def test_flip_scores_measure_each_flip_from_its_boundary_in_rms_errors():
    rng = np.random.default_rng(0)
    exact = rng.standard_normal((1, 2, 4, 4, 4))
    noise = 1e-6 * rng.choice([-1.0, 1.0], exact.shape)  # rms exactly 1e-6
    low = exact + noise
    assert D.flip_scores({"000 relu": low}, {"000 relu": exact}) == D.Flips(128, 0, 0.0, "")
    near = exact.copy()
    near.flat[5] = -0.5e-6 * np.sign(noise.flat[5])  # rounding carries it across zero
    flips = D.flip_scores({"000 relu": near + noise}, {"000 relu": near})
    assert (flips.flipped, flips.worst_key) == (1, "000 relu") and flips.worst == pytest.approx(0.5)
    far = low.copy()
    far.flat[7] = -exact.flat[7]  # a decision taken the other way with the bulk's errors at 1e-6
    flips = D.flip_scores({"000 relu": far}, {"000 relu": exact})
    assert flips.flipped == 1 and flips.worst > 1e3 * A.FLIP_BOUND


def test_flip_scores_of_a_pool_are_the_float64_gap_to_the_low_precision_winner():
    rng = np.random.default_rng(0)
    exact = rng.standard_normal((1, 1, 2, 2, 4))  # two 2^3 windows, along the last axis
    low = exact + 1e-7 * rng.choice([-1.0, 1.0], exact.shape)  # rms exactly 1e-7
    exact[0, 0, 0, 0, 0], exact[0, 0, 1, 1, 1] = 10.0, 10.0 - 2e-7  # the first window's float64 winner: (0, 0, 0)
    low[0, 0, 0, 0, 0], low[0, 0, 1, 1, 1] = 10.0, 10.0 + 2e-7  # rounding makes (1, 1, 1) the winner
    flips = D.flip_scores({"000 pool2": low}, {"000 pool2": exact})
    assert (flips.decisions, flips.flipped) == (2, 1) and flips.worst == pytest.approx(2.0)  # 2e-7 / 1e-7
