"""The data sets a training run reads: the configured set (the synthetic one generated on first use), and the
fixed subset that `--overfit` trains on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2v_jax.config import Config
from v2v_jax.data import cameras
from v2v_jax.data.base import DepthDataset
from v2v_jax.data.loader import open_dataset
from v2v_jax.data.msra import MSRA
from v2v_jax.data.synth import set_name, write_msra_dataset

DEFAULT_SYNTH_ROOT = "data/synth"  # each set in a folder of its own, named by its parameters
OVERFIT_STEPS_PER_EPOCH = 50


class Subset(DepthDataset):
    """The first `count` frames of a data set, each listed `repeats` times, for --overfit.

    Repeating makes an epoch (and so the evaluation and checkpoint at its end) span many steps.
    """

    def __init__(self, base: DepthDataset, count: int, repeats: int = 1):
        if count > len(base):
            raise ValueError(f"--overfit {count}: the training set has only {len(base)} frames")
        self.base, self.spec, self.split = base, base.spec, getattr(base, "split", "train")
        self.count = count
        take = np.tile(np.arange(count), repeats)
        self._set_labels([base.frame_ids[i] for i in take], base.centers[take], base.joints[take], {})
        self.sources, self.cube_mm = [base.sources[i] for i in take], base.cube_mm  # the checks of `base`

    def read_depth(self, i: int) -> np.ndarray:
        return self.base.read_depth(i % self.count)


def spec_for(cfg: Config) -> cameras.DatasetSpec:
    """The synthetic set uses MSRA's camera, joints and cube."""
    return cameras.MSRA if cfg.data == "synth" else cameras.get(cfg.data)


def open_datasets(cfg: Config) -> tuple[DepthDataset, DepthDataset, cameras.DatasetSpec]:
    """(train, test, spec) for the configuration. The synthetic set is generated on first use and reused: under
    --root, or by default in a folder of DEFAULT_SYNTH_ROOT named by its parameters."""
    checks = dict(on_bad_frame=cfg.on_bad_frame, cube_mm=cfg.cube_mm or spec_for(cfg).cube_mm)  # bad frames
    if cfg.data == "synth":
        root = Path(cfg.root or Path(DEFAULT_SYNTH_ROOT) / set_name(cfg.synth_frames, cfg.synth_seed,
                                                                   cfg.synth_subjects))
        write_msra_dataset(root, frames=cfg.synth_frames, seed=cfg.synth_seed, subjects=cfg.synth_subjects)
        test_subject = cfg.synth_subjects - 1 if cfg.test_subject is None else cfg.test_subject
        train = MSRA(root, root / "center", test_subject, split="train", **checks)
        test = MSRA(root, root / "center", test_subject, split="test", **checks)
    else:
        if cfg.root is None:
            raise ValueError(f"--data {cfg.data} needs --root DIR (and usually --centers)")
        kw = dict(test_subject=cfg.test_subject if cfg.data == "msra" else None, view=cfg.itop_view, **checks)
        train = open_dataset(cfg.data, cfg.root, cfg.centers, "train", **kw)
        test = open_dataset(cfg.data, cfg.root, cfg.centers, "test", **kw)
    for ds in (train, test):
        if ds.num_skipped:
            print(ds.report())
    if cfg.overfit:
        test = Subset(train, cfg.overfit)
        train = Subset(train, cfg.overfit, repeats=max(1, OVERFIT_STEPS_PER_EPOCH * cfg.batch_size // cfg.overfit))
    return train, test, train.spec


