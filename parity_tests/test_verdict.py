"""The metrics and the verdict rule (parity_tests/verdict.py) and the judging of whole runs
(parity_tests/anchored.py) on synthetic traces: each check here fails if the rule goes blind or cries wolf."""

import dataclasses

import numpy as np
import pytest

from parity_tests import anchored as A
from parity_tests import verdict as V

U32 = V.unit_roundoff("float32")


def test_errors_are_norm_wise():
    rng = np.random.default_rng(0)
    t = rng.standard_normal(100_000)
    e = V.errors(t * (1 + 1e-3), t)
    assert e.rel_fro == pytest.approx(1e-3, rel=1e-9)
    assert e.rmse == pytest.approx(1e-3 * np.sqrt(np.mean(t ** 2)), rel=1e-9)
    # |t| 1e-3 of the time exceeds ~3.29 sigma: the quantile of |diff| / rms(t) is 3.29e-3
    assert e.q999 == pytest.approx(3.29e-3, rel=0.05)


def test_quantile_ignores_a_few_outliers_that_max_rel_would_not():
    t = np.ones(10_000)
    a = t.copy()
    a[:5] += 1.0  # 0.05 % of the entries off by 100 %
    e = V.errors(a, t)
    assert e.q999 == 0.0 and e.rel_fro == pytest.approx(np.sqrt(5 / 10_000))
    a[:20] += 1.0  # 0.2 %: now inside the top 0.1 %
    assert V.errors(a, t).q999 == pytest.approx(1.0)


def test_errors_of_special_tensors():
    assert V.errors([1.0, 2.0], [1.0, 2.0]) == V.ZERO
    assert V.errors([0.0, 1e-9], [0.0, 0.0]).rel_fro == 1.0  # zero truth: scaled by the value itself
    assert V.errors([np.nan, 1.0], [1.0, 1.0]) == V.INF
    assert V.errors([np.inf], [np.inf]) == V.ZERO
    with pytest.raises(ValueError, match="shapes differ"):
        V.errors(np.ones(3), np.ones(4))


def _e(x, q=None):
    return V.Errors(x, x, x if q is None else q)


def test_rule_three_outcomes():
    m, floor = V.RULE.multiplier, V.RULE.floor * U32
    base = 1e-4  # well above the floor
    assert V.rounding_verdict(_e(base), _e(base), "float32") == V.WITHIN
    assert V.rounding_verdict(_e(base * m * 0.99), _e(base), "float32") == V.WITHIN
    assert V.rounding_verdict(_e(base * m * 1.01 + floor), _e(base), "float32") == V.deviates(V.JAX)
    assert V.rounding_verdict(_e(base), _e(base * m * 1.01 + floor), "float32") == V.deviates(V.TORCH)


def test_rule_floor_and_quantile():
    floor = V.RULE.floor * U32
    # both at the rounding of a single operation: any ratio is rounding
    assert V.rounding_verdict(_e(0.9 * floor), _e(0.0), "float32") == V.WITHIN
    assert V.rounding_verdict(_e(1.1 * floor), _e(0.0), "float32") == V.deviates(V.JAX)
    # a localised error that the Frobenius norm dilutes is caught by the quantile
    assert V.rounding_verdict(_e(1e-5, q=1.0), _e(1e-5), "float32") == V.deviates(V.JAX)
    # the unit roundoff sets the scale: the same numbers are rounding in bfloat16
    assert V.rounding_verdict(_e(1.1 * floor), _e(0.0), "bfloat16") == V.WITHIN


def test_float64_bound_scales_with_the_conditioning():
    low = _e(1e-2)  # a badly conditioned tensor in float32: float64 rounding is amplified alike
    expected = 1e-2 * V.unit_roundoff("float64") / U32
    assert V.float64_bound(low, low, "float32", "rel_fro") > 10 * expected
    assert V.float64_bound(V.ZERO, V.ZERO, "float32", "rel_fro") == V.FLOAT64_FLOOR * V.unit_roundoff("float64")
    # float64 alone: the perturbed run's error is the conditioning times the perturbation's size, not u
    perturbed = _e(1e-10)  # parameters after RMSprop steps, moved by 1e-10 by a 2^-50 perturbation (measured)
    floor = V.FLOAT64_FLOOR * V.unit_roundoff("float64")
    assert V.float64_bound(perturbed, V.ZERO, "float64", "rel_fro") > 10 * 1e-10 * V.unit_roundoff("float64") / \
        V.PERTURBATION > 10 * floor


# ------------------------------------------------------------------------------------ judging synthetic runs


