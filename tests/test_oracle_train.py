"""The PyTorch reference trainer (`v2v_torch_ref/train.py`): its own options agree with train.py's, it runs
train.py's command lines, refuses bad ones in one line, and trains and evaluates a few steps end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from v2v_jax.config import PRESETS, Config
from v2v_jax.data.synth import write_msra_dataset
from v2v_torch_ref import geometry_ref
from v2v_torch_ref import train as oracle
from v2v_torch_ref.backends import torch_switches
from v2v_torch_ref.model import V2VModel


def test_options_have_train_py_defaults_and_paper_preset():
    """The two trainers share no code, so the same flags must mean the same run by agreement, checked here."""
    for field in dataclasses.fields(oracle.Options):
        # Each trainer writes to a folder of its own; the reference trainer writes port-format state_dicts, so it
        # voxelises in the port's geometry, the one predict --torch-checkpoint assumes for them.
        if field.name not in ("out", "geometry"):
            assert field.default == getattr(Config(), field.name), field.name
    assert (oracle.Options().geometry, Config().geometry) == ("port", "ours")
    assert oracle.PAPER == {k: v for k, v in PRESETS["paper"].items() if k in oracle.PAPER}
    assert set(PRESETS["paper"]) - set(oracle.PAPER) == {"decode"}  # the reference decodes by argmax only


def test_runs_the_gpu_check_command_line():
    """scripts/gpu_check.sh's e2e_torch step gives both trainers the same flags."""
    opts = oracle.parse_options("--preset paper --root r --synth-frames 680 --epochs 1 --max-steps 60 --plots false "
                                "--out o --num-workers 12 --lr 1e-4".split())
    assert (opts.grid, opts.width, opts.optimizer, opts.lr, opts.epochs, opts.max_steps, opts.num_workers) == (
        88, 32, "rmsprop", 1e-4, 1, 60, 12)


@pytest.mark.parametrize("argv, says", [
    (["--grid", "12"], "--grid: must be a multiple of 8"),
    (["--lr", "nan"], "--lr: must be a finite number above 0"),
    (["--dtype", "bfloat16"], "--dtype: invalid choice"),
    (["--data", "msra", "--root", "x"], "--data msra needs --test-subject"),
    (["--synth-frames", "20", "--synth-subjects", "2"], "so it needs 34 or more"),
])
def test_bad_flags_are_one_line_errors(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_:
        oracle.parse_options(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and err.count("\n") == 1, err


def test_missing_synthetic_set_is_named(tmp_path):
    opts = oracle.parse_options(["--root", str(tmp_path / "none"), "--synth-frames", "34", "--synth-subjects", "2"])
    with pytest.raises(SystemExit, match="holds no synthetic set of 34 frames, 2 subjects, seed 0"):
        oracle.open_sets(opts)


def test_fewer_frames_than_a_batch_are_refused(tmp_path):
    root = write_msra_dataset(tmp_path / "synth", frames=34, seed=0, subjects=2)
    opts = oracle.parse_options(["--root", str(root), "--synth-frames", "34", "--synth-subjects", "2",
                                 "--batch-size", "64", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="17 training frames are fewer than one batch of 64"):
        oracle.train(opts)


def test_trains_evaluates_and_writes_a_port_state_dict(tmp_path, capsys):
    """One step on two fixed samples (--overfit 2, which also evaluates on them); about 5 s, most of it torch's
    first backward pass and optimiser import."""
    root = write_msra_dataset(tmp_path / "synth", frames=34, seed=0, subjects=2)
    out = tmp_path / "run"
    dist = oracle.train(oracle.parse_options(
        ["--root", str(root), "--synth-frames", "34", "--synth-subjects", "2", "--grid", "8", "--width", "2",
         "--batch-size", "2", "--overfit", "2", "--max-steps", "1", "--out", str(out)]))
    assert dist.shape == (2, 21) and np.isfinite(dist).all()  # MSRA's 21 joints
    model = V2VModel(1, 21, 2)
    model.load_state_dict(torch.load(out / "model.pth"))  # strict: the port's keys
    options = oracle.Options(**json.loads((out / "options.json").read_text()))
    assert (options.overfit, options.geometry) == (2, "port")
    printed = capsys.readouterr().out
    assert f"{dist.mean():.2f} mm\nframes with every joint within" in printed
    assert "geometry: port, the PyTorch port's (pixels numbered from 1, voxel coordinates truncated)" in printed


def test_samples_follow_the_geometry(tmp_path):
    """The data set's voxels are the reference's of the chosen geometry; the two geometries' grids differ."""
    root = write_msra_dataset(tmp_path / "synth", frames=34, seed=0, subjects=2)
    opts = oracle.parse_options(["--root", str(root), "--synth-frames", "34", "--synth-subjects", "2"])
    frames, _, spec = oracle.open_sets(opts)
    frame = frames[0]
    grids = {}
    for name in ("ours", "port"):
        voxels = oracle.VoxelDataset(frames, spec, 200.0, 24, 0, 0, False, name)[0][0]
        expected = geometry_ref.generate_cubic_input(geometry_ref.depth_to_points(frame.depth, spec, name),
                                                     frame.center.astype(np.float64), 200.0, 24, name)
        np.testing.assert_array_equal(voxels[0], expected)
        grids[name] = voxels
    assert (grids["ours"] != grids["port"]).any()


def test_torch_switches_set_only_what_is_given_and_restore_it():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.enabled, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    with torch_switches(benchmark=not before[1], tf32=not before[2]):
        assert (cudnn.enabled, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (
            before[0], not before[1], not before[2], not before[2])
        with torch_switches(cudnn=not before[0]):
            assert cudnn.enabled == (not before[0])
        assert cudnn.enabled == before[0]
    assert (cudnn.enabled, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == before
