"""The output layer's floor: the lowest loss a V2V of a given width can reach on given heatmap targets, and the
--overfit report and run comparison that use it."""

import json

import numpy as np
import pytest

from v2v_jax import geometry
from v2v_jax.train.checks import output_layer_floor, report_overfit
from v2v_jax.train.plots import compare_runs

START = {"step": 0, "train_loss": 1.55e-2, "zero_output_loss": 1.55e-2, "output_floor_loss": 1.08e-3, "num_joints": 21}


def heatmaps(num_samples: int, joints: int, size: int = 8, seed: int = 0) -> np.ndarray:
    coords = np.random.default_rng(seed).uniform(1, size - 2, (num_samples, joints, 3))
    return np.stack([np.asarray(geometry.gaussian_heatmaps(c, size)) for c in coords]).astype(np.float64)


def affine_rank_fit(targets: np.ndarray, width: int, iterations: int = 300, seed: int = 0) -> float:
    """MSE of outputs = features @ W + b with `width` free features per voxel, fitted by alternating least
    squares from a random start: an optimiser that knows nothing of the closed form."""
    h = targets.reshape(-1, targets.shape[-1])
    rng = np.random.default_rng(seed)
    features = np.hstack([rng.standard_normal((h.shape[0], width)), np.ones((h.shape[0], 1))])
    for _ in range(iterations):
        weights = np.linalg.lstsq(features, h, rcond=None)[0]
        free = np.linalg.lstsq(weights[:width].T, (h - weights[width]).T, rcond=None)[0].T
        features = np.hstack([free, np.ones((h.shape[0], 1))])
    return float(np.mean((features @ np.linalg.lstsq(features, h, rcond=None)[0] - h) ** 2))


@pytest.mark.parametrize("width", [2, 4, 8])
def test_floor_is_what_an_optimiser_reaches(width):
    # ALS on a low-rank problem converges to the global optimum (no spurious local minima for the unconstrained
    # factorisation); 300 iterations bring it to the floor within 1e-6 relative on these 2 x 512 x 12 targets.
    targets = heatmaps(2, 12)
    floor = output_layer_floor(targets, width)
    assert floor > 0
    assert affine_rank_fit(targets, width) == pytest.approx(floor, rel=1e-6)


def test_floor_vanishes_once_width_reaches_the_joints_and_falls_with_width():
    targets = heatmaps(1, 21)
    floors = [output_layer_floor(targets, w) for w in (4, 8, 16, 20, 21, 32)]
    assert all(a > b for a, b in zip(floors[:4], floors[1:5]))
    assert floors[4] == floors[5] == 0.0
    assert floors[0] < np.mean(targets ** 2)  # below the all-zero-output loss


def test_overfit_report_names_the_width_when_the_floor_blocks_100x(capsys):
    assert not report_overfit([START, {"step": 600, "train_loss": 1.18e-3}])
    out = capsys.readouterr().out
    assert "does NOT fall" in out and "cannot go below 1.080e-03" in out and "--width 21 or more" in out
    assert report_overfit([{**START, "output_floor_loss": 0.0}, {"step": 600, "train_loss": 1.5e-5}])
    assert "--width" not in capsys.readouterr().out


def test_compare_runs_draws_each_run_and_names_a_run_without_a_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"width": 8, "dtype": "float32"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [START, {"step": 10, "train_loss": 2e-3}]))
    compare_runs(tmp_path / "runs.png", [run])
    assert (tmp_path / "runs.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="empty.metrics.jsonl"):
        compare_runs(tmp_path / "x.png", [tmp_path / "empty"])
