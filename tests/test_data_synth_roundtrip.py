"""Synthetic frames written in MSRA format load back unchanged; the inspect CLI runs on them."""

import numpy as np
import pytest

from v2v_jax.data import inspect, synth
from v2v_jax.data.msra import MSRA

FRAMES, SUBJECTS, SEED = 34, 2, 3  # 17 gestures x 2 subjects: one frame per folder


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = synth.write_msra_dataset(tmp_path_factory.mktemp("synth") / "set", FRAMES, SEED, SUBJECTS)
    return root, synth.generate(FRAMES, SEED, SUBJECTS)


@pytest.mark.parametrize("test_subject", range(SUBJECTS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_synthetic_frames_survive_the_msra_format(written, test_subject, split):
    root, frames = written
    data = MSRA(root, root / "center", test_subject, split)
    rows = (frames.plan[:, 0] == test_subject) == (split == "test")  # plan order = subject, gesture, frame
    assert len(data) == rows.sum() and data.num_skipped == 0
    np.testing.assert_array_equal(data.joints, frames.joints[rows])
    np.testing.assert_array_equal(data.centers, frames.centers[rows])
    for i, depth in enumerate(frames.depth[rows]):
        assert data[i].depth.view(np.uint32).tolist() == depth.view(np.uint32).tolist(), data.frame_ids[i]


def test_inspect_cli_reports_counts_and_draws(written, tmp_path, capsys):
    root, frames = written
    out = tmp_path / "frames.png"
    inspect.main(["--dataset", "msra", "--root", str(root), "--centers", str(root / "center"),
                  "--test-subject", "1", "--frames", "3", "--sample", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert "msra train: 17 frames kept, 0 skipped" in text and "msra test: 17 frames kept, 0 skipped" in text
    assert "% of" in text and "inside the 200 mm cube" in text
    assert out.stat().st_size > 10_000


def test_depth_stats_count_pixels_inside_the_cube(written):
    root, frames = written
    data = MSRA(root, root / "center", 0, "test")
    stats = inspect.depth_stats(data, [0])
    depth = frames.depth[0]
    points = inspect.world_points(depth, data.spec)
    assert stats["pixels"] == np.count_nonzero(depth) == len(points)
    assert stats["min_mm"] == depth[depth > 0].min()
    # an independent count: back-project through the pixel grid directly
    v, u = np.mgrid[:240, :320]
    z = depth.astype(np.float64)
    xyz = np.stack([(u - 160) * z / 241.42, (120 - v) * z / 241.42, z], -1)[depth > 0]
    offset = xyz - data.centers[0]
    inside = ((offset >= -100) & (offset < 100)).all(axis=1)
    # the two back-projections may round differently: allow one pixel on the cube's boundary to flip
    assert stats["inside_cube"] == pytest.approx(inside.mean(), abs=1 / len(points))
