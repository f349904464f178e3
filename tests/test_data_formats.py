"""ICVL, NYU, HANDS2017 and ITOP loaders on small files written in the formats their docstrings describe."""

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from v2v_jax.data import cameras, open_dataset
from v2v_jax.data.base import DataError
from v2v_jax.data.icvl import ICVL
from v2v_jax.data.itop import ITOP
from v2v_jax.data.msra import write_centers


def uint16_depth(rng, spec) -> np.ndarray:
    depth = np.zeros((spec.height, spec.width), np.uint16)
    depth[20:60, 30:90] = rng.integers(200, 2000, (40, 60))
    return depth


def save_png16(path: Path, depth: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(depth).save(path)


# ICVL ----------------------------------------------------------------------------------------------------------

def write_icvl(root: Path, rng, counts={"labels.txt": 3, "test_seq_1.txt": 2, "test_seq_2.txt": 2}):
    """Label files of pixel u v d joints and their depth PNGs; returns {label file: (names, uvd, depths)}."""
    written = {}
    for label_file, n in counts.items():
        folder = root / ("Training" if label_file == "labels.txt" else "Testing")
        names = [f"{label_file[:-4]}/image_{i:04d}.png" for i in range(n)]
        uvd = np.stack([rng.uniform(20, 300, (n, 16)), rng.uniform(20, 220, (n, 16)),
                        rng.uniform(250, 450, (n, 16))], axis=-1).round(3)
        depths = [uint16_depth(rng, cameras.ICVL) for _ in range(n)]
        for name, depth in zip(names, depths):
            save_png16(folder / "Depth" / name, depth)
        (folder / label_file).write_text("".join(
            f"{name} {' '.join(f'{v:g}' for v in row.ravel())} \n" for name, row in zip(names, uvd)))
        written[label_file] = (names, uvd, depths)
    return written


def test_icvl_train_and_test(tmp_path):
    written = write_icvl(tmp_path, np.random.default_rng(0))
    train = open_dataset("icvl", tmp_path, None, "train")
    names, uvd, depths = written["labels.txt"]
    assert len(train) == 3 and train.frame_ids == names
    # ICVL's y points down: Y = (v - cy) z / fy
    expected = np.stack([(uvd[..., 0] - 160) * uvd[..., 2] / 241.42, (uvd[..., 1] - 120) * uvd[..., 2] / 241.42,
                         uvd[..., 2]], axis=-1)
    np.testing.assert_allclose(train.joints, expected, rtol=1e-6)  # float32 storage: 2^-24 relative
    np.testing.assert_array_equal(train[1].depth, depths[1].astype(np.float32))
    test = ICVL(tmp_path, None, "test")
    assert test.frame_ids == written["test_seq_1.txt"][0] + written["test_seq_2.txt"][0]


def test_icvl_converted_bin(tmp_path):
    written = write_icvl(tmp_path, np.random.default_rng(1), {"labels.txt": 2})
    raw = np.random.default_rng(2).uniform(0, 900, (240, 320)).astype(np.float32)
    for name in written["labels.txt"][0]:
        (tmp_path / "Training" / "Depth" / name).with_suffix(".bin").write_bytes(raw.astype("<f4").tobytes())
    data = ICVL(tmp_path, None, "train", depth_format="bin")
    np.testing.assert_array_equal(data[0].depth, raw)
    (tmp_path / "Training" / "Depth" / written["labels.txt"][0][1]).with_suffix(".bin").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match="image_0001.bin: 8 bytes, expected 307200"):
        data[1]