def _trace(rng, noise=0.0, grad_noise=0.0):
    """A two-block fake run: front_layers.0 (conv + BN) then the output layer."""
    def arr(*shape, seed):
        return np.random.default_rng(seed).standard_normal(shape)

    def jitter(a, eps):  # relative error exactly eps, the same quantile for every rng: ratios of exactly 1
        return a * (1 + eps * rng.choice([-1.0, 1.0], a.shape))

    bn = "front_layers.0.block.1"
    acts = {"front_layers.0": arr(1, 4, 4, 4, 4, seed=1), A.OUTPUT: arr(1, 2, 4, 4, 4, seed=2)}
    grads = {"front_layers.0.block.0.weight": arr(4, 1, 3, 3, 3, seed=3), "front_layers.0.block.0.bias":
             arr(4, seed=4), f"{bn}.weight": arr(4, seed=5), f"{bn}.bias": arr(4, seed=6),
             "output_layer.weight": arr(2, 4, 1, 1, 1, seed=7), "output_layer.bias": arr(2, seed=8)}
    stats = {f"{bn}.running_mean": arr(4, seed=9), f"{bn}.running_var": np.abs(arr(4, seed=10))}
    trained = {**{k: v + 1 for k, v in grads.items()}, **stats}
    return A.Trace(acts={k: jitter(v, noise) for k, v in acts.items()}, loss=0.5 * (1 + noise),
                   input_grad=jitter(arr(1, 1, 4, 4, 4, seed=11), grad_noise),
                   grads={k: jitter(v, grad_noise) for k, v in grads.items()},
                   batch_stats={k: jitter(v, noise) for k, v in stats.items()},
                   trained={k: jitter(v, noise) for k, v in trained.items()}, losses=[0.5, 0.4],
                   stepped={k: v + 1 for k, v in grads.items()}, loaded=dict(grads), decisions=[])


CONFIG = A.Config(width=8, grid=8, batch=1, joints=2, steps=2)


def _runs(rng, low_noise, grad_noise=None, f64_noise=0.0):
    grad_noise = low_noise if grad_noise is None else grad_noise
    exact = _trace(rng, f64_noise, f64_noise)
    return {"float64": exact, "aligned": exact, "low": _trace(rng, low_noise, grad_noise)}


def test_judge_says_within_rounding_for_equal_rounding():
    rng = np.random.default_rng(0)
    rows = A.judge(_runs(rng, 1e-4), _runs(rng, 1e-4), CONFIG)  # far above the floor
    assert rows and all(r.verdict == V.WITHIN for r in rows), [(r.block, r.quantity, r.verdict) for r in rows]
    assert {r.quantity for r in rows} >= {"activation", "input gradient", "parameter gradient", "BN batch mean",
                                         "BN batch variance", "parameters after 2 steps", "loss"}
    # the conv bias before BN is left out of the trained parameters, the weight is there
    trained = [r for r in rows if r.quantity == "parameters after 2 steps"]
    assert {r.layer for r in trained} == {"front_layers.0.block.0", "front_layers.0.block.1", "output_layer"}


def test_judge_names_the_framework_that_rounds_worse():
    rng = np.random.default_rng(0)
    rows = A.judge(_runs(rng, 1e-4, grad_noise=1e-2), _runs(rng, 1e-4), CONFIG)
    bad = {r.quantity for r in rows if r.verdict == V.deviates(V.JAX)}
    assert bad == {"parameter gradient", "input gradient"}
    assert all(r.verdict == V.WITHIN for r in rows if r.quantity == "activation")
    site = A.first_site(rows, {b: {V.JAX: 1.0, V.TORCH: 1.0} for b in A.SOURCES})
    # the backward pass meets the output layer's gradient first
    assert site == A.Site((A.OUTPUT,), "parameter gradient", V.JAX, False)


def test_judge_flags_float64_disagreement_whatever_the_rounding():
    rng = np.random.default_rng(0)
    jax_runs = _runs(rng, 1e-6)
    jax_runs["float64"] = _trace(np.random.default_rng(1), 1e-9, 0.0)  # a 1e-9 change: no float64 rounding
    rows = A.judge(jax_runs, _runs(rng, 1e-6), CONFIG)
    assert all(not r.float64_ok and r.verdict == A.DISAGREE for r in rows if r.quantity == "activation")
    assert all(r.float64_ok for r in rows if r.quantity == "parameter gradient")
    site = A.first_site(rows, {})
    assert site == A.Site(("front_layers.0",), "activation", None, True)
    assert A.overall(rows, None) == A.DISAGREE
    found = A.Divergence("front_layers.0", "conv", V.JAX, "activation", "")
    assert A.overall(rows, found) == V.deviates(V.JAX)


def test_amplification_blames_the_block_that_grows_the_error_not_its_successors():
    """JAX's error grows 100x in front_layers.2 and is carried along after it."""
    blocks = list(A.SOURCES)
    rows = [A.TensorRow(b, "activation", "", V.ZERO, V.ZERO, V.ZERO, True,
                        V.deviates(V.JAX) if i >= 3 else V.WITHIN) for i, b in enumerate(blocks)]
    amp = {b: {V.JAX: 100.0 if b == "front_layers.2" else 1.0, V.TORCH: 1.0} for b in blocks}
    assert blocks[3] == "front_layers.3"
    rows[2] = dataclasses.replace(rows[2], verdict=V.deviates(V.JAX))
    assert A.first_site(rows, amp) == A.Site(("front_layers.2",), "activation", V.JAX, False)


