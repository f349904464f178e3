"""The default run's recipe (learning-rate schedule, integral loss, translation range) and the paper preset that
must stay the authors' configuration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2v_jax import geometry
from v2v_jax.config import RECIPE, Config, parse_config
from v2v_jax.data import cameras
from v2v_jax.train.optim import AUTHORS_RMSPROP, learning_rate, make_optimizer
from v2v_jax.train.step import GeometryConfig, ema_update, training_loss


def test_paper_preset_is_the_authors_configuration():
    """Moon et al. 2018: 88^3 input, width 32, batch 8, RMSprop(2.5e-4, alpha 0.99, eps 1e-8) at a constant rate,
    10 epochs, heatmap MSE, argmax decoding, translations of up to 4 voxels; none of the default run's choices."""
    cfg = parse_config(["--preset", "paper"])
    assert (cfg.grid, cfg.width, cfg.batch_size, cfg.epochs, cfg.optimizer, cfg.lr) == (
        88, 32, 8, 10, "rmsprop", AUTHORS_RMSPROP["lr"])
    assert (cfg.schedule, cfg.loss, cfg.decode, cfg.max_translation, cfg.cube_mm) == (
        "constant", "mse", "argmax", geometry.MAX_TRANSLATION_VOXELS, None)
    assert AUTHORS_RMSPROP == dict(lr=2.5e-4, alpha=0.99, eps=1e-8)


def test_default_run_is_the_recipe_and_flags_override_it():
    cfg = parse_config([])
    assert all(getattr(cfg, name) == value for name, value in RECIPE.items())
    assert parse_config(["--loss", "mse"]).loss == "mse"
    assert Config().loss == "mse" and Config().schedule == "constant"  # the fields keep the paper's choices


def test_cosine_schedule_warms_up_and_decays_to_zero():
    schedule = learning_rate(1e-3, "cosine", total_steps=1000, warmup_steps=100)
    values = [float(schedule(s)) for s in (0, 50, 100, 550, 1000)]
    np.testing.assert_allclose(values, [0, 5e-4, 1e-3, 5e-4, 0], atol=1e-9)  # cos(pi/2) = 0 halfway through decay
    short = learning_rate(1e-3, "cosine", total_steps=10, warmup_steps=100)  # a shorter run warms up over half
    assert float(short(5)) == pytest.approx(1e-3) and float(short(10)) == 0
    assert learning_rate(1e-3, "constant", 1000, 100) == 1e-3


def test_scheduled_optimizer_takes_the_scheduled_step():
    """Adam's first step moves each parameter by lr(0) = 0 under the warm-up, by lr itself at a constant rate."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    for lr, moved in ((learning_rate(1e-3, "cosine", 10, 5), 0.0), (1e-3, 1e-3)):
        tx = make_optimizer("adam", lr)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(-updates["w"], moved, rtol=1e-4)


def test_integral_loss_is_zero_at_the_joint_and_counts_voxels():
    """A Gaussian heatmap is symmetric about its joint, so its soft-argmax is the joint (away from the border);
    moving every joint by one heatmap cell (2 input voxels) along x costs 2/3 voxel averaged over the 3 axes."""
    coords = jnp.array([[[12.0, 10.0, 14.0], [9.0, 13.0, 11.0]]])  # (B=1, J=2, 3) on a 24^3 grid
    heatmaps = geometry.gaussian_heatmaps(coords[0], 12)[None]
    assert float(geometry.integral_l1(heatmaps, coords, beta=30.0)) == pytest.approx(0.0, abs=1e-4)
    shifted = coords + jnp.array([2.0, 0.0, 0.0])
    assert float(geometry.integral_l1(heatmaps, shifted, beta=30.0)) == pytest.approx(2 / 3, abs=1e-4)


def test_integral_training_loss_adds_the_weighted_l1_and_has_gradients():
    coords = jnp.array([[[12.0, 10.0, 14.0]]])
    pred = jax.random.normal(jax.random.key(0), (1, 12, 12, 12, 1)) * 0.1
    geo = GeometryConfig(cameras.MSRA, 24, 200.0, loss="integral", integral_weight=0.5)
    expected = geometry.heatmap_mse(pred, coords) + 0.5 * geometry.integral_l1(pred, coords, geo.beta)
    assert float(training_loss(geo)(pred, coords)) == pytest.approx(float(expected), rel=1e-6)
    grad = jax.grad(lambda p: training_loss(geo)(p, coords))(pred)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    assert training_loss(GeometryConfig(cameras.MSRA, 24, 200.0)) is geometry.heatmap_mse


def test_translation_range_is_the_configured_one():
    keys = jax.random.split(jax.random.key(0), 2000)
    for limit in (1.0, geometry.MAX_TRANSLATION_VOXELS):
        t = jax.vmap(lambda k: geometry.sample_augmentation(k, max_translation=limit).translation)(keys)
        assert float(jnp.abs(t).max()) <= limit and float(jnp.abs(t).max()) > 0.99 * limit


def test_moving_average_warms_up_then_decays_at_the_given_rate():
    """rate = min(decay, (1 + t) / (10 + t)): 2/11 after the first step, so the initial weights fade at once, and
    `decay` itself from t = (10 decay - 1) / (1 - decay) on (890 for 0.99); an integer leaf takes the new value."""
    average = {"w": jnp.array([1.0, 2.0]), "count": jnp.array(3, jnp.int32)}
    new = {"w": jnp.array([3.0, 6.0]), "count": jnp.array(4, jnp.int32)}
    for step, rate in ((1, 2 / 11), (100, 101 / 110), (890, 0.99), (5000, 0.99)):
        out = ema_update(average, new, jnp.asarray(step, jnp.int32), 0.99)
        np.testing.assert_allclose(out["w"], rate * average["w"] + (1 - rate) * new["w"], rtol=1e-6)
        assert out["count"].dtype == jnp.int32 and int(out["count"]) == 4
