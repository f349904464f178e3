"""A user's mistakes in the command-line tools: one line naming the option or file and the problem, exit status 2,
no traceback; and the garbage a tool must refuse rather than turn into numbers (docs/reliability.md)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from v2v_jax import evaluate, metrics, predict
from v2v_jax.config import PRESETS, Config, parse_config, problems, save_config
from v2v_jax.data import cameras, msra
from v2v_jax.data.centers import read_centers
from v2v_jax.data.synth import write_msra_dataset
from v2v_jax.train.checkpoint import Checkpointer
from v2v_jax.train.loop import Progress, build_model
from v2v_jax.train.optim import make_optimizer
from v2v_jax.train.step import init_state, numerics_for
from v2v_torch_ref.model import V2VModel


def fails(main, argv, capsys) -> str:
    """stderr of `main(argv)`, which must exit with status 2 and print no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err, err
    return err


# --- flags ------------------------------------------------------------------------------------------------------

BAD_FLAGS = {  # flags: the line that must name each
    ("--lr", "-1"): [r"--lr -1.0: must be a finite number > 0"],
    ("--lr", "nan"): [r"--lr nan: must be a finite number > 0"],
    ("--epochs", "-1"): [r"--epochs -1: must be an integer >= 1"],
    ("--max-steps", "-5"): [r"--max-steps -5: must be an integer >= 1 \(leave the flag out for no limit\)"],
    ("--checkpoint-every", "-1"): [r"--checkpoint-every -1: must be an integer >= 0"],
    ("--cube-mm", "0"): [r"--cube-mm 0.0: must be a finite number > 0"],
    ("--batch-size", "0"): [r"--batch-size 0: must be an integer >= 1"],
    ("--grid", "0"): [r"--grid 0: must be a positive multiple of 8"],
    ("--grid", "2"): [r"--grid 2: must be a positive multiple of 8"],
    ("--grid", "7"): [r"--grid 7: must be a positive multiple of 8"],
    ("--grid", "-8"): [r"--grid -8: must be a positive multiple of 8"],
    ("--grid", "12"): [r"--grid 12: must be a positive multiple of 8"],
    ("--width", "0"): [r"--width 0: must be an integer >= 2"],
    ("--log-every", "0"): [r"--log-every 0: must be an integer >= 1"],
    ("--eval-batches", "0"): [r"--eval-batches 0: must be an integer >= 1"],
    ("--keep-checkpoints", "-1"): [r"--keep-checkpoints -1: must be an integer >= 1"],
    ("--synth-frames", "10"): [r"--synth-frames 10: must be at least 17 per subject, 85 for --synth-subjects 5"],
    ("--test-subject", "5"): [r"--test-subject 5: the synthetic set has subjects 0..4"],
    ("--data", "msra"): [r"--data msra: needs --root DIR", r"--data msra: needs --test-subject K"],
    ("--grid", "x"): [r"argument --grid: invalid int value: 'x'"],
    ("--upsample", "bilinear"): [r"argument --upsample: invalid choice: 'bilinear' \(choose from '?einsum'?, "],
    ("--conv", "winograd"): [r"argument --conv: invalid choice: 'winograd' \(choose from '?auto'?, '?xla'?, "],
    ("--ema-decay", "1"): [r"--ema-decay 1.0: must be a number in \[0, 1\) \(0: no moving average\)"],
    ("--width", "0", "--batch-size", "-2"): [r"--batch-size -2: must be", r"--width 0: must be"],
}


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_a_bad_flag_is_refused_in_one_line_naming_it(argv, capsys):
    err = fails(parse_config, list(argv), capsys)
    lines = err.strip().splitlines()
    assert len(lines) == len(BAD_FLAGS[argv]) + 1 and lines[-1].endswith("--help lists every option"), err
    for pattern, line in zip(BAD_FLAGS[argv], lines):
        assert re.search(r"error: " + pattern, line), (pattern, line)


