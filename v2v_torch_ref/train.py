"""The PyTorch reference trainer: the port's pipeline (per-sample NumPy voxels and targets in DataLoader workers).

    python -m v2v_torch_ref.train [flags]     # train.py's flags for the data, the network and the optimiser

It is independent of the product's trainer: its options, the opening of the data sets, the errors and the report
are its own, and it takes from `v2v_jax` only the data-file readers and the frame order of an epoch (the list is in
tests/test_import_graph.py), so that a bug in the product's trainer cannot hide in both sides of a cross-check.
It writes a port-format state_dict (`model.pth`) that `python -m v2v_jax.predict --torch-checkpoint` evaluates in
JAX, and its options as `options.json`, beside it. So its default geometry is the port's (pixels numbered from 1,
voxel coordinates truncated; docs/conventions.md), the one `predict` assumes for a state_dict; `--geometry ours`
trains in train.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from v2v_jax.data import DATASET_NAMES, DataError, open_dataset
from v2v_jax.data.cameras import MSRA_GESTURES, DatasetSpec, get
from v2v_jax.data.loader import epoch_order
from v2v_torch_ref import geometry_ref
from v2v_torch_ref.model import DTYPES, V2VModel

SCALE_RANGE, MAX_ANGLE_DEG, MAX_TRANSLATION = (0.8, 1.2), 40.0, 4.0
SYNTH_FOLDER = Path("data/synth")   # where train.py writes each synthetic set, in a folder named by its parameters
OVERFIT_STEPS_PER_EPOCH = 50        # --overfit repeats its samples so that an epoch spans about this many steps
WITHIN_MM = (10, 20, 40)            # the report's thresholds on a frame's worst joint error
STEADY_AFTER = 5                    # steps (warm-up, first DataLoader fill) left out of the reported speed
GEOMETRY_WHY = {  # the line that names the geometry of a run, and why
    "port": "the PyTorch port's (pixels numbered from 1, voxel coordinates truncated), the one predict "
            "--torch-checkpoint assumes for a state_dict like model.pth",
    "ours": "train.py's (pixels numbered from 0, voxel coordinates floored); give predict --torch-checkpoint "
            "--geometry ours for this model.pth",
}


@dataclasses.dataclass(frozen=True)
class Options:
    """What the reference trainer reads from its command line; the names and defaults of train.py's flags."""
    data: str = "synth"
    root: str | None = None
    centers: str | None = None
    test_subject: int | None = None
    itop_view: str = "side"
    synth_frames: int = 2400
    synth_subjects: int = 5
    synth_seed: int = 0
    num_workers: int = 0
    on_bad_frame: str = "error"
    grid: int = 24
    cube_mm: float | None = None
    augment: bool = True
    geometry: str = "port"  # the geometry of port-format state_dicts; train.py's default is "ours"
    width: int = 16
    dtype: str = "float32"
    init: str = "original"
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 8
    epochs: int = 8
    max_steps: int | None = None
    overfit: int = 0
    seed: int = 0
    out: str = "runs/torch"


# The authors' configuration (mks0601/V2V-PoseNet_RELEASE, src/config.lua and src/train.lua: RMSprop 2.5e-4, batch 8,
# 10 epochs; src/model.lua: an 88^3 input, 32 channels after the first pooling), in the data set's own cube.
PAPER = dict(grid=88, width=32, batch_size=8, epochs=10, optimizer="rmsprop", lr=2.5e-4, cube_mm=None)


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (--help lists the options)\n")
        raise SystemExit(2)