def test_a_wrong_gradient_is_looked_for_in_the_backward_of_its_consumers_too():
    """A bug in max-pool's backward shows first in the gradients of the block before the pool."""
    blocks = ["encoder_decoder.encoder_res1", "encoder_decoder.encoder_res2"]
    rows = [A.TensorRow(b, "parameter gradient", b + ".res_branch.0", V.ZERO, V.ZERO, V.ZERO, b != blocks[0],
                        V.WITHIN if b != blocks[0] else A.DISAGREE) for b in blocks]
    site = A.first_site(rows, {})
    assert site.blocks == (blocks[0], "encoder_decoder.skip_res2", "encoder_decoder.encoder_pool2")


def test_init_scores_against_the_authors_distribution():
    rng = np.random.default_rng(0)
    good = {"c.weight": rng.normal(0, 1e-3, (32, 16, 3, 3, 3)), "c.bias": np.zeros(32),
            "bn.weight": rng.uniform(0, 1, 64), "bn.bias": np.zeros(64), "bn.running_mean": np.zeros(64),
            "bn.running_var": np.ones(64)}
    assert max(A.init_scores(good).values()) < 4  # a correct draw: z-scores of a few at most
    for key, wrong in (("c.weight", good["c.weight"] * 10), ("c.weight", good["c.weight"] * 1.05),
                       ("c.weight", good["c.weight"] + 1e-4), ("bn.weight", np.ones(64)),
                       ("c.bias", np.full(32, 1e-9)), ("bn.running_var", np.zeros(64))):
        assert A.init_scores({**good, key: wrong})[key] > A.INIT_Z, key


def test_the_optimizer_is_judged_against_numpy_rmsprop():
    """Each framework's first step against RMSprop's in NumPy on its own gradients: a step with torch's alpha
    and eps passes, the same step with alpha 0.9 (Keras's rho) is named, in its framework only."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(0, 1e-3, 1000), "b": rng.uniform(0, 1, 10)}
    grads = {"w": rng.normal(0, 3e-7, 1000), "b": rng.normal(0, 1e-5, 10)}
    right = {k: weights[k] - A.LR * g / (np.sqrt(g * g / 100) + 1e-8) for k, g in grads.items()}
    wrong = {k: weights[k] - A.LR * g / (np.sqrt(g * g / 10) + 1e-8) for k, g in grads.items()}

    def runs(stepped):
        return {"float64": dataclasses.replace(_trace(rng), grads=grads, stepped=stepped)}

    both, target = {V.JAX: weights, V.TORCH: weights}, np.zeros(1)
    assert A.judged_alone({V.JAX: runs(right), V.TORCH: runs(right)}, both, target, "optimizer") == []
    assert A.judged_alone({V.JAX: runs(right), V.TORCH: runs(wrong)}, both, target, "optimizer") == [V.TORCH]


def test_a_loss_that_disagrees_on_an_output_that_agrees_is_the_loss():
    """The loss summed over the joints instead of averaged: the output agrees, the loss is J times the MSE."""
    rng = np.random.default_rng(0)
    right = _trace(rng)
    target = np.zeros_like(right.acts[A.OUTPUT])
    right = dataclasses.replace(right, loss=float(np.mean(np.square(right.acts[A.OUTPUT]))))
    summed = dataclasses.replace(right, loss=2 * right.loss)  # 2 joints
    jax_runs = {"float64": right, "low": right, "aligned": right}
    torch_runs = {"float64": summed, "low": summed, "aligned": summed}
    rows = A.judge(jax_runs, torch_runs, CONFIG)
    assert [r.quantity for r in rows if not r.float64_ok] == ["loss"]
    assert A.first_site(rows, {}) == A.Site((A.OUTPUT,), "loss", None, True)
    assert A.judged_alone({V.JAX: jax_runs, V.TORCH: torch_runs}, {}, target, "loss") == [V.TORCH]


def test_a_parameter_loaded_wrongly_is_the_first_divergence():
    """A converter that rounds one kernel through float16 (relative 2.4e-4): named at its layer, before the run."""
    rng = np.random.default_rng(0)
    right = _trace(rng)
    key = "front_layers.0.block.0.weight"
    wrong = dataclasses.replace(right, loaded={**right.loaded, key: right.loaded[key].astype(np.float16)})
    given = {fw: right.loaded for fw in (V.JAX, V.TORCH)}
    runs = {V.JAX: {"float64": wrong}, V.TORCH: {"float64": right}}
    assert A.misloaded({V.JAX: {"float64": right}, V.TORCH: {"float64": right}}, given, CONFIG) is None
    found = A.misloaded(runs, given, CONFIG)
    assert (found.block, found.op, found.framework) == ("front_layers.0", "block.0 (conv)", V.JAX)
