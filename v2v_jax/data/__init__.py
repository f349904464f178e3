"""Data sets (MSRA, ICVL, NYU, HANDS2017, ITOP), their common frame interface, and batching (`loader`)."""

from __future__ import annotations

from v2v_jax.data.base import DataError, DepthDataset, Frame

DATASET_NAMES = ("msra", "icvl", "nyu", "hands2017", "itop")


def open_dataset(name: str, root, centers=None, split: str = "train", test_subject: int | None = None,
                 view: str = "side", **kwargs) -> DepthDataset:
    """Open data set `name` (one of DATASET_NAMES). `centers` is a folder for MSRA and ITOP, a file otherwise;
    None uses the joints' mean. `test_subject` is the held-out MSRA subject (required there, rejected elsewhere);
    `view` ('side' or 'top') is read by ITOP only. Other keyword arguments go to the data set's class."""
    if (name == "msra") != (test_subject is not None):
        raise ValueError("test_subject is required for msra and only for msra")
    if name == "msra":
        from v2v_jax.data.msra import MSRA
        return MSRA(root, centers, test_subject, split, **kwargs)
    if name == "itop":
        from v2v_jax.data.itop import ITOP
        return ITOP(root, centers, view=view, split=split, **kwargs)
    if name == "icvl":
        from v2v_jax.data.icvl import ICVL
        return ICVL(root, centers, split, **kwargs)
    if name == "nyu":
        from v2v_jax.data.nyu import NYU
        return NYU(root, centers, split, **kwargs)
    if name == "hands2017":
        from v2v_jax.data.hands2017 import HANDS2017
        return HANDS2017(root, centers, split, **kwargs)
    raise ValueError(f"unknown data set {name!r}; choose one of {DATASET_NAMES}")


__all__ = ["DATASET_NAMES", "DataError", "DepthDataset", "Frame", "open_dataset"]
