"""Fault injection for the reliability tests (the product carries none of its own).

    python tests/faults.py --nan-at-step K [train.py flags]

runs `train.py` whose K-th step (counted from 1, as the logs count) sees NaN joint labels, so that its loss and
gradients are NaN: the loop's non-finite handling is what is tested.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from v2v_jax.train import loop  # noqa: E402


def nan_labels_at(step: int):
    """A `transform_step` for `loop.train`: the train step, with NaN labels at global step `step`."""
    def transform(train_step):
        def poisoned(state, batch):
            if int(state.step) + 1 == step:
                batch = {**batch, "joints": batch["joints"] * np.nan}
            return train_step(state, batch)
        return poisoned
    return transform


if __name__ == "__main__":
    args = sys.argv[1:]
    at = args.index("--nan-at-step")
    step = int(args[at + 1])
    loop.main(args[:at] + args[at + 2:], transform_step=nan_labels_at(step))