def test_icvl_errors(tmp_path):
    write_icvl(tmp_path, np.random.default_rng(3), {"labels.txt": 3})
    labels = tmp_path / "Training" / "labels.txt"
    with pytest.raises(DataError, match="test_seq_1.txt: missing label file"):
        ICVL(tmp_path, None, "test")
    write_centers(tmp_path / "c.txt", np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"c.txt: 2 centres but 3 labelled frames"):
        ICVL(tmp_path, tmp_path / "c.txt", "train")
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:1] + [lines[1].rsplit(" ", 2)[0]] + lines[2:]))
    with pytest.raises(DataError, match=r"labels.txt:2: expected 49 values, found 48"):
        ICVL(tmp_path, None, "train")
    labels.write_text("\n".join(lines))
    (tmp_path / "Training" / "Depth" / "labels" / "image_0002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="image_0002.png: cannot read PNG"):
        ICVL(tmp_path, None, "train")[2]


# NYU -----------------------------------------------------------------------------------------------------------

def save_nyu_png(path: Path, depth: np.ndarray):
    rgb = np.zeros(depth.shape + (3,), np.uint8)
    rgb[..., 1], rgb[..., 2] = depth >> 8, depth & 255
    rgb[..., 0] = 77  # red carries nothing in NYU's encoding
    Image.fromarray(rgb).save(path)


def write_nyu(root: Path, rng, n=3, kinects=3):
    folder = root / "test"
    folder.mkdir(parents=True)
    xyz = rng.uniform(-100, 900, (kinects, n, 36, 3))
    scipy.io.savemat(folder / "joint_data.mat", {"joint_xyz": xyz, "joint_names": np.array(["x"] * 36)})
    depths = [uint16_depth(rng, cameras.NYU) for _ in range(n)]
    for i, depth in enumerate(depths):
        save_nyu_png(folder / f"depth_1_{i + 1:07d}.png", depth)
    return xyz, depths


def test_nyu(tmp_path):
    xyz, depths = write_nyu(tmp_path, np.random.default_rng(4))
    write_centers(tmp_path / "c.txt", np.array([[1, 2, 700], [np.nan] * 3, [3, 4, 800]]))
    data = open_dataset("nyu", tmp_path, tmp_path / "c.txt", "test")
    assert len(data) == 2 and data.skipped == {"invalid centre": 1}
    assert data.frame_ids == ["test/depth_1_0000001", "test/depth_1_0000003"]
    np.testing.assert_array_equal(data.joints, xyz[0][[0, 2]][:, cameras.NYU_EVAL_JOINT_IDS].astype(np.float32))
    np.testing.assert_array_equal(data[1].depth, depths[2].astype(np.float32))  # B + 256 G, red ignored
    assert data[1].depth.max() >= 256  # the G byte was exercised


def test_nyu_errors(tmp_path):
    write_nyu(tmp_path, np.random.default_rng(5))
    (tmp_path / "test" / "depth_1_0000002.png").unlink()
    with pytest.raises(DataError, match="depth_1_0000002.png: missing depth file"):
        open_dataset("nyu", tmp_path, None, "test")
    with pytest.raises(DataError, match=r"train: missing NYU train folder"):
        open_dataset("nyu", tmp_path, None, "train")
    scipy.io.savemat(tmp_path / "test" / "joint_data.mat", {"joint_xyz": np.zeros((1, 2, 35, 3))})
    with pytest.raises(DataError, match=r"joint_data.mat: joint_xyz has shape \(1, 2, 35, 3\)"):
        open_dataset("nyu", tmp_path, None, "test")


# HANDS2017 -----------------------------------------------------------------------------------------------------

def write_hands2017(root: Path, rng, n=3):
    joints = rng.uniform(-100, 600, (n, 21, 3)).astype(np.float32)
    names = [f"image_D{i + 1:08d}.png" for i in range(n)]
    depths = [uint16_depth(rng, cameras.HANDS2017) for _ in range(n)]
    for name, depth in zip(names, depths):
        save_png16(root / "training" / "images" / name, depth)
        save_png16(root / "frame" / "images" / name, depth)
    (root / "training" / "Training_Annotation.txt").write_text("".join(
        f"{name}\t{' '.join(f'{v:.9g}' for v in j.ravel())}\n" for name, j in zip(names, joints)))
    (root / "frame" / "BoundingBox.txt").write_text("".join(f"{name} 10 20 100 120\n" for name in names))
    return names, joints, depths


def test_hands2017(tmp_path):
    names, joints, depths = write_hands2017(tmp_path, np.random.default_rng(6))
    train = open_dataset("hands2017", tmp_path, None, "train")
    assert train.frame_ids == names
    np.testing.assert_array_equal(train.joints, joints)
    np.testing.assert_array_equal(train[2].depth, depths[2].astype(np.float32))
    with pytest.raises(DataError, match="BoundingBox.txt: frames without joint labels need a reference centre"):
        open_dataset("hands2017", tmp_path, None, "test")
    write_centers(tmp_path / "c.txt", np.full((3, 3), 400.0))
    test = open_dataset("hands2017", tmp_path, tmp_path / "c.txt", "test")
    assert len(test) == 3 and np.isnan(test[0].joints).all()  # test joints are withheld


def test_hands2017_errors(tmp_path):
    write_hands2017(tmp_path, np.random.default_rng(7))
    labels = tmp_path / "training" / "Training_Annotation.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:2] + [lines[2] + " 1.0"]))
    with pytest.raises(DataError, match=r"Training_Annotation.txt:3: expected 64 values, found 65"):
        open_dataset("hands2017", tmp_path, None, "train")
    labels.write_text("\n".join(lines[:2] + [lines[2].replace(" ", " x", 1)]))
    with pytest.raises(DataError, match=r"Training_Annotation.txt:3: not a number"):
        open_dataset("hands2017", tmp_path, None, "train")


# ITOP ----------------------------------------------------------------------------------------------------------

def write_itop(root: Path, rng, view="top", split="test", n=5, is_valid=(1, 1, 0, 1, 1)):
    metres = rng.uniform(1.0, 4.0, (n, 240, 320)).astype(np.float16)
    metres[:, :10] = 0
    joints = rng.uniform(-1, 3, (n, 15, 3)).astype(np.float32)
    with h5py.File(root / f"ITOP_{view}_{split}_depth_map.h5", "w") as f:
        f["data"] = metres
    with h5py.File(root / f"ITOP_{view}_{split}_labels.h5", "w") as f:
        f["real_world_coordinates"] = joints
        f["is_valid"] = np.asarray(is_valid, np.uint8)
        f["id"] = np.array([f"04_{i:05d}".encode() for i in range(n)])
    lines = ["0.1 -0.2 2.5", "invalid invalid invalid", "0.1 0.2 3", "invalid invalid invalid", "-0.5 0 2.25"]
    (root / f"ITOP_{view}_center_{split}.txt").write_text("\n".join(lines[:n]) + "\n")
    return metres, joints


def test_itop_converts_metres_to_mm_and_skips_invalid(tmp_path):
    metres, joints = write_itop(tmp_path, np.random.default_rng(8))
    data = ITOP(tmp_path, tmp_path, view="top", split="test")
    # frame 1 and 3: invalid centre; frame 2: valid centre but is_valid = 0
    assert data.skipped == {"invalid centre": 2, "marked invalid in labels": 1}
    assert len(data) == 2 and data.frame_ids == ["top/test/04_00000", "top/test/04_00004"]
    np.testing.assert_array_equal(data.centers, np.float32([[100, -200, 2500], [-500, 0, 2250]]))
    np.testing.assert_array_equal(data.joints[1], (joints[4].astype(np.float64) * 1000).astype(np.float32))
    np.testing.assert_array_equal(data[1].depth, metres[4].astype(np.float32) * np.float32(1000))
    assert "2 invalid centre, 1 marked invalid in labels" in data.report()


def test_itop_pickles_without_its_file_handle(tmp_path):
    write_itop(tmp_path, np.random.default_rng(9))
    data = ITOP(tmp_path, tmp_path, view="top", split="test")
    first = data[0].depth
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[0].depth, first)


