"""The training configuration: one typed dataclass, every field a command-line flag, saved with each run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

DATASET_CHOICES = ("synth", "msra", "icvl", "nyu", "hands2017", "itop")


@dataclasses.dataclass(frozen=True)
class Config:
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
    decode: str = "parabola"         # argmax (the original) | parabola | window_mean | soft_argmax
    # Model and numerics.
    width: int = 16                  # channels after the first pooling (the paper: 32)
    dtype: str = "float32"           # float32 | float64 | bfloat16
    batchnorm: str = "torch"         # torch | flax
    init: str = "original"           # original | framework
    conv: str = "auto"               # convolution formulation (v2v_jax.layers.CONV_IMPLS; auto: per backend)
    # Optimisation.
    optimizer: str = "adam"          # adam | rmsprop (the authors', with --preset paper) | sgd
    lr: float = 1e-3
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
    inject_nan_at_step: int | None = None  # fault injection (reliability tests): NaN gradients at this step

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


PRESETS = {
    # Sized by measurement for a 2-core CPU and about 10 minutes (README, "What the default run reaches").
    "default": {},
    # The authors' configuration (SPEC §2 "Training"); the cube is the data set's own (200 mm for MSRA).
    "paper": dict(grid=88, width=32, batch_size=8, epochs=10, optimizer="rmsprop", lr=2.5e-4, cube_mm=None,
                  decode="argmax"),
}

CHOICES = {
    "data": DATASET_CHOICES, "dtype": ("float32", "float64", "bfloat16"), "batchnorm": ("torch", "flax"),
    "init": ("original", "framework"), "optimizer": ("rmsprop", "adam", "sgd"), "on_nonfinite": ("stop", "skip"),
    "on_bad_frame": ("error", "skip"), "decode": ("argmax", "parabola", "window_mean", "soft_argmax"), "preset": tuple(PRESETS), "itop_view": ("side", "top"),
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate V2V-PoseNet (JAX/Flax NNX).")
    for field in dataclasses.fields(Config):
        kind = _base_type(field.name)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=None,
                                help=f"(default {field.default})")
        else:
            parser.add_argument(flag, type=kind, choices=CHOICES.get(field.name), default=None,
                                help=f"(default {field.default})")
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Defaults, then the preset, then the flags given on the command line."""
    args = vars(build_parser().parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    preset = PRESETS[given.get("preset", "default")]
    return Config(**{**preset, **given})


def save_config(config: Config, run_dir: Path) -> None:
    path = run_dir / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    tmp.replace(path)
