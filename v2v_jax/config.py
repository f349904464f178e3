"""The training configuration: one typed dataclass, every field a command-line flag, saved with each run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import types
import typing
from pathlib import Path

from v2v_jax.data.cameras import MSRA_GESTURES
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.formulations import CONV_IMPLS, UPSAMPLE_IMPLS
from v2v_jax.geometry import DECODE_METHODS
from v2v_jax.train.optim import AUTHORS_RMSPROP, OPTIMIZERS, SCHEDULES

DATASET_CHOICES = ("synth", "msra", "icvl", "nyu", "hands2017", "itop")


@dataclasses.dataclass(frozen=True)
class Config:
    """The fields' defaults, with `PRESETS[cfg.preset]` on top, are a run's configuration; the options the paper
    does not have (schedule, loss, max_translation) default to what the paper did."""

    # Data.
    data: str = "synth"              # synth | msra | icvl | nyu | hands2017 | itop
    root: str | None = None          # data-set folder (synth: where the generated set lives)
    centers: str | None = None       # reference-centre folder or file
    test_subject: int | None = None  # MSRA/synth fold: the held-out subject
    itop_view: str = "side"
    synth_frames: int = 2400
    synth_subjects: int = 5
    synth_seed: int = 0
    num_workers: int = 0
    on_bad_frame: str = "error"      # error | skip
    # Geometry.
    grid: int = 24                   # input N^3; heatmaps are (N/2)^3
    cube_mm: float | None = None     # None: the data set's cube size
    augment: bool = True
    max_translation: float = 4.0     # augmentation's translation range, voxels of the grid (the paper's: 4 at 88^3)
    decode: str = "parabola"         # argmax (the original) | parabola | window_mean | soft_argmax
    geometry: str = "ours"           # ours | port: the PyTorch port's pixel numbering and voxel rounding
    beta: float = 30.0               # softmax sharpness of soft_argmax decoding and of the integral loss
    # Model and numerics.
    width: int = 16                  # channels after the first pooling (the paper: 32)
    dtype: str = "float32"           # float32 | float64 | bfloat16
    batchnorm: str = "torch"         # torch | flax
    init: str = "original"           # original | framework
    conv: str = "auto"               # convolution formulation (v2v_jax.formulations.CONV_IMPLS; auto: per backend)
    upsample: str = "einsum"         # ConvTranspose3d formulation (v2v_jax.formulations.UPSAMPLE_IMPLS)
    # Optimisation.
    optimizer: str = "adam"          # adam | rmsprop (the authors', with --preset paper) | sgd
    lr: float = 1e-3
    schedule: str = "constant"       # constant (the paper's) | cosine (linear warm-up, cosine decay to 0)
    warmup_steps: int = 0
    loss: str = "mse"                # mse (the paper's heatmap MSE) | integral (mse + integral_weight * soft-argmax L1)
    integral_weight: float = 0.01
    ema_decay: float = 0.0           # >0: evaluate (and checkpoint) a moving average of the weights with this decay
    batch_size: int = 8
    epochs: int = 8
    max_steps: int | None = None     # stop after this many steps in total (tests, quick looks)
    on_nonfinite: str = "stop"       # stop | skip: a step with a non-finite loss or gradient
    overfit: int = 0                 # >0: train on this many fixed samples without augmentation
    # Run.
    seed: int = 0
    deterministic: bool = False
    out: str = "runs/default"
    resume: bool = False
    keep_checkpoints: int = 3
    checkpoint_every: int = 0        # also checkpoint every this many steps (0: only at the end of each epoch)
    log_every: int = 10
    eval_batches: int | None = None  # evaluate on at most this many test batches (None: all)
    plots: bool = True
    preset: str = "default"          # default | paper
    coordinator: str | None = None   # multi-host: host:port of process 0 (jax.distributed.initialize)
    num_processes: int = 1
    process_id: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


# What `python train.py` adds to the fields' defaults: measured on the 2-core CPU (README, "What the default run
# reaches", and docs/training.md).
RECIPE = dict(schedule="cosine", warmup_steps=100, loss="integral", integral_weight=0.1, decode="soft_argmax",
              max_translation=1.0, epochs=11)

PRESETS = {
    # Sized by measurement for a 2-core CPU and about 10 minutes (README, "What the default run reaches").
    "default": RECIPE,
    # The authors' configuration (Moon et al. 2018, section 4): 88^3 input, batch 8, RMSprop, 10 epochs, argmax
    # decoding; the cube is the data set's own (200 mm for MSRA).
    "paper": dict(grid=88, width=32, batch_size=8, epochs=10, optimizer="rmsprop", lr=AUTHORS_RMSPROP["lr"],
                  cube_mm=None, decode="argmax"),
}

CHOICES = {
    "data": DATASET_CHOICES, "dtype": tuple(PRECISIONS), "batchnorm": ("torch", "flax"),
    "init": ("original", "framework"), "optimizer": OPTIMIZERS, "on_nonfinite": ("stop", "skip"),
    "on_bad_frame": ("error", "skip"), "decode": DECODE_METHODS, "geometry": ("ours", "port"),
    "preset": tuple(PRESETS), "conv": ("auto",) + CONV_IMPLS, "upsample": UPSAMPLE_IMPLS, "itop_view": ("side", "top"), "schedule": SCHEDULES, "loss": ("mse", "integral"),
}


def _at_least(low: int, unset: str | None = None):
    """A rule: an integer >= `low`; with `unset`, also None (the flag left out), described by `unset`."""
    text = f"must be an integer >= {low}" + (f" (leave the flag out for {unset})" if unset else "")
    return (lambda v: (v is None and unset is not None) or (v is not None and v >= low)), text


def _positive(unset: str | None = None):
    text = "must be a finite number > 0" + (f" (leave the flag out for {unset})" if unset else "")
    return (lambda v: (v is None and unset is not None) or (v is not None and math.isfinite(v) and v > 0)), text


# Each numeric field's valid range: (predicate, what it must be).
RULES = {
    "lr": _positive(),
    "beta": _positive(),
    "integral_weight": _positive(),
    "warmup_steps": _at_least(0),
    "ema_decay": ((lambda v: math.isfinite(v) and 0 <= v < 1), "must be a number in [0, 1) (0: no moving average)"),
    "max_translation": ((lambda v: math.isfinite(v) and v >= 0), "must be a finite number >= 0"),
    "cube_mm": _positive("the data set's cube"),
    "batch_size": _at_least(1),
    "epochs": _at_least(1),
    "max_steps": _at_least(1, "no limit"),
    "checkpoint_every": _at_least(0),  # 0: only at the end of each epoch
    "log_every": _at_least(1),
    "eval_batches": _at_least(1, "the whole test set"),
    "keep_checkpoints": _at_least(1),
    # The network halves the grid three times (v2v_jax/model.py: one pooling before the encoder, two inside it) and
    # adds each encoder level to its decoder level, so the grid must divide by 8.
    "grid": ((lambda v: v >= 8 and v % 8 == 0), "must be a positive multiple of 8 (8, 16, 24, ...): the network "
                                                "halves it three times"),
    "width": _at_least(2),  # the first block has width // 2 channels
    "synth_frames": _at_least(1),
    "synth_subjects": _at_least(2),  # one held out for testing, at least one to train on
    "synth_seed": _at_least(0),
    "seed": _at_least(0),
    "num_workers": _at_least(0),
    "overfit": _at_least(0),
    "test_subject": _at_least(0, "the last subject (synth)"),
    "num_processes": _at_least(1),
    "process_id": _at_least(0),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def problems(cfg: "Config") -> list[str]:
    """One line for each flag of `cfg` out of its range or inconsistent with another; empty if none is."""
    found = [f"{_flag(name)} {getattr(cfg, name)}: {text}" for name, (ok, text) in RULES.items()
             if not ok(getattr(cfg, name))]
    if cfg.data == "synth" and cfg.synth_frames < cfg.synth_subjects * len(MSRA_GESTURES):
        found.append(f"--synth-frames {cfg.synth_frames}: must be at least {len(MSRA_GESTURES)} per subject, "
                     f"{cfg.synth_subjects * len(MSRA_GESTURES)} for --synth-subjects {cfg.synth_subjects}")
    if cfg.data == "synth" and cfg.test_subject is not None and cfg.test_subject >= cfg.synth_subjects:
        found.append(f"--test-subject {cfg.test_subject}: the synthetic set has subjects 0..{cfg.synth_subjects - 1}")
    if cfg.data != "synth" and cfg.root is None:
        found.append(f"--data {cfg.data}: needs --root DIR (and usually --centers)")
    if cfg.data == "msra" and cfg.test_subject is None:
        found.append("--data msra: needs --test-subject K (the held-out subject, 0-8)")
    if cfg.process_id >= cfg.num_processes:
        found.append(f"--process-id {cfg.process_id}: must be below --num-processes {cfg.num_processes}")
    return found


class Parser(argparse.ArgumentParser):
    """Bad flags are reported in one line each, without the (long) usage text."""

    def error(self, message: str):
        sys.stderr.write("".join(f"{self.prog}: error: {line}\n" for line in message.splitlines()))
        sys.stderr.write(f"{self.prog}: --help lists every option\n")
        raise SystemExit(2)


def _base_type(annotation):
    hint = typing.get_type_hints(Config)[annotation]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _default_text(name: str, default) -> str:
    """The flag's value in each preset, e.g. '(default 100; paper 0)'."""
    values = {preset: chosen.get(name, default) for preset, chosen in PRESETS.items()}
    others = [f"{preset} {value}" for preset, value in values.items() if preset != "default"
              and value != values["default"]]
    return f"(default {values['default']}" + "".join(f"; {o}" for o in others) + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description="Train and evaluate V2V-PoseNet (JAX/Flax NNX).")
    for field in dataclasses.fields(Config):
        kind = _base_type(field.name)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=None,
                                help=_default_text(field.name, field.default))
        else:
            parser.add_argument(flag, type=kind, choices=CHOICES.get(field.name), default=None,
                                help=_default_text(field.name, field.default))
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Defaults, then the preset, then the flags given on the command line; every bad flag reported, one per line,
    and exit status 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    preset = PRESETS[given.get("preset", "default")]
    cfg = Config(**{**preset, **given})
    found = problems(cfg)
    if found:
        parser.error("\n".join(found))
    return cfg


def save_config(config: Config, run_dir: Path) -> None:
    path = run_dir / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    tmp.replace(path)


def describe(cfg: Config) -> str:
    schedule = "" if cfg.schedule == "constant" else f" ({cfg.schedule}, {cfg.warmup_steps} warm-up steps)"
    return (f"grid {cfg.grid}^3, cube {cfg.cube_mm or 'data set'} mm, width {cfg.width}, batch {cfg.batch_size}, "
            f"{cfg.optimizer} lr {cfg.lr}{schedule}, {cfg.loss} loss, {cfg.decode} decoding, {cfg.dtype}"
            + (f", weights averaged (decay {cfg.ema_decay})" if cfg.ema_decay else ""))


def repeat_flags(cfg: Config) -> str:
    """Flags other than --out/--resume that differ from what parse_config gives without them (the fields' defaults
    with the run's preset on top), to repeat on resume."""
    default = Config(**PRESETS[cfg.preset])
    skip = {"out", "resume"}
    flags = [f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(cfg).items()
             if k not in skip and v != getattr(default, k)]
    return "".join(flags)
