"""Synthetic hand depth data set in MSRA's camera, joints and file layout: the default, with no download.

    python -m v2v_jax.data.synth --out DIR --frames N --seed S [--subjects K] [--workers W]

Frames are spread over subjects P0..P{K-1} and, within each subject, over the 17 MSRA gesture folders (each gets at
least one). Every frame draws from its own generator seeded by (seed, subject, gesture, frame index), so a frame does
not depend on how many frames are generated, in what order, or by how many processes. A subject is one hand
(`hand_model.sample_shape`, seeded by (seed, subject)): its scale, bone lengths, palm proportions and thickness
differ from the other subjects', so leave-one-subject-out tests generalisation to a new hand.

Reference centre: the mean of the 21 joints plus N(0, CENTRE_NOISE_MM) per axis, standing in for the refinement
network that made the published centres (github.com/mks0601/V2V-PoseNet_RELEASE/issues/54): 4 mm per axis is an
RMS 3-D error of 6.9 mm (4 mm x sqrt 3). The joint mean rather than the foreground centroid, so that the forearm
stub and occlusions do not move the centre. One centre per frame, written to every centre file that lists the frame
(the real files differ per fold).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from v2v_jax.data import cameras, hand_model, msra, render
from v2v_jax.data.base import DataError

SYNTH_VERSION = 1
DEFAULT_FRAMES = 2400
DEFAULT_SUBJECTS = 5
CENTRE_NOISE_MM = 4.0
MARKER = "synth.json"
RENDER_BATCH = 16
_SUBJECT_STREAM, _FRAME_STREAM = 0, 1
SPEC = cameras.MSRA


def plan_frames(num_frames: int, subjects: int = DEFAULT_SUBJECTS) -> np.ndarray:
    """(N, 3) int rows (subject, gesture index, frame index in its folder) in MSRA file order: subject, gesture, frame.

    Frames are shared as evenly as possible, first over subjects, then over each subject's 17 gesture folders.
    """
    folders = len(cameras.MSRA_GESTURES)
    if subjects < 1 or num_frames < subjects * folders:
        raise ValueError(f"need at least one frame per gesture folder: {subjects} subjects x {folders} gestures "
                         f"= {subjects * folders} frames, asked for {num_frames}")
    rows = []
    for s, per_subject in enumerate(_shares(num_frames, subjects)):
        for g, per_folder in enumerate(_shares(per_subject, folders)):
            rows += [(s, g, i) for i in range(per_folder)]
    return np.array(rows, np.int64)


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (k < total % parts) for k in range(parts)]


def subject_shape(seed: int, subject: int) -> hand_model.HandShape:
    return hand_model.sample_shape(np.random.default_rng([seed, _SUBJECT_STREAM, subject]))


def frame_rng(seed: int, subject: int, gesture: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _FRAME_STREAM, subject, gesture, index])


@dataclasses.dataclass(frozen=True)
class Scene:
    """A posed hand in the camera frame (mm), before rendering."""
    joints: np.ndarray   # (21, 3)
    spheres: np.ndarray  # (S, 3)
    center: np.ndarray   # (3,)


def sample_scene(rng: np.random.Generator, shape: hand_model.HandShape, gesture: str) -> Scene:
    """Pose, view and reference centre of one frame."""
    hand = hand_model.forward_kinematics(shape, hand_model.sample_pose(rng, shape, gesture))
    rotation, translation = hand_model.sample_placement(rng, hand, SPEC)
    joints = hand @ rotation.T + translation
    center = joints.mean(axis=0) + rng.normal(0.0, CENTRE_NOISE_MM, 3)
    return Scene(joints, shape.spheres(hand) @ rotation.T + translation, center)


@dataclasses.dataclass(frozen=True)
class SynthFrames:
    """Generated frames in plan order; depth (N, 240, 320) float32 mm (0 = no data), world mm with y up."""
    depth: np.ndarray
    joints: np.ndarray   # (N, 21, 3) float32
    centers: np.ndarray  # (N, 3) float32
    plan: np.ndarray     # (N, 3) int: subject, gesture index, frame index in its folder

    @property
    def subject(self) -> np.ndarray:
        return self.plan[:, 0]

    @property
    def gesture(self) -> np.ndarray:
        """Index into `cameras.MSRA_GESTURES`."""
        return self.plan[:, 1]


def render_rows(rows: np.ndarray, seed: int) -> SynthFrames:
    """Generate the frames named by `plan_frames` rows, RENDER_BATCH rows at a time grouped by subject (hands differ
    in their number of spheres)."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    depth = np.zeros((len(rows), SPEC.height, SPEC.width), np.float32)
    joints = np.zeros((len(rows), 21, 3), np.float32)
    centers = np.zeros((len(rows), 3), np.float32)
    shapes = {}
    for start in range(0, len(rows), RENDER_BATCH):
        batch = rows[start:start + RENDER_BATCH]
        for subject in np.unique(batch[:, 0]):
            at = start + np.flatnonzero(batch[:, 0] == subject)
            if subject not in shapes:
                shapes[subject] = subject_shape(seed, int(subject))
            shape = shapes[subject]
            rngs = [frame_rng(seed, *map(int, rows[i])) for i in at]
            scenes = [sample_scene(rng, shape, cameras.MSRA_GESTURES[rows[i, 1]]) for rng, i in zip(rngs, at)]
            clean, cosine = render.render_spheres(np.stack([s.spheres for s in scenes]), shape.sphere_radii, SPEC)
            for k, (i, rng, scene) in enumerate(zip(at, rngs, scenes)):
                depth[i] = render.sensor_model(clean[k], cosine[k], rng)
                joints[i], centers[i] = scene.joints, scene.center
    return SynthFrames(depth, joints, centers, rows)