def test_itop_errors(tmp_path):
    write_itop(tmp_path, np.random.default_rng(10))
    with pytest.raises(DataError, match="ITOP_side_test_labels.h5: missing ITOP HDF5 file"):
        open_dataset("itop", tmp_path, tmp_path, "test", view="side")
    with h5py.File(tmp_path / "ITOP_top_test_depth_map.h5", "w") as f:
        f["data"] = np.zeros((4, 240, 320), np.float16)
    with pytest.raises(DataError, match=r"depth_map.h5: data has shape \(4, 240, 320\), expected \(5, 240, 320\)"):
        open_dataset("itop", tmp_path, tmp_path, "test", view="top")
    with h5py.File(tmp_path / "ITOP_top_test_depth_map.h5", "w") as f:
        f["data"] = np.full((5, 240, 320), np.nan, np.float16)
    with pytest.raises(DataError, match=r"depth_map.h5\[0\]: depth contains NaN"):
        open_dataset("itop", tmp_path, tmp_path, "test", view="top")[0]
    (tmp_path / "ITOP_top_center_test.txt").write_text("0 0 2\ninvalid invalid 3\n")
    with pytest.raises(DataError, match="center_test.txt:2: partly invalid centre"):
        open_dataset("itop", tmp_path, tmp_path, "test", view="top")


def test_open_dataset_rejects_unknown_names_and_misplaced_subjects(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'msra2'"):
        open_dataset("msra2", tmp_path, None, "train")
    with pytest.raises(ValueError, match="test_subject is required for msra"):
        open_dataset("msra", tmp_path, None, "train")
    with pytest.raises(ValueError, match="test_subject is required for msra and only for msra"):
        open_dataset("nyu", tmp_path, None, "train", test_subject=3)