def test_the_formulation_flags_reach_the_model_s_numerics():
    cfg = parse_config(["--conv", "xla", "--upsample", "phases"])
    numerics = numerics_for(cfg.dtype, cfg.batchnorm, cfg.init, cfg.conv, cfg.upsample)
    assert (numerics.conv, numerics.upsample) == ("xla", "phases")
    assert parse_config([]).upsample == "einsum"


def test_the_defaults_and_presets_are_valid():
    assert problems(Config()) == []
    for name in PRESETS:
        assert problems(parse_config(["--preset", name])) == [], name


# --- predict ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with the configuration and one (untrained) checkpoint of a tiny synthetic-set model."""
    root = tmp_path_factory.mktemp("predict")
    data = write_msra_dataset(root / "synth", frames=34, seed=0, subjects=2)
    run = root / "run"
    run.mkdir()
    cfg = Config(root=str(data), synth_frames=34, synth_subjects=2, grid=16, width=4, batch_size=4, out=str(run),
                 plots=False)
    save_config(cfg, run)
    _, _, state = init_state(build_model(cfg, cameras.MSRA.num_joints), make_optimizer(cfg.optimizer, cfg.lr), 0)
    checkpoints = Checkpointer(run / "checkpoints")
    checkpoints.save(state, Progress().record(0, 4))
    checkpoints.close()
    return run, data


def centre_of(data: Path) -> str:
    """The reference centre of the frame `depth_file` reads, as --center takes it."""
    return ",".join(map(str, read_centers(data / "center" / "center_test_1_refined.txt")[0]))


def depth_file(tmp_path: Path, data: Path, change=None) -> Path:
    depth = msra.read_depth_bin(data / "P1" / "1" / msra.depth_name(0)).copy()
    path = tmp_path / "depth.npy"
    np.save(path, change(depth) if change else depth)
    return path


def test_predict_on_good_input_prints_the_joints(tiny_run, tmp_path, capsys):
    run, data = tiny_run
    predict.main(["--checkpoint", str(run), "--depth", str(depth_file(tmp_path, data)), "--center", centre_of(data)])
    out = capsys.readouterr().out
    assert len(re.findall(r"^thumb_tip\s+(-?\d+\.\d+\s+){6}$", out, re.M)) == 1, out
    assert out.splitlines()[0] == ("geometry: ours (pixels numbered from 0, voxel coordinates floored), the training "
                                   "run's (config.json)"), out  # the first line says which geometry, and why


def test_predict_states_its_geometry_and_takes_the_port_s_for_a_state_dict(tiny_run, tmp_path, capsys):
    """A PyTorch state_dict predicts in the port's geometry unless --geometry says otherwise (a run: in its
    config.json's, test_predict_on_good_input_prints_the_joints); the first output line says which and why."""
    run, data = tiny_run
    depth = ["--depth", str(depth_file(tmp_path, data)), "--center", centre_of(data)]
    assert json.loads((run / "config.json").read_text())["geometry"] == "ours"  # saved with the run
    torch.manual_seed(0)
    pth = tmp_path / "port.pth"
    torch.save(V2VModel(1, cameras.MSRA.num_joints, 4).state_dict(), pth)
    tables = {}
    for extra, says in (([], "port (pixels numbered from 1, voxel coordinates truncated toward zero), the PyTorch "
                             "port's"), (["--geometry", "ours"], "ours (pixels numbered from 0, voxel coordinates "
                                                                 "floored), given by --geometry")):
        predict.main(["--torch-checkpoint", str(pth), "--dataset", "msra", "--grid", "16", *extra, *depth])
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("geometry: " + says), out[0]
        tables[says[:4]] = out[2:]
    assert tables["port"] != tables["ours"]  # the same weights see the cloud moved by z/f and predict elsewhere
    err = fails(predict.main, ["--checkpoint", str(run), "--geometry", "port", *depth], capsys)
    assert "--geometry: a training run predicts in the geometry it was trained in" in err


