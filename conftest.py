"""Test-session set-up shared by parity_tests/ and tests/.

Tests run in JAX's default configuration (float32), as users run the product. A test or module marked `x64` runs
inside `jax.enable_x64(True)` (float64 parity and reference checks). Outside it, asking JAX for a 64-bit type is an
error instead of a silent float32 (`jax_explicit_x64_dtypes`), so library code cannot come to rely on float64.
"""

import contextlib

import jax
import pytest

jax.config.update("jax_explicit_x64_dtypes", "error")


def _x64_if_marked(node):
    return jax.enable_x64(True) if node.get_closest_marker("x64") else contextlib.nullcontext()


@pytest.fixture(autouse=True, scope="module")
def _x64_module(request):
    """Module-scoped, so that a marked module's module-scoped fixtures compute in float64 too."""
    with _x64_if_marked(request.node):
        yield


@pytest.fixture(autouse=True)
def _x64_test(request):
    with _x64_if_marked(request.node):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Points a test that failed on a refused 64-bit type at the marker."""
    report = yield
    if report.failed and call.excinfo is not None and "Explicitly requested dtype" in str(call.excinfo.value):
        report.sections.append(("x64", "this test asks JAX for a 64-bit type: mark it @pytest.mark.x64 (conftest.py)"))
    return report
