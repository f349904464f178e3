"""The optimisers a run can use, built in one place.

The authors trained with torch.optim.RMSprop(lr=2.5e-4, alpha=0.99, eps=1e-8) (Moon et al. 2018, the public
PyTorch port's `main.py`): AUTHORS_RMSPROP holds those numbers under torch's names, and `make_optimizer("rmsprop")`
is that optimiser exactly in optax.
"""

from __future__ import annotations

import optax

AUTHORS_RMSPROP = dict(lr=2.5e-4, alpha=0.99, eps=1e-8)
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SGD_MOMENTUM = 0.9


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """The optimiser `name` at learning rate `lr`: 'rmsprop' is torch's RMSprop with the authors' alpha and eps
    (square average from 0, eps outside the square root, no momentum), 'adam' optax's defaults (those of
    torch.optim.Adam), 'sgd' momentum SGD_MOMENTUM."""
    if name == "rmsprop":
        return optax.rmsprop(lr, decay=AUTHORS_RMSPROP["alpha"], eps=AUTHORS_RMSPROP["eps"], initial_scale=0.0,
                             eps_in_sqrt=False, centered=False, momentum=None)
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