def test_an_old_config_reads_as_our_geometry_and_a_bad_one_is_named(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "config.json").read_text())
    del config["geometry"]
    (old / "config.json").write_text(json.dumps(config))
    assert predict.load_run(old)[0].geometry == "ours"
    config["geometry"] = "sideways"
    (old / "config.json").write_text(json.dumps(config))
    err = fails(predict.main, ["--checkpoint", str(old), "--result-file", str(tmp_path / "r.txt")], capsys)
    assert "config.json: not a training configuration (unknown geometry 'sideways'" in err, err


def nan_pixels(depth):
    rows, cols = np.nonzero(depth)
    depth[rows[:5], cols[:5]] = np.nan
    return depth


PREDICT_MISTAKES = {  # (argv after --checkpoint RUN, with {depth}, {centre}, {tmp}; depth change; message)
    "NaN depth": (["--depth", "{depth}", "--center", "{centre}"], nan_pixels, r"depth.npy: depth contains NaN"),
    "negative depth": (["--depth", "{depth}", "--center", "{centre}"], lambda d: d - 1000,
                       r"depth.npy: depth contains negative values"),
    "all-zero depth": (["--depth", "{depth}", "--center", "{centre}"], np.zeros_like,
                       r"depth.npy: the depth map is zero everywhere"),
    "NaN centre": (["--depth", "{depth}", "--center", "nan,0,300"], None, r"argument --center: 'nan,0,300' is not "
                                                                           r"finite"),
    "zero centre": (["--depth", "{depth}", "--center", "0,0,0"], None, r"argument --center: '0,0,0' is not in front "
                                                                       r"of the camera"),
    "centre not a number": (["--depth", "{depth}", "--center", "a,b,c"], None, r"argument --center: expected three "
                                                                               r"numbers x,y,z in mm, got 'a,b,c'"),
    "centre far from the hand": (["--depth", "{depth}", "--center", "0,0,3000"], None,
                                 r"depth.npy: no depth point falls inside the 200 mm cube around --center"),
    "truncated .bin": (["--depth", "{tmp}/cut.bin", "--center", "{centre}"], None, r"cut.bin: truncated .bin"),
    "missing depth file": (["--depth", "{tmp}/none.bin", "--center", "{centre}"], None,
                           r"none.bin: cannot read the depth map \(No such file or directory\)"),
    "absent --step": (["--step", "99", "--result-file", "{tmp}/r.txt"], None,
                      r"checkpoints: no checkpoint of step 99 \(there are: 0\)"),
    "result file in a missing folder": (["--result-file", "{tmp}/no/such/r.txt"], None,
                                        r"no/such/r.txt: cannot write the result file: folder \S+ does not exist"),
}


@pytest.mark.parametrize("mistake", PREDICT_MISTAKES)
def test_predict_refuses_a_mistake_in_one_line(tiny_run, tmp_path, capsys, mistake):
    run, data = tiny_run
    argv, change, message = PREDICT_MISTAKES[mistake]
    (tmp_path / "cut.bin").write_bytes((data / "P1" / "1" / msra.depth_name(0)).read_bytes()[:100])
    fields = dict(depth=depth_file(tmp_path, data, change), centre=centre_of(data), tmp=tmp_path)
    err = fails(predict.main, ["--checkpoint", str(run), *(a.format(**fields) for a in argv)], capsys)
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) <= 2, err  # the error, and for a flag the --help hint


def test_predict_without_a_run_is_one_line(tmp_path, capsys):
    err = fails(predict.main, ["--checkpoint", str(tmp_path / "none"), "--result-file", "r.txt"], capsys)
    assert err.strip() == f"error: {tmp_path / 'none' / 'config.json'}: no training run here (config.json missing)"


