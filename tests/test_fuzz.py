"""Fuzzing every file parser of the data sets (hypothesis): whatever the bytes, a parser returns data that meets its
contract or raises DataError naming the file; nothing else (no IndexError, struct.error, OSError, MemoryError ...).

Inputs are mutations of a small valid file of each format (bytes flipped, cut, inserted, deleted, overwritten with
NaN/Inf/0xFFFFFFFF; for text, tokens replaced by edge values and lines dropped or repeated) and unrelated random
bytes. `derandomize=True` makes the examples the same on every run; raise FUZZ_EXAMPLES for a longer search.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from v2v_jax import metrics
from v2v_jax.data import cameras, icvl, msra
from v2v_jax.data.base import DataError, check_depth
from v2v_jax.data.centers import read_centers
from v2v_jax.data.hands2017 import HANDS2017
from v2v_jax.data.images import read_png_nyu, read_png_uint16
from v2v_jax.data.itop import ITOP
from v2v_jax.data.nyu import read_joint_data

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))  # 3000 each found nothing more (98 s)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RNG = np.random.default_rng(0)
MSRA_SHAPE, VGA = (240, 320), (480, 640)
EDGE_WORDS = [b"nan", b"-nan", b"inf", b"-inf", b"1e400", b"-1e400", b"0", b"-0", b"", b"x", b"invalid", b"1e-320",
              b"99999999999999999999", b"-1", b"\xff", b"0x10"]
EDGE_BYTES = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff",
              b"\xff\xff\xff\x7f"]


@st.composite
def byte_mutations(draw, seed: bytes):
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "overwrite")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at + 4] = draw(st.sampled_from(EDGE_BYTES))
    return bytes(data)


@st.composite
def text_mutations(draw, seed: bytes):
    lines = [line.split(b" ") for line in seed.split(b"\n")]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("word", "drop line", "repeat line", "drop word", "add word")))
        row = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines:
            lines = [[b""]]
        words = lines[row]
        col = draw(st.integers(0, max(len(words) - 1, 0)))
        if op == "word" and words:
            words[col] = draw(st.sampled_from(EDGE_WORDS))
        elif op == "drop line":
            del lines[row]
        elif op == "repeat line":
            lines.insert(row, list(words))
        elif op == "drop word" and words:
            del words[col]
        else:
            words.insert(col, draw(st.sampled_from(EDGE_WORDS)))
    return b"\n".join(b" ".join(words) for words in lines)


def binary_inputs(seed: bytes):
    return st.one_of(byte_mutations(seed), st.binary(max_size=512))


def text_inputs(seed: bytes):
    return st.one_of(text_mutations(seed), byte_mutations(seed), st.binary(max_size=256))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def parse(path: Path, data: bytes, parser):
    """parser(path) on `data` written to `path`; None if it raised DataError, whose message must start with the
    file it is about (the one written or, for a data set, another file of the same set)."""
    path.write_bytes(data)
    try:
        return parser(path)
    except DataError as error:
        assert str(error).startswith(str(path.parent.parent)), error
        return None


def blob_depth(shape, low=300.0, high=500.0) -> np.ndarray:
    depth = np.zeros(shape, np.float32)
    depth[..., 10:16, 20:25] = RNG.uniform(low, high, depth[..., 10:16, 20:25].shape)
    return depth


# --- seeds: small valid files of each format ------------------------------------------------------------------

MSRA_BIN = msra.encode_depth_bin(blob_depth(MSRA_SHAPE))
MSRA_JOINTS = msra.format_joint_txt(RNG.normal(0, 50, (2, 21, 3)) + [0, 0, 300]).encode()
CENTRES = msra.format_centers(np.array([[1.5, -2.0, 300.25], [np.nan] * 3, [0.0, 3.0, 410.0]])).encode()
ICVL_LABELS = "".join(f"image_{i:04d}.png " + " ".join(f"{v:.3f}" for v in RNG.uniform(100, 400, 48)) + "\n"
                      for i in range(2)).encode()
ICVL_RAW = blob_depth(MSRA_SHAPE).astype("<f4").tobytes()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


PNG16 = png_bytes(blob_depth(MSRA_SHAPE).astype(np.uint16))
NYU_PNG = png_bytes(np.stack([np.zeros(VGA, np.uint8), np.full(VGA, 2, np.uint8), np.full(VGA, 7, np.uint8)], -1))


def mat_bytes() -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"joint_xyz": RNG.normal(0, 50, (1, 2, 36, 3))})
    return buffer.getvalue()


NYU_MAT = mat_bytes()
RESULTS = "".join(" ".join(f"{v:.4f}" for v in row) + "\n" for row in np.concatenate(
    [RNG.uniform(100, 300, (3, 4, 2)), RNG.uniform(300, 600, (3, 4, 1))], -1).reshape(3, -1)).encode()


# --- the parsers ----------------------------------------------------------------------------------------------

@FUZZ
@given(data=binary_inputs(MSRA_BIN))
def test_msra_depth_bin(scratch, data):
    depth = parse(scratch / "000000_depth.bin", data, msra.read_depth_bin)
    if depth is not None:
        assert depth.shape == MSRA_SHAPE and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth >= 0).all()


@FUZZ
@given(data=text_inputs(MSRA_JOINTS))
def test_msra_joint_txt(scratch, data):
    joints = parse(scratch / "joint.txt", data, msra.read_joint_txt)
    if joints is not None:
        assert joints.ndim == 3 and joints.shape[1:] == (21, 3) and joints.dtype == np.float32
        assert np.isfinite(joints).all()


@FUZZ
@given(data=text_inputs(CENTRES))
def test_reference_centres(scratch, data):
    centres = parse(scratch / "center_train_0_refined.txt", data, read_centers)
    if centres is not None:
        assert centres.ndim == 2 and centres.shape[1] == 3
        nan_rows = np.isnan(centres).any(axis=1)
        assert np.isnan(centres[nan_rows]).all() and np.isfinite(centres[~nan_rows]).all()


@FUZZ
@given(data=text_inputs(ICVL_LABELS))
def test_icvl_labels(scratch, data):
    result = parse(scratch / "labels.txt", data, lambda p: icvl.read_labels(p, cameras.ICVL))
    if result is not None:
        names, joints = result
        assert len(names) == len(joints) and joints.shape[1:] == (16, 3) and np.isfinite(joints).all()


def checked(reader, shape):
    """A depth reader followed by the check every loader applies to what it read."""
    return lambda path: check_depth(reader(path, shape), path, shape)


def assert_depth(depth, shape):
    if depth is not None:
        assert depth.shape == shape and depth.dtype == np.float32 and np.isfinite(depth).all() and depth.min() >= 0


@FUZZ
@given(data=binary_inputs(ICVL_RAW))
def test_icvl_raw_bin(scratch, data):
    assert_depth(parse(scratch / "image_0000.bin", data, checked(icvl.read_depth_raw, MSRA_SHAPE)), MSRA_SHAPE)


@FUZZ
@given(data=binary_inputs(PNG16))
def test_depth_png16(scratch, data):
    assert_depth(parse(scratch / "image_0000.png", data, checked(read_png_uint16, MSRA_SHAPE)), MSRA_SHAPE)


@FUZZ
@given(data=binary_inputs(NYU_PNG))
def test_nyu_depth_png(scratch, data):
    assert_depth(parse(scratch / "depth_1_0000001.png", data, checked(read_png_nyu, VGA)), VGA)


@FUZZ
@given(data=binary_inputs(NYU_MAT))
def test_nyu_joint_data_mat(scratch, data):
    joints = parse(scratch / "joint_data.mat", data, read_joint_data)
    if joints is not None:
        assert joints.ndim == 3 and joints.shape[1:] == (14, 3) and np.isfinite(joints).all()


def hands2017_root(scratch: Path) -> Path:
    root = scratch / "hands2017"
    (root / "training" / "images").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (root / "training" / "images" / f"image_D{i:08d}.png").write_bytes(
            png_bytes(blob_depth(VGA).astype(np.uint16)))
    return root


HANDS_LABELS = "".join(f"image_D{i:08d}.png " + " ".join(f"{v:.4f}" for v in RNG.uniform(-80, 80, 63)) + "\n"
                       for i in range(2)).encode()


@FUZZ
@given(data=text_inputs(HANDS_LABELS))
def test_hands2017_annotation(scratch, data):
    """Through the data set: its label parser, then every frame it accepted read and checked."""
    root = hands2017_root(scratch)
    dataset = parse(root / "training" / "Training_Annotation.txt", data, lambda _: HANDS2017(root))
    if dataset is not None:
        for i in range(len(dataset)):
            frame = dataset[i]
            assert np.isfinite(frame.joints).all() and np.isfinite(frame.center).all()


def h5_bytes(**datasets) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for name, (array, options) in datasets.items():
            f.create_dataset(name, data=array, **options)
    return buffer.getvalue()


# Valid ITOP label and depth files of 2 frames (depth chunked and compressed, so that it stays small).
ITOP_LABELS = h5_bytes(real_world_coordinates=(RNG.normal(0, 0.3, (2, 15, 3)).astype(np.float32) + [0, 0, 2.5], {}),
                       is_valid=(np.array([1, 1], np.uint8), {}), id=(np.array([b"00_00000", b"00_00001"]), {}))
ITOP_DEPTH = h5_bytes(data=(blob_depth((2, *MSRA_SHAPE), 1.0, 3.0), dict(chunks=(1, *MSRA_SHAPE), compression="gzip")))


def itop_inputs():
    return st.one_of(st.tuples(st.just("labels"), binary_inputs(ITOP_LABELS)),
                     st.tuples(st.just("depth_map"), binary_inputs(ITOP_DEPTH)))


@FUZZ
@given(case=itop_inputs())
def test_itop_hdf5(scratch, case):
    which, data = case
    root = scratch / "itop"
    root.mkdir(exist_ok=True)
    (root / "ITOP_side_test_labels.h5").write_bytes(ITOP_LABELS)
    (root / "ITOP_side_test_depth_map.h5").write_bytes(ITOP_DEPTH)

    def open_and_read(_):
        dataset = ITOP(root, split="test")
        return [dataset[i] for i in range(len(dataset))]

    frames = parse(root / f"ITOP_side_test_{which}.h5", data, open_and_read)
    for frame in frames or []:
        assert frame.depth.shape == MSRA_SHAPE and np.isfinite(frame.depth).all()


@FUZZ
@given(gt=text_inputs(RESULTS), pred=text_inputs(RESULTS))
def test_result_files_through_the_evaluator(scratch, gt, pred):
    """Community result files (u v d per joint), ground truth and prediction both mutated, read as `evaluate`
    reads them: errors per frame and joint, all finite, or DataError naming one of the two files."""
    folder = scratch / "results"
    folder.mkdir(exist_ok=True)
    (folder / "pred.txt").write_bytes(pred)
    errors = parse(folder / "gt.txt", gt, lambda p: metrics.evaluate_files(p, [folder / "pred.txt"], "nyu"))
    if errors is not None:
        (e,) = errors.values()
        assert e.ndim == 2 and np.isfinite(e).all()
