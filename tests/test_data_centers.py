"""The real reference-centre files in shared/data/centers: their line counts match the data sets' frame counts (MSRA
76,391 frames over P0..P8; ITOP 39,795 train and 10,501 test lines) and their first values read as stored."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from v2v_jax.data import cameras
from v2v_jax.data.centers import read_centers
from v2v_jax.data.itop import ITOP

CENTERS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "centers"
MSRA_TOTAL = 76_391


def _folder(name: str) -> Path:
    folder = CENTERS / name
    if not folder.is_dir():
        pytest.skip(f"real centre files not found at shared/data/centers/{name} (beside the repository)")
    return folder


@pytest.mark.parametrize("fold", range(9))
def test_msra_fold_line_counts(fold):
    folder = _folder("msra")
    test = read_centers(folder / f"center_test_{fold}_refined.txt")
    train = read_centers(folder / f"center_train_{fold}_refined.txt")
    assert sum(cameras.MSRA_FRAMES_PER_SUBJECT) == MSRA_TOTAL
    assert len(test) == cameras.MSRA_FRAMES_PER_SUBJECT[fold]
    assert len(train) == MSRA_TOTAL - len(test)
    assert np.isfinite(test).all() and np.isfinite(train).all()  # MSRA has no invalid lines
    assert 100 < np.median(test[:, 2]) < 700  # z positive, mm


def test_msra_centres_differ_per_fold():
    folder = _folder("msra")
    np.testing.assert_allclose(read_centers(folder / "center_test_0_refined.txt")[0], [11.04, -8.83, 260.65],
                               atol=0.005)
    np.testing.assert_allclose(read_centers(folder / "center_train_1_refined.txt")[0], [5.34, -13.68, 270.19],
                               atol=0.005)


@pytest.mark.parametrize("split, lines, invalid", [("test", 10_501, 5_638), ("train", 39_795, 21_804)])
def test_itop_counts_and_identical_invalid_positions(split, lines, invalid):
    folder = _folder("itop")
    side = read_centers(folder / f"ITOP_side_center_{split}.txt")
    top = read_centers(folder / f"ITOP_top_center_{split}.txt")
    for centers in (side, top):
        assert len(centers) == lines and np.isnan(centers).any(axis=1).sum() == invalid
    np.testing.assert_array_equal(np.isnan(side), np.isnan(top))
    assert 1 < np.nanmedian(side[:, 2]) < 6  # metres


@pytest.mark.parametrize("view", ["side", "top"])
def test_itop_loader_skips_and_counts_the_real_invalid_centres(tmp_path, view):
    folder = _folder("itop")
    lines, valid = 10_501, 4_863
    with h5py.File(tmp_path / f"ITOP_{view}_test_depth_map.h5", "w") as f:
        f.create_dataset("data", (lines, 240, 320), np.float16, chunks=(1, 240, 320))  # unwritten: all zero
    with h5py.File(tmp_path / f"ITOP_{view}_test_labels.h5", "w") as f:
        f["real_world_coordinates"] = np.ones((lines, 15, 3), np.float32)
    data = ITOP(tmp_path, folder, view=view, split="test")
    assert len(data) == valid and data.skipped == {"invalid centre": lines - valid, "marked invalid in labels": 0}
    assert "4863 frames kept, 5638 skipped (5638 invalid centre" in data.report()
    assert not data[0].depth.any()
    metres = read_centers(folder / f"ITOP_{view}_center_test.txt")
    # metres -> mm in float64, stored as float32: relative rounding 2^-24 = 6e-8
    np.testing.assert_allclose(data.centers, metres[~np.isnan(metres).any(axis=1)] * 1000, rtol=1e-7)
