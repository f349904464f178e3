"""The precisions a model runs in, by the name a user gives (`--dtype`).

Each names the dtype of the activations (`compute`) and of the parameters and BatchNorm statistics (`param`):
bfloat16 computes in bfloat16 on float32 parameters; float64 needs `jax_enable_x64`, which the trainer turns on
for `--dtype float64` before its first computation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp


class Precision(NamedTuple):
    compute: Any
    param: Any


PRECISIONS = {
    "float32": Precision(jnp.float32, jnp.float32),
    "float64": Precision(jnp.float64, jnp.float64),
    "bfloat16": Precision(jnp.bfloat16, jnp.float32),
}