def test_predict_during_training_leaves_the_writers_checkpoint_alone(tiny_run, tmp_path, capsys):
    """`predict --checkpoint RUN` while RUN trains: the training's in-progress write must survive (it was deleted by
    the reader's clean-up, and the training died)."""
    run, data = tiny_run
    writing = run / "checkpoints" / "4.orbax-checkpoint-tmp"
    writing.mkdir()
    (writing / "partial").write_text("being written")
    try:
        predict.main(["--checkpoint", str(run), "--depth", str(depth_file(tmp_path, data)), "--center",
                      centre_of(data)])
        assert (writing / "partial").read_text() == "being written"
    finally:
        (writing / "partial").unlink()
        writing.rmdir()
    assert "thumb_tip" in capsys.readouterr().out


# --- evaluate ---------------------------------------------------------------------------------------------------

def result_file(path: Path, frames: int = 3, joints: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    uvd = np.concatenate([rng.uniform(100, 200, (frames, joints, 2)), rng.uniform(300, 500, (frames, joints, 1))], -1)
    np.savetxt(path, uvd.reshape(frames, -1), fmt="%.4f")
    return path


def written(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def mat_file(path: Path) -> Path:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"joint_xyz": np.ones((1, 2, 3))})
    path.write_bytes(buffer.getvalue())
    return path


EVALUATE_MISTAKES = {  # prediction file maker; message
    "wrong joint count": (lambda p: result_file(p, joints=3), r"pred.txt:1: 9 numbers, expected 6 \(2 joints x u v d\)"),
    "empty file": (lambda p: written(p, ""), r"pred.txt: no frames"),
    "frame count": (lambda p: result_file(p, frames=2), r"pred.txt has 2 frames but \S*gt.txt has 3"),
    "not UTF-8": (lambda p: written(p, b"1 2 3 4 5 6\n\xff\xfe 1\n"), r"pred.txt: not a text result file "
                                                                            r"\(invalid start byte at byte 12\)"),
    "a .mat file": (mat_file, r"pred.txt: not a text result file \(.* at byte \d+\)"),
    "NaN": (lambda p: written(p, "1 2 300 4 5 nan\n" * 3), r"pred.txt:1: holds a non-finite value \(nan\)"),
    "Inf": (lambda p: written(p, "1 2 300 4 5 6\n1 2 inf 4 5 6\n1 2 3 4 5 6\n"),
            r"pred.txt:2: holds a non-finite value \(inf\)"),
    "missing file": (lambda p: p, r"pred.txt: cannot read the result file \(No such file or directory\)"),
}


@pytest.mark.parametrize("mistake", EVALUATE_MISTAKES)
def test_evaluate_refuses_a_mistake_in_one_line(tmp_path, capsys, mistake):
    make, message = EVALUATE_MISTAKES[mistake]
    gt = result_file(tmp_path / "gt.txt")
    pred = make(tmp_path / "pred.txt")
    err = fails(evaluate.main, ["--dataset", "nyu", "--gt", str(gt), str(pred)], capsys)
    assert re.fullmatch(r"error: \S*" + message + r"\n", err), err


def test_evaluate_refuses_ground_truth_farther_than_any_camera_sees(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("100 100 400 120 110 1e9\n")
    err = fails(evaluate.main, ["--dataset", "nyu", "--gt", str(gt), str(result_file(tmp_path / "p.txt", 1))], capsys)
    assert re.fullmatch(r"error: \S*gt.txt:1: joint 1 lies 1\.08e\+06 m from the camera, farther than any of these "
                        r"cameras sees \(10 m\): not nyu ground truth in mm\n", err), err


def test_evaluate_accepts_good_files(tmp_path, capsys):
    gt = result_file(tmp_path / "gt.txt")
    evaluate.main(["--dataset", "nyu", "--gt", str(gt), str(result_file(tmp_path / "p.txt", seed=1))])
    assert re.search(r"p.txt\s+3\s+\d+\.\d+", capsys.readouterr().out)
    assert metrics.read_result_file(gt).shape == (3, 2, 3)
