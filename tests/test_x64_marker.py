"""conftest.py's float64 switch: tests run in JAX's default float32 unless marked `x64`."""

from pathlib import Path

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


pytest_plugins = ["pytester"]


def test_marker_in_a_planted_suite(pytester):
    """A marked module's module-scoped fixture computes in float64; an unmarked test that asks for float64 fails and
    is pointed at the marker."""
    pytester.makeconftest((Path(__file__).parent.parent / "conftest.py").read_text())
    pytester.makeini('[pytest]\nmarkers =\n    x64: float64\n')
    pytester.makepyfile(test_marked="""
        import jax.numpy as jnp, pytest
        pytestmark = pytest.mark.x64

        @pytest.fixture(scope="module")
        def table():
            return jnp.zeros(2, jnp.float64)

        def test_float64(table):
            assert table.dtype == jnp.float64
    """, test_unmarked="""
        import jax.numpy as jnp

        def test_float64():
            jnp.zeros(2, jnp.float64)
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*mark it @pytest.mark.x64*", "FAILED test_unmarked.py::test_float64*"])
