"""Evaluation metrics, result files and the CLI, including the released V2V results in shared/data/eval."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from v2v_jax import evaluate, metrics
from v2v_jax.data import cameras
from v2v_jax.data.cameras import pixel_to_world

EVAL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"


def test_mean_error_is_the_mean_of_per_joint_means():
    errors = np.array([[1.0, 10.0, 4.0], [3.0, 20.0, 8.0]])
    np.testing.assert_allclose(metrics.per_joint_error(errors), [2.0, 15.0, 6.0])
    assert metrics.mean_error(errors) == pytest.approx((2.0 + 15.0 + 6.0) / 3)


def test_joint_errors_are_euclidean():
    gt = np.zeros((2, 1, 3))
    pred = np.array([[[3.0, 4.0, 0.0]], [[1.0, 2.0, 2.0]]])
    np.testing.assert_allclose(metrics.joint_errors(pred, gt), [[5.0], [3.0]])
    with pytest.raises(ValueError, match="shape"):
        metrics.joint_errors(pred[:, :, :2], gt[:, :, :2][:1])


def test_success_rates_are_inclusive():
    errors = np.array([[0.0, 20.0], [20.0, 20.5], [5.0, 5.0]])
    rates = metrics.success_rates(errors, thresholds=[0, 5, 20, 21])
    np.testing.assert_allclose(rates["max_frame"], [0, 1 / 3, 2 / 3, 1])  # frame maxima 20, 20.5, 5
    np.testing.assert_allclose(rates["mean_frame"], [0, 1 / 3, 2 / 3, 1])  # frame means 10, 20.25, 5
    np.testing.assert_allclose(rates["joint"], [1 / 6, 3 / 6, 5 / 6, 1])
    assert len(metrics.success_rates(errors)["max_frame"]) == 81  # 0..80 mm


def test_itop_average_precision_is_strict():
    errors = np.array([[99.9, 100.0], [0.0, 150.0], [100.0, 10.0], [50.0, 99.99]])
    np.testing.assert_allclose(metrics.itop_average_precision(errors), [0.75, 0.5])
    assert metrics.itop_map(errors) == pytest.approx(0.625)


def test_result_file_round_trip(tmp_path):
    """Written with 4 decimals: |du| <= 5e-5 px -> |dx| <= 5e-5 d / f < 1e-4 mm at d <= 1200 mm, f = 588."""
    rng = np.random.default_rng(0)
    world = rng.uniform([-120, -120, 400], [120, 120, 1200], (5, 14, 3))
    path = tmp_path / "pred.txt"
    metrics.write_result_file(path, world, cameras.NYU)
    uvd = metrics.read_result_file(path)
    assert uvd.shape == (5, 14, 3)
    np.testing.assert_allclose(pixel_to_world(uvd, cameras.NYU), world, rtol=0, atol=2e-4)
    # The evaluator's intrinsics differ from the camera's by ~1e-5 relative: the same world up to ~0.01 mm.
    np.testing.assert_allclose(metrics.read_world(path, "nyu"), world, rtol=0, atol=2e-2)


def test_malformed_files_name_the_file_and_line(tmp_path):
    good = "1 2 3 4 5 6\n"
    cases = {"word.txt": good + "1 2 x 4 5 6\n", "short.txt": good + good + "1 2 3 4 5\n", "empty_line.txt": "\n",
             "not_triples.txt": "1 2 3 4\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=r"word\.txt:2: not a number"):
        metrics.read_result_file(tmp_path / "word.txt")
    with pytest.raises(ValueError, match=r"short\.txt:3: 5 numbers, expected 6"):
        metrics.read_result_file(tmp_path / "short.txt")
    with pytest.raises(ValueError, match=r"empty_line\.txt:1:"):
        metrics.read_result_file(tmp_path / "empty_line.txt")
    with pytest.raises(ValueError, match=r"not_triples\.txt:1:"):
        metrics.read_result_file(tmp_path / "not_triples.txt")
    (tmp_path / "gt.txt").write_text(good * 3)
    (tmp_path / "pred.txt").write_text(good * 2)
    with pytest.raises(ValueError, match=r"pred\.txt has 2 frames but .*gt\.txt has 3"):
        metrics.evaluate_files(tmp_path / "gt.txt", [tmp_path / "pred.txt"], "icvl")
    (tmp_path / "pred.txt").write_text("1 2 3\n" * 3)
    with pytest.raises(ValueError, match=r"pred\.txt:1: 3 numbers, expected 6"):
        metrics.evaluate_files(tmp_path / "gt.txt", [tmp_path / "pred.txt"], "icvl")


def test_bad_input_leaves_an_existing_result_file_untouched(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("keep me\n")
    with pytest.raises(ValueError, match="result.txt"):
        metrics.write_result_file(path, np.zeros((4, 14, 2)), cameras.NYU)
    assert path.read_text() == "keep me\n" and len(list(tmp_path.iterdir())) == 1


def test_cli_on_synthetic_files(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gt = rng.uniform([-80, -80, 300], [80, 80, 500], (20, 16, 3))
    for name, noise in (("a.txt", 5.0), ("b.txt", 15.0)):
        metrics.write_result_file(tmp_path / name, gt + rng.normal(0, noise, gt.shape), cameras.ICVL)
    metrics.write_result_file(tmp_path / "gt.txt", gt, cameras.ICVL)
    evaluate.main(["--dataset", "icvl", "--gt", str(tmp_path / "gt.txt"), str(tmp_path / "a.txt"),
                   str(tmp_path / "b.txt"), "--plot", str(tmp_path / "curves.png"), "--per-joint"])
    out = capsys.readouterr().out
    errors = metrics.evaluate_files(tmp_path / "gt.txt", [tmp_path / "a.txt"], "icvl")[str(tmp_path / "a.txt")]
    assert f"{metrics.mean_error(errors):.3f}" in out and "thumb_tip" in out
    assert Image.open(tmp_path / "curves.png").size[0] > 600


@pytest.mark.parametrize("dataset,mean_mm,within_20,within_40,within_80", [
    ("nyu", 8.419, 71.2, 88.1, 98.1),
    ("icvl", 6.284, 84.6, 97.2, 99.3),
])
def test_released_v2v_results(dataset, mean_mm, within_20, within_40, within_80, tmp_path, capsys):
    """The released V2V results' mean error and max-frame success rates at 20, 40 and 80 mm, as printed (3 decimals
    in mm, 1 in %), through the CLI."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"shared/data/eval beside the repository is absent ({EVAL_DIR})")
    gt, pred = EVAL_DIR / f"{dataset}_gt.txt", EVAL_DIR / f"{dataset}_v2v.txt"
    errors = metrics.evaluate_files(gt, [pred], dataset)[str(pred)]
    assert round(metrics.mean_error(errors), 3) == mean_mm
    rates = metrics.success_rates(errors)["max_frame"]
    assert [round(100 * rates[t], 1) for t in (20, 40, 80)] == [within_20, within_40, within_80]
    if dataset == "nyu":
        np.testing.assert_allclose(metrics.per_joint_error(errors), [9.53, 7.02, 9.77, 6.70, 10.08, 6.76, 11.00, 7.40,
                                                                     9.84, 7.78, 6.87, 8.94, 9.94, 6.25], atol=5e-3)
    evaluate.main(["--dataset", dataset, "--gt", str(gt), str(pred), "--plot", str(tmp_path / "plot.png")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(pred)))
    assert row.split()[1:] == [str(len(errors)), f"{mean_mm:.3f}", f"{within_20}%", f"{within_40}%", f"{within_80}%"]