def _integer(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value
    return parse


def _grid(text: str) -> int:
    value = _integer(8)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 (the network halves it three times), got {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _switch(text: str) -> bool:
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(prog="python -m v2v_torch_ref.train", description=__doc__.split("\n\n")[0])
    add = lambda name, **kw: p.add_argument(name, default=None, **kw)  # noqa: E731  (None: not given)
    add("--data", choices=("synth",) + DATASET_NAMES)
    add("--root", help="data-set folder; for synth, the set train.py wrote (default: found under data/synth)")
    add("--centers", help="reference-centre folder or file")
    add("--test-subject", type=_integer(0), help="MSRA/synth: the held-out subject (synth default: the last)")
    add("--itop-view", choices=("side", "top"))
    add("--synth-frames", type=_integer(1))
    add("--synth-subjects", type=_integer(2))
    add("--synth-seed", type=_integer(0))
    add("--num-workers", type=_integer(0), help="DataLoader worker processes")
    add("--on-bad-frame", choices=("error", "skip"))
    add("--grid", type=_grid, help="input grid N (N^3 voxels; heatmaps (N/2)^3)")
    add("--cube-mm", type=_positive, help="cube edge in mm (default: the data set's)")
    add("--augment", type=_switch, nargs="?", const=True)
    add("--geometry", choices=tuple(GEOMETRY_WHY), help="pixel numbering and voxel rounding (default port)")
    add("--width", type=_integer(2))
    add("--dtype", choices=("float32", "float64"))
    add("--init", choices=("original", "framework"))
    add("--optimizer", choices=("adam", "rmsprop", "sgd"))
    add("--lr", type=_positive)
    add("--batch-size", type=_integer(1))
    add("--epochs", type=_integer(1))
    add("--max-steps", type=_integer(1), help="stop after this many steps in total")
    add("--overfit", type=_integer(0), help="train on this many fixed samples without augmentation")
    add("--seed", type=_integer(0))
    add("--out", help="folder for model.pth and options.json (default runs/torch)")
    add("--preset", choices=("default", "paper"), help="paper: the authors' configuration; flags given override it")
    add("--plots", type=_switch, nargs="?", const=True, help="accepted so that train.py's command line runs here "
                                                             "too; the reference trainer draws no plots")
    return p


def parse_options(argv: list[str] | None = None) -> Options:
    """Defaults, then the preset, then the flags given; a flag that cannot hold is an error of one line."""
    p = build_parser()
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    preset = PAPER if given.pop("preset", "default") == "paper" else {}
    given.pop("plots", None)
    opts = Options(**{**preset, **given})
    if clashes := _clashes(opts):
        p.error("; ".join(clashes))
    return opts


def _clashes(o: Options) -> list[str]:
    """The flags that cannot hold together."""
    synth, needed = o.data == "synth", o.synth_subjects * len(MSRA_GESTURES)
    return [text for wrong, text in (
        (synth and o.synth_frames < needed, f"--synth-frames {o.synth_frames}: the synthetic set has "
                                            f"{len(MSRA_GESTURES)} gestures a subject, so it needs {needed} or more"),
        (synth and (o.test_subject or 0) >= o.synth_subjects,
         f"--test-subject {o.test_subject}: the synthetic subjects are 0..{o.synth_subjects - 1}"),
        (not synth and o.root is None, f"--data {o.data} needs --root DIR"),
        (o.data == "msra" and o.test_subject is None, "--data msra needs --test-subject K (the held-out subject)"),
    ) if wrong]


# --- data ------------------------------------------------------------------------------------------------------

def _records(folder: Path, opts: Options) -> int | None:
    """The generator version if `folder` holds the synthetic set that `opts` asks for (its synth.json), else None."""
    try:
        record = json.loads((folder / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    asked = {"frames": opts.synth_frames, "subjects": opts.synth_subjects, "seed": opts.synth_seed}
    same = isinstance(record, dict) and all(record.get(k) == v for k, v in asked.items())
    return record.get("version", 0) if same else None


def synth_root(opts: Options) -> Path:
    """The synthetic set to read: --root, or the newest matching one under data/synth. The reference trainer reads
    the set that train.py (or `python -m v2v_jax.data.synth`) wrote; it never writes one."""
    folders = [Path(opts.root)] if opts.root else sorted(SYNTH_FOLDER.glob("*"))
    found = [(version, folder) for folder in folders if (version := _records(folder, opts)) is not None]
    if not found:
        where = opts.root or f"{SYNTH_FOLDER}/*"
        raise SystemExit(f"--data synth: {where} holds no synthetic set of {opts.synth_frames} frames, "
                         f"{opts.synth_subjects} subjects, seed {opts.synth_seed}; write it with train.py and the same "
                         f"flags, or python -m v2v_jax.data.synth --out DIR --frames {opts.synth_frames} "
                         f"--subjects {opts.synth_subjects} --seed {opts.synth_seed}")
    return max(found, key=lambda vf: vf[0])[1]


def open_sets(opts: Options):
    """(train frames, test frames, camera spec); each a data set or, for --overfit, a list of its first frames."""
    spec = get("msra" if opts.data == "synth" else opts.data)
    checks = dict(on_bad_frame=opts.on_bad_frame, cube_mm=opts.cube_mm or spec.cube_mm)
    if opts.data == "synth":
        root = synth_root(opts)
        held_out = opts.synth_subjects - 1 if opts.test_subject is None else opts.test_subject
        sets = [open_dataset("msra", root, root / "center", split, held_out, **checks) for split in ("train", "test")]
    else:
        subject = opts.test_subject if opts.data == "msra" else None
        sets = [open_dataset(opts.data, opts.root, opts.centers, split, subject, opts.itop_view, **checks)
                for split in ("train", "test")]
    for ds in sets:
        if ds.num_skipped:
            print(ds.report())
    train, test = sets
    if opts.overfit:
        if opts.overfit > len(train):
            raise SystemExit(f"--overfit {opts.overfit}: the training set has only {len(train)} frames")
        test = [train[i] for i in range(opts.overfit)]
        train = test * max(1, OVERFIT_STEPS_PER_EPOCH * opts.batch_size // opts.overfit)
    return train, test, spec


def sample_augmentation(rng: np.random.Generator) -> dict:
    return dict(scale=rng.uniform(*SCALE_RANGE), angle=np.deg2rad(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)),
                trans=rng.uniform(-MAX_TRANSLATION, MAX_TRANSLATION, 3))


class VoxelDataset(torch.utils.data.Dataset):
    """Frames -> (voxels (1,N,N,N), heatmaps (J,M,M,M), centre, joints) in float32, one sample at a time."""

    def __init__(self, frames, spec: DatasetSpec, cube_mm: float, grid: int, seed: int, epoch: int, augment: bool,
                 geometry: str):
        self.frames, self.spec, self.augment, self.geometry = frames, spec, augment, geometry
        self.seed, self.epoch = seed, epoch
        self.voxelize = geometry_ref.V2VVoxelization(cube_mm, grid, geometry=geometry)

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        frame = self.frames[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        aug = sample_augmentation(rng) if self.augment else {}
        sample = {"points": geometry_ref.depth_to_points(frame.depth, self.spec, self.geometry),
                  "keypoints": frame.joints, "refpoint": frame.center.astype(np.float64)}
        voxels, heatmaps = self.voxelize(sample, **aug)
        return (voxels.astype(np.float32), heatmaps.astype(np.float32), frame.center.astype(np.float32),
                frame.joints.astype(np.float32))


def loader(frames, opts: Options, spec: DatasetSpec, epoch: int, train: bool):
    """One epoch of batches in the frame order the JAX trainer uses (v2v_jax.data.loader.epoch_order)."""
    augment = train and opts.augment and not opts.overfit
    data = VoxelDataset(frames, spec, opts.cube_mm or spec.cube_mm, opts.grid, opts.seed, epoch, augment,
                        opts.geometry)
    order = epoch_order(len(frames), seed=opts.seed, epoch=epoch, shuffle=train)
    return torch.utils.data.DataLoader(data, batch_size=opts.batch_size, sampler=order.tolist(),
                                       num_workers=opts.num_workers, drop_last=train)


# --- training --------------------------------------------------------------------------------------------------

def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    """RMSprop as the authors used it: alpha 0.99, eps 1e-8 outside the square root, no momentum."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-8)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, voxels, heatmaps) -> torch.Tensor:
    """One step of MSE (mean over B*J*M^3) on given inputs (B,1,N,N,N) and targets (B,J,M,M,M)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(voxels), heatmaps)
    loss.backward()
    optimizer.step()
    return loss.detach()


def joint_errors(model, frames, opts: Options, spec: DatasetSpec, device) -> np.ndarray:
    """(F, J) distance in mm between each test frame's joints and their argmax decoding."""
    model.eval()
    voxelize = geometry_ref.V2VVoxelization(opts.cube_mm or spec.cube_mm, opts.grid)
    dist = []
    with torch.no_grad():
        for voxels, _, centers, joints in loader(frames, opts, spec, 0, train=False):
            heatmaps = model(voxels.to(device, DTYPES[opts.dtype])).float().cpu().numpy()
            dist.append(np.linalg.norm(voxelize.evaluate(heatmaps, centers.numpy()) - joints.numpy(), axis=-1))
    return np.concatenate(dist)


def report(dist: np.ndarray, joint_names) -> str:
    """Per-joint and mean error, and the share of frames whose worst joint lies within each of WITHIN_MM."""
    rows = [f"{name:<16}{mm:>10.2f} mm" for name, mm in zip(joint_names, dist.mean(axis=0))]
    worst = dist.max(axis=1)
    within = ", ".join(f"{t} mm {100 * np.mean(worst <= t):.1f}%" for t in WITHIN_MM)
    return "\n".join(rows + [f"{'mean':<16}{dist.mean():>10.2f} mm", f"frames with every joint within: {within}"])


def train(opts: Options) -> np.ndarray:
    """Train, evaluate after each epoch, save model.pth; returns the last evaluation's (F, J) errors in mm."""
    torch.manual_seed(opts.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[opts.dtype]
    try:
        train_set, test_set, spec = open_sets(opts)
    except DataError as err:
        raise SystemExit(f"data: {err}") from None
    if len(train_set) < opts.batch_size:
        raise SystemExit(f"{len(train_set)} training frames are fewer than one batch of {opts.batch_size}")
    model = V2VModel(1, spec.num_joints, opts.width, init=opts.init).to(device=device, dtype=dtype)
    optimizer = make_optimizer(model.parameters(), opts.optimizer, opts.lr)
    print(f"geometry: {opts.geometry}, {GEOMETRY_WHY[opts.geometry]}")
    run_dir = Path(opts.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "options.json").write_text(json.dumps(dataclasses.asdict(opts), indent=1) + "\n")
    total = opts.epochs * (len(train_set) // opts.batch_size)
    total = min(total, opts.max_steps or total)
    step, start, steady, last = 0, time.perf_counter(), None, None
    bar = tqdm(total=total, desc="train (torch)", unit="step", dynamic_ncols=True)
    for epoch in range(opts.epochs):
        for voxels, heatmaps, _, _ in loader(train_set, opts, spec, epoch, train=True):
            loss = float(train_step(model, optimizer, voxels.to(device, dtype), heatmaps.to(device, dtype)))
            step += 1
            last = time.perf_counter()  # float(loss) waited for the device
            steady = last if step == STEADY_AFTER else steady
            bar.set_postfix(loss=f"{loss:.3e}", epoch=epoch + 1)
            bar.update(1)
            if step >= total:
                break
        dist = joint_errors(model, test_set, opts, spec, device)
        tqdm.write(f"epoch {epoch + 1}: test mean error {dist.mean():.2f} mm")
        if step >= total:
            break
    bar.close()
    torch.save(model.state_dict(), run_dir / "model.pth")
    print(report(dist, spec.joint_names))
    print(f"trained {step} steps in {time.perf_counter() - start:.0f} s; {_speed(step, steady, last, opts.batch_size)}; "
          f"state_dict in {run_dir / 'model.pth'}")
    return dist


def _speed(step: int, steady: float | None, last: float | None, batch_size: int) -> str:
    """The training rate from step STEADY_AFTER to the last step (the evaluations between epochs included)."""
    if steady is None or step <= STEADY_AFTER:
        return "too few steps for a steady-state rate"
    per_s = (step - STEADY_AFTER) / (last - steady)
    return f"steady state {per_s:.2f} steps/s ({per_s * batch_size:.1f} samples/s)"


def main(argv=None):
    train(parse_options(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
