"""conftest.py's float64 switch: tests run in JAX's default float32 unless marked `x64`."""

import jax
import jax.numpy as jnp
import pytest


def test_unmarked_tests_run_in_float32_and_refuse_64_bit_types():
    assert not jax.config.jax_enable_x64
    assert jnp.asarray(1.0).dtype == jnp.float32
    with pytest.raises(ValueError, match="float64"):
        jnp.zeros(1, jnp.float64)


@pytest.mark.x64
def test_marked_tests_run_in_float64():
    assert jax.config.jax_enable_x64
    assert jnp.asarray(1.0).dtype == jnp.float64
