"""MSRA loader on small files written in the documented format, and each bad-input case raising DataError."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from v2v_jax.data import cameras, msra, open_dataset
from v2v_jax.data.base import DataError

SUBJECTS = (0, 1, 2)
FRAMES_PER_GESTURE = 2


def random_depth(rng, box=(60, 40, 150, 130)) -> np.ndarray:
    """A depth image whose non-zero pixels fill `box` = (top, left, bottom, right) but for a few holes."""
    depth = np.zeros(msra.MSRA_SHAPE, np.float32)
    top, left, bottom, right = box
    depth[top:bottom, left:right] = rng.uniform(250, 450, (bottom - top, right - left)).astype(np.float32)
    depth[top + 5:top + 9, left + 3:left + 7] = 0  # holes inside the box stay holes
    return depth


def write_msra(root: Path, rng, subjects=SUBJECTS, frames=FRAMES_PER_GESTURE):
    """Write P<k>/<gesture>/ for `subjects`; return {k: (depths, joints)} in MSRA frame order."""
    written = {}
    for k in subjects:
        depths, joints = [], []
        for gesture in cameras.MSRA_GESTURES:
            d = np.stack([random_depth(rng) for _ in range(frames)])
            j = rng.uniform(-80, 80, (frames, 21, 3)).astype(np.float32) + np.float32([0, 0, 350])
            msra.write_gesture(root / f"P{k}" / gesture, d, j)
            depths.append(d)
            joints.append(j)
        written[k] = (np.concatenate(depths), np.concatenate(joints))
    return written


def write_fold_centers(folder: Path, written, test_subject, rng, invalid_rows=()):
    """Centre files of fold `test_subject`: train = the other subjects in order, test = that subject."""
    folder.mkdir(exist_ok=True)
    out = {}
    for split in ("train", "test"):
        n = sum(len(written[k][1]) for k in written if (k == test_subject) == (split == "test"))
        # float32 values: 9 significant digits read back bit-identical
        centers = (rng.uniform(-20, 20, (n, 3)) + [0, 0, 350]).astype(np.float32)
        if split == "train":
            centers[list(invalid_rows)] = np.nan
        msra.write_centers(folder / f"center_{split}_{test_subject}_refined.txt", centers)
        out[split] = centers
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("msra")
    written = write_msra(root / "data", rng)
    centers = write_fold_centers(root / "centers", written, 1, rng, invalid_rows=(3, 40))
    return root, written, centers


def test_bin_round_trip_is_bit_identical(tmp_path):
    rng = np.random.default_rng(1)
    depth = random_depth(rng, box=(0, 0, 240, 320))  # box touching every border
    depth[0, 5] = np.float32(1e-30)  # a denormal-free tiny value survives unchanged
    msra.write_depth_bin(tmp_path / "a.bin", depth)
    back = msra.read_depth_bin(tmp_path / "a.bin")
    assert back.dtype == np.float32 and back.view(np.uint32).tolist() == depth.view(np.uint32).tolist()


def test_bin_header_is_the_exclusive_box_and_paste_is_at_top_left(tmp_path):
    depth = np.zeros(msra.MSRA_SHAPE, np.float32)
    depth[10, 20] = 300.0
    depth[14, 25] = 310.0
    msra.write_depth_bin(tmp_path / "a.bin", depth)
    data = (tmp_path / "a.bin").read_bytes()
    assert np.frombuffer(data[:24], "<u4").tolist() == [320, 240, 20, 10, 26, 15]
    crop = np.frombuffer(data[24:], "<f4").reshape(5, 6)
    assert crop[0, 0] == 300.0 and crop[4, 5] == 310.0 and crop.sum() == 610.0


def test_all_zero_image_has_empty_box(tmp_path):
    msra.write_depth_bin(tmp_path / "z.bin", np.zeros(msra.MSRA_SHAPE, np.float32))
    data = (tmp_path / "z.bin").read_bytes()
    assert np.frombuffer(data, "<u4").tolist() == [320, 240, 0, 0, 0, 0]
    assert not msra.read_depth_bin(tmp_path / "z.bin").any()


def test_joint_txt_stores_negative_z_and_reads_back_positive(tmp_path):
    joints = np.random.default_rng(2).uniform(-100, 400, (3, 21, 3)).astype(np.float32)
    msra.write_joint_txt(tmp_path / "joint.txt", joints)
    lines = (tmp_path / "joint.txt").read_text().splitlines()
    assert lines[0] == "3" and len(lines) == 4
    assert float(lines[1].split()[2]) == -joints[0, 0, 2]
    np.testing.assert_array_equal(msra.read_joint_txt(tmp_path / "joint.txt"), joints)


def test_centers_writer_marks_nan_rows_invalid(tmp_path):
    msra.write_centers(tmp_path / "c.txt", np.array([[1.5, -2, 300], [np.nan, 0, 0]]))
    assert (tmp_path / "c.txt").read_text() == "1.5 -2 300\ninvalid invalid invalid\n"


def test_writers_leave_no_temporary_files(tmp_path):
    msra.write_gesture(tmp_path / "g", np.zeros((2, 240, 320), np.float32), np.zeros((2, 21, 3)))
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["000000_depth.bin", "000001_depth.bin",
                                                                  "joint.txt"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_fold_frames_match_what_was_written(tree, split):
    root, written, centers = tree
    data = msra.MSRA(root / "data", root / "centers", test_subject=1, split=split)
    subjects = [k for k in SUBJECTS if (k == 1) == (split == "test")]
    depths = np.concatenate([written[k][0] for k in subjects])
    joints = np.concatenate([written[k][1] for k in subjects])
    keep = ~np.isnan(centers[split]).any(axis=1)
    assert len(data) == keep.sum() == len(depths) - data.num_skipped
    assert data.skipped == {"invalid centre": 2 if split == "train" else 0}
    np.testing.assert_array_equal(data.joints, joints[keep])
    np.testing.assert_array_equal(data.centers, centers[split][keep])
    for i in (0, len(data) // 2, len(data) - 1):
        frame = data[i]
        original = np.flatnonzero(keep)[i]
        assert frame.depth.view(np.uint32).tolist() == depths[original].view(np.uint32).tolist()
        assert frame.frame_id == f"P{subjects[original // 34]}/{cameras.MSRA_GESTURES[original % 34 // 2]}/" \
                                 f"{original % 2:06d}"
    assert "2 invalid centre" in data.report() or split == "test"


def test_frames_are_read_only(tree):
    root, _, _ = tree
    frame = msra.MSRA(root / "data", root / "centers", 1, "test")[0]
    for array in (frame.depth, frame.center, frame.joints):
        with pytest.raises(ValueError, match="read-only"):
            array += 1


def test_without_centre_files_the_centre_is_the_joint_mean(tree):
    root, written, _ = tree
    data = open_dataset("msra", root / "data", None, "test", test_subject=2)
    np.testing.assert_allclose(data.centers, written[2][1].mean(axis=1), rtol=1e-6)


def _copy_tree(src: Path, dst: Path):
    shutil.copytree(src, dst)
    return dst


def test_missing_gesture_folder(tree, tmp_path):
    root = _copy_tree(tree[0] / "data", tmp_path / "d")
    shutil.rmtree(root / "P0" / "TIP")
    with pytest.raises(DataError, match=r"P0[/\\]TIP: missing gesture 'TIP' of subject P0 folder"):
        msra.MSRA(root, None, 1, "train")


def test_missing_test_subject_and_missing_root(tree, tmp_path):
    with pytest.raises(DataError, match="no folder P5"):
        msra.MSRA(tree[0] / "data", None, 5, "test")
    with pytest.raises(DataError, match="missing MSRA root folder"):
        msra.MSRA(tmp_path / "nowhere", None, 0, "test")


def test_missing_depth_file(tree, tmp_path):
    root = _copy_tree(tree[0] / "data", tmp_path / "d")
    (root / "P2" / "5" / "000001_depth.bin").unlink()
    with pytest.raises(DataError, match=r"000001_depth.bin: missing depth file"):
        msra.MSRA(root, None, 2, "test")


def test_missing_joint_file(tree, tmp_path):
    root = _copy_tree(tree[0] / "data", tmp_path / "d")
    (root / "P2" / "Y" / "joint.txt").unlink()
    with pytest.raises(DataError, match=r"Y[/\\]joint.txt: missing joint label file"):
        msra.MSRA(root, None, 2, "test")


def test_missing_centre_file(tree):
    with pytest.raises(DataError, match=r"center_test_2_refined.txt: missing reference centre file"):
        msra.MSRA(tree[0] / "data", tree[0] / "centers", 2, "test")


def _bin(path, header, payload_floats):
    path.write_bytes(np.asarray(header, "<u4").tobytes() + np.zeros(payload_floats, "<f4").tobytes())
    return path


def test_truncated_bin(tmp_path):
    with pytest.raises(DataError, match=r"t.bin: truncated .bin, the header box 10x5 needs 200 payload bytes, "
                                        r"the file has 196"):
        msra.read_depth_bin(_bin(tmp_path / "t.bin", [320, 240, 0, 0, 10, 5], 49))
    (tmp_path / "h.bin").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="h.bin: truncated .bin, 10 bytes is shorter than the 24-byte header"):
        msra.read_depth_bin(tmp_path / "h.bin")


def test_header_box_not_matching_payload(tmp_path):
    with pytest.raises(DataError, match=r"b.bin: header box 10x5 \(200 bytes\) does not match the payload size 204"):
        msra.read_depth_bin(_bin(tmp_path / "b.bin", [320, 240, 0, 0, 10, 5], 51))
    with pytest.raises(DataError, match="does not fit a 320x240 image"):
        msra.read_depth_bin(_bin(tmp_path / "o.bin", [320, 240, 315, 0, 325, 5], 50))
    with pytest.raises(DataError, match="header says 640x480"):
        msra.read_depth_bin(_bin(tmp_path / "s.bin", [640, 480, 0, 0, 1, 1], 1))


@pytest.mark.parametrize("bad, problem", [(np.nan, "NaN"), (-3.0, "negative")])
def test_nan_or_negative_depth(tmp_path, bad, problem):
    depth = np.full(msra.MSRA_SHAPE, 300, np.float32)
    depth[7, 9] = bad
    msra.write_depth_bin(tmp_path / "d.bin", depth)
    with pytest.raises(DataError, match=f"d.bin: depth contains {problem}"):
        msra.read_depth_bin(tmp_path / "d.bin")


def test_label_line_with_wrong_number_of_values(tmp_path):
    msra.write_joint_txt(tmp_path / "joint.txt", np.zeros((3, 21, 3)))
    lines = (tmp_path / "joint.txt").read_text().splitlines()
    lines[2] += " 7"
    (tmp_path / "joint.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"joint.txt:3: expected 63 values, found 64"):
        msra.read_joint_txt(tmp_path / "joint.txt")


def test_label_count_line_disagreeing_with_lines(tmp_path):
    msra.write_joint_txt(tmp_path / "joint.txt", np.zeros((3, 21, 3)))
    text = (tmp_path / "joint.txt").read_text()
    (tmp_path / "joint.txt").write_text("4" + text[1:])
    with pytest.raises(DataError, match="first line says 4 frames, found 3 label lines"):
        msra.read_joint_txt(tmp_path / "joint.txt")


def test_centre_file_with_a_different_frame_count(tree, tmp_path):
    root, written, _ = tree
    msra.write_centers(tmp_path / "center_test_0_refined.txt", np.zeros((33, 3)))
    with pytest.raises(DataError, match=r"center_test_0_refined.txt: 33 centres but 34 labelled frames"):
        msra.MSRA(root / "data", tmp_path, 0, "test")
