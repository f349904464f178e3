"""Test-session set-up shared by parity_tests/ and tests/.

float64 is enabled for the whole session so that parity checks can run in double precision; library code
therefore names its dtypes explicitly and never relies on JAX's default float type.
"""

import jax

jax.config.update("jax_enable_x64", True)