def generate(num_frames: int, seed: int = 0, subjects: int = DEFAULT_SUBJECTS) -> SynthFrames:
    """The whole set in memory (N x 300 KB of depth: keep N small; `write_msra_dataset` streams)."""
    return render_rows(plan_frames(num_frames, subjects), seed)


def _write_folder(root: str, rows: np.ndarray, seed: int) -> np.ndarray:
    """Write one gesture folder (rows of one subject and gesture); return its centres."""
    frames = render_rows(rows, seed)
    subject, gesture = int(rows[0, 0]), cameras.MSRA_GESTURES[rows[0, 1]]
    folder = Path(root) / f"P{subject}" / gesture
    folder.mkdir(parents=True)
    for index, depth in zip(rows[:, 2], frames.depth):
        msra.write_depth_bin(folder / msra.depth_name(int(index)), depth)
    msra.write_joint_txt(folder / "joint.txt", frames.joints)
    return frames.centers


def _marker(frames: int, seed: int, subjects: int) -> dict:
    return {"generator": "v2v_jax.data.synth", "version": SYNTH_VERSION, "frames": frames, "seed": seed,
            "subjects": subjects}


def _read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_tree(root: Path, frames: int, seed: int, subjects: int, workers: int) -> None:
    plan = plan_frames(frames, subjects)
    folders = [plan[(plan[:, 0] == s) & (plan[:, 1] == g)] for s in range(subjects)
               for g in range(len(cameras.MSRA_GESTURES))]
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            centers = list(pool.map(_write_folder, [str(root)] * len(folders), folders, [seed] * len(folders)))
    else:
        centers = [_write_folder(str(root), rows, seed) for rows in folders]
    centers = np.concatenate(centers)
    (root / "center").mkdir()
    for k in range(subjects):
        test = plan[:, 0] == k
        msra.write_centers(root / "center" / f"center_test_{k}_refined.txt", centers[test])
        msra.write_centers(root / "center" / f"center_train_{k}_refined.txt", centers[~test])
    (root / MARKER).write_text(json.dumps(_marker(frames, seed, subjects), indent=1) + "\n")


def set_name(frames: int, seed: int, subjects: int) -> str:
    """The folder name that keys a set by everything that makes it: generator version, frames, subjects, seed."""
    return f"v{SYNTH_VERSION}_frames{frames}_subjects{subjects}_seed{seed}"


def _describe(marker: dict) -> str:
    return (f"{marker.get('frames')} frames, {marker.get('subjects')} subjects, seed {marker.get('seed')} (generator "
            f"version {marker.get('version')})")


def write_msra_dataset(out_dir, frames: int = DEFAULT_FRAMES, seed: int = 0, subjects: int = DEFAULT_SUBJECTS,
                       workers: int = 1) -> Path:
    """Generate the set into `out_dir` in MSRA layout (P{s}/{gesture}/, center/), or reuse it if already there.

    `out_dir/synth.json` records the generator version, frames, seed and subjects. A set with the same record is
    reused; a folder holding anything else (another set, or files that are no synthetic set) is refused with
    DataError and left untouched, so that a run reading a set never sees it change. The set is written to a
    temporary folder beside `out_dir` and renamed into place, so `out_dir` is always complete; of two processes
    generating the same set at once, the second to finish keeps the first's.
    """
    out_dir = Path(out_dir)
    wanted = _marker(frames, seed, subjects)
    plan_frames(frames, subjects)  # refuses impossible arguments before anything is written
    if _reusable(out_dir, wanted):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_tree(staging, frames, seed, subjects, workers)
        try:
            staging.rename(out_dir)  # atomic; fails if out_dir appeared meanwhile and is not empty
        except OSError:
            if not _reusable(out_dir, wanted):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _reusable(out_dir: Path, wanted: dict) -> bool:
    """True if `out_dir` holds the set `wanted`, False if it is absent or empty; DataError if it holds anything
    else."""
    found = _read_marker(out_dir)
    if found == wanted:
        return True
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return False
    if found is None:
        raise DataError(f"{out_dir}: not empty and not a synthetic set (no {MARKER}); refusing to write one there")
    raise DataError(f"{out_dir}: holds another synthetic set ({_describe(found)}), not the one asked for "
                    f"({_describe(wanted)}); choose another folder for it (nothing was replaced)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (MSRA layout)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS)
    parser.add_argument("--workers", type=int, default=1, help="processes generating gesture folders in parallel")
    args = parser.parse_args(argv)
    reused = _read_marker(Path(args.out)) == _marker(args.frames, args.seed, args.subjects)
    start = time.perf_counter()
    out = write_msra_dataset(args.out, args.frames, args.seed, args.subjects, args.workers)
    done = "already complete, reused" if reused else f"written in {time.perf_counter() - start:.1f} s"
    print(f"{out}: {args.frames} frames, {args.subjects} subjects, seed {args.seed}: {done}")


if __name__ == "__main__":
    main()
