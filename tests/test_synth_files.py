"""Synthetic data written in MSRA's layout, read back with plain NumPy (the loader round trip:
test_data_synth_roundtrip.py)."""

import json

import numpy as np
import pytest

from v2v_jax.data import cameras, synth
from v2v_jax.data.base import DataError
from v2v_jax.data.msra import encode_depth_bin

FRAMES, SUBJECTS, SEED = 2 * 17 + 3, 2, 7


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    synth.write_msra_dataset(root, frames=FRAMES, seed=SEED, subjects=SUBJECTS)
    return root, synth.generate(FRAMES, SEED, SUBJECTS)


def _read_bin(path):
    data = path.read_bytes()
    header = np.frombuffer(data, "<u4", 6)
    width, height, left, top, right, bottom = map(int, header)
    crop = np.frombuffer(data, "<f4", offset=24)
    return (width, height, left, top, right, bottom), crop


def test_tree_is_exactly_msra_layout(written):
    root, frames = written
    assert sorted(p.name for p in root.iterdir()) == ["P0", "P1", "center", synth.MARKER]
    for s in range(SUBJECTS):
        assert sorted(p.name for p in (root / f"P{s}").iterdir()) == sorted(cameras.MSRA_GESTURES)
        for g, gesture in enumerate(cameras.MSRA_GESTURES):
            count = int(((frames.subject == s) & (frames.gesture == g)).sum())
            assert count >= 1
            names = sorted(p.name for p in (root / f"P{s}" / gesture).iterdir())
            assert names == sorted([f"{i:06d}_depth.bin" for i in range(count)] + ["joint.txt"])
    assert sorted(p.name for p in (root / "center").iterdir()) == sorted(
        f"center_{split}_{k}_refined.txt" for split in ("train", "test") for k in range(SUBJECTS))


def test_depth_bin_header_is_the_bounding_box_of_the_data(written):
    root, frames = written
    for depth, (s, g, i) in zip(frames.depth, frames.plan):
        (width, height, left, top, right, bottom), crop = _read_bin(
            root / f"P{s}" / cameras.MSRA_GESTURES[g] / f"{i:06d}_depth.bin")
        assert (width, height) == (320, 240)
        assert crop.size == (right - left) * (bottom - top)
        crop = crop.reshape(bottom - top, right - left)
        pasted = np.zeros((240, 320), np.float32)
        pasted[top:bottom, left:right] = crop
        np.testing.assert_array_equal(pasted, depth)
        for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):
            assert edge.any()  # right and bottom exclusive: the box is tight on all four sides


def test_joint_txt_stores_z_negated(written):
    root, frames = written
    for s in range(SUBJECTS):
        for g, gesture in enumerate(cameras.MSRA_GESTURES):
            lines = (root / f"P{s}" / gesture / "joint.txt").read_text().splitlines()
            expected = frames.joints[(frames.subject == s) & (frames.gesture == g)]
            assert int(lines[0]) == len(expected) == len(lines) - 1
            stored = np.array([line.split() for line in lines[1:]], np.float64).reshape(-1, 21, 3)
            assert np.all(stored[..., 2] < 0)
            np.testing.assert_array_equal(stored.astype(np.float32), expected * np.float32([1, 1, -1]))


def test_centre_files_list_folds_in_subject_gesture_frame_order(written):
    root, frames = written
    for k in range(SUBJECTS):
        for split, chosen in (("test", frames.subject == k), ("train", frames.subject != k)):
            rows = np.loadtxt(root / "center" / f"center_{split}_{k}_refined.txt", ndmin=2)
            np.testing.assert_array_equal(rows.astype(np.float32), frames.centers[chosen])


def test_existing_set_is_reused_and_a_different_one_refused(tmp_path, capsys):
    """A set is never replaced: a run reading it would see new depth beside old labels. Another set's parameters are
    refused by name, and the set on disk stays byte for byte."""
    root = tmp_path / "set"
    frames = 17
    synth.write_msra_dataset(root, frames=frames, seed=0, subjects=1)
    probe = root / "P0" / "1" / "000000_depth.bin"
    before = probe.stat().st_mtime_ns, probe.read_bytes()
    synth.main(["--out", str(root), "--frames", str(frames), "--seed", "0", "--subjects", "1"])
    assert (probe.stat().st_mtime_ns, probe.read_bytes()) == before
    assert "reused" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"set: holds another synthetic set \(17 frames, 1 subjects, seed 0 .*\), not "
                                        r"the one asked for \(17 frames, 1 subjects, seed 1 .*nothing was replaced"):
        synth.write_msra_dataset(root, frames=frames, seed=1, subjects=1)
    assert (probe.stat().st_mtime_ns, probe.read_bytes()) == before
    assert json.loads((root / synth.MARKER).read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging folder left


def test_default_folders_are_keyed_by_the_parameters():
    assert synth.set_name(2400, 0, 5) != synth.set_name(2400, 1, 5) != synth.set_name(2000, 1, 5)


def test_two_processes_generating_the_same_set_both_get_it(tmp_path, monkeypatch):
    """The second to finish finds the first's set in place (its rename fails) and keeps it."""
    root = tmp_path / "set"
    original, raced = synth._write_tree, []

    def racing(staging, *args):
        original(staging, *args)
        if not raced:
            raced.append(1)
            synth.write_msra_dataset(root, 17, 0, 1)  # the other process finishes first

    monkeypatch.setattr(synth, "_write_tree", racing)
    assert synth.write_msra_dataset(root, 17, 0, 1) == root
    assert json.loads((root / synth.MARKER).read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_parallel_workers_write_the_same_files(tmp_path, written):
    root, _ = written
    synth.write_msra_dataset(tmp_path / "set", frames=FRAMES, seed=SEED, subjects=SUBJECTS, workers=2)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "set") for p in (tmp_path / "set").rglob("*") if p.is_file())
    for name in files:
        assert (root / name).read_bytes() == (tmp_path / "set" / name).read_bytes(), name


def test_folder_that_is_not_a_synthetic_set_is_never_replaced(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not a synthetic set"):
        synth.write_msra_dataset(root, frames=17, seed=0, subjects=1)
    assert (root / "mine.txt").read_text() == "keep"


def test_failed_generation_leaves_no_partial_set(tmp_path, monkeypatch):
    calls = []

    def failing(root, rows, seed):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(root, rows, seed)

    original = synth._write_folder
    monkeypatch.setattr(synth, "_write_folder", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.write_msra_dataset(tmp_path / "set", frames=17, seed=0, subjects=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one frame per gesture folder"):
        synth.plan_frames(16, subjects=1)
    with pytest.raises(ValueError, match="non-negative"):
        synth.generate(17, seed=-1, subjects=1)
