"""The optimisers a run can use, built in one place.

The authors trained with torch.optim.RMSprop(lr=2.5e-4, alpha=0.99, eps=1e-8) (Moon et al. 2018, the public
PyTorch port's `main.py`): AUTHORS_RMSPROP holds those numbers under torch's names, and `make_optimizer("rmsprop")`
is that optimiser exactly in optax.
"""

from __future__ import annotations

import optax

AUTHORS_RMSPROP = dict(lr=2.5e-4, alpha=0.99, eps=1e-8)
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")
SGD_MOMENTUM = 0.9


def learning_rate(lr: float, schedule: str = "constant", total_steps: int | None = None,
                  warmup_steps: int = 0) -> float | optax.Schedule:
    """`lr` itself (constant, the paper's), or a linear warm-up from 0 over `warmup_steps` to `lr` and a cosine
    decay to 0 at `total_steps` (Loshchilov & Hutter 2017, "SGDR"; the warm-up as in Goyal et al. 2017). A run
    shorter than its warm-up warms up over its first half."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        if total_steps is None or total_steps < 1:
            raise ValueError(f"a cosine schedule needs the run's length in steps, got {total_steps}")
        warmup = warmup_steps if warmup_steps < total_steps else total_steps // 2
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps, end_value=0.0)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def make_optimizer(name: str, lr: float | optax.Schedule) -> optax.GradientTransformation:
    """The optimiser `name` at learning rate `lr` (a number or a `learning_rate` schedule): 'rmsprop' is torch's
    RMSprop with the authors' alpha and eps (square average from 0, eps outside the square root, no momentum),
    'adam' optax's defaults (those of torch.optim.Adam), 'sgd' momentum SGD_MOMENTUM."""
    if name == "rmsprop":
        return optax.rmsprop(lr, decay=AUTHORS_RMSPROP["alpha"], eps=AUTHORS_RMSPROP["eps"], initial_scale=0.0,
                             eps_in_sqrt=False, centered=False, momentum=None)
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
