"""The calibrated parity verdict of the PyTorch and the Flax V2V: is a difference a bug, or rounding?

    python -m parity_tests.report                             # width 32, 32^3, float32 against float64, CPU
    python -m parity_tests.report --grid 88 --device gpu --tf32 on --json verdict.json
    python -m parity_tests.report --torch-checkpoint port.pth --jax-run runs/exp1   # a user's two checkpoints

Runs both frameworks in float64 and in the chosen precision on the same weights and sparse binary input, three
RMSprop steps, and judges every compared tensor (each block's output, the input gradient, every layer's parameter
gradient, BN batch statistics, the loss, parameters and running variances after the steps): "JAX deviates",
"PyTorch deviates" or "both within rounding" (parity_tests/anchored.py, parity_tests/verdict.py). Prints one line
per block and quantity (the worst of its layers), the first divergence in words, and exits with status 1 only when
something deviates (2 for a bad option or file).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

from parity_tests import verdict as V
from parity_tests.anchored import FLIP_BOUND, AnchoredReport, Config, TensorRow, run_anchored
from v2v_jax import convert
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.formulations import CONV_IMPLS, UPSAMPLE_IMPLS
from v2v_jax.layers import Numerics

ON_OFF = {"on": True, "off": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="float32",
                   help="the low precision judged against float64 (bfloat16: JAX computes in bf16 on float32 "
                        "parameters, PyTorch under bf16 autocast; float64: the float64 runs only, bounded by "
                        "perturbed float64 runs)")
    p.add_argument("--grid", type=int, default=32, help="input grid N (multiple of 4; V2V uses 88)")
    p.add_argument("--width", type=int, default=32, help="network width (V2V: 32; a checkpoint sets it)")
    p.add_argument("--joints", type=int, default=21, help="output joints (a checkpoint sets it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="RMSprop steps (the first one's tensors are compared)")
    p.add_argument("--density", type=float, default=0.05, help="fraction of occupied voxels in the input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--tf32", choices=ON_OFF, default="off", help="TF32 convolutions on a GPU, both frameworks")
    p.add_argument("--cudnn", choices=ON_OFF, default="on", help="torch.backends.cudnn.enabled")
    p.add_argument("--channels-last", action="store_true", help="PyTorch model and input in channels_last_3d")
    p.add_argument("--conv", choices=("auto",) + CONV_IMPLS, default=Numerics.conv, help="JAX conv formulation")
    p.add_argument("--upsample", choices=UPSAMPLE_IMPLS, default=Numerics.upsample)
    p.add_argument("--torch-checkpoint", type=Path, metavar="PTH",
                   help="a PyTorch V2V state_dict (.pth, e.g. the port's): the weights of both frameworks, or of "
                        "PyTorch only when --jax-run is given too")
    p.add_argument("--jax-run", type=Path, metavar="DIR",
                   help="a v2v_jax training run directory: its newest checkpoint's weights for JAX (and for "
                        "PyTorch too when no --torch-checkpoint is given)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every row and the verdict as JSON")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the report as markdown")
    args = p.parse_args(argv)
    for name in ("json", "out"):
        path = getattr(args, name)
        if path is not None and not path.parent.is_dir():
            p.error(f"--{name} {path}: directory {path.parent} does not exist")
    try:
        args.weights, args.jax_weights = read_weights(args)
        args.config = config_from(args)
    except ValueError as e:
        p.error(str(e))
    return args


def read_jax_run(run_dir: Path) -> dict[str, np.ndarray]:
    """The newest verified checkpoint of a training run as a torch-keyed state_dict (v2v_jax.predict.load_run)."""
    if not (run_dir / "config.json").is_file():  # before importing the training stack
        raise ValueError(f"--jax-run {run_dir}: no training run here (config.json missing)")
    from v2v_jax import predict  # noqa: PLC0415 - pulls in the training stack only when asked for

    try:
        cfg, _, (params, batch_stats), spec = predict.load_run(run_dir)
    except ValueError as e:  # DataError: no run, no usable checkpoint
        raise ValueError(f"--jax-run {run_dir}: {e}") from None
    eval_def, _, _ = predict.inference_variables(cfg, spec.num_joints)
    return _numpy_state(convert.torch_state_dict(nnx.merge(eval_def, params, batch_stats)))


def _numpy_state(state_dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def read_weights(args) -> tuple[dict | None, dict | None]:
    """(weights of both frameworks, JAX's own where it differs), from the checkpoint options."""
    torch_weights = jax_weights = None
    if args.torch_checkpoint is not None:
        try:
            torch_weights = _numpy_state(convert.read_torch_checkpoint(args.torch_checkpoint))
        except ValueError as e:
            raise ValueError(f"--torch-checkpoint {e}") from None
        if "output_layer.weight" not in torch_weights:
            raise ValueError(f"--torch-checkpoint {args.torch_checkpoint}: not a V2V state_dict "
                             "(no output_layer.weight)")
    if args.jax_run is not None:
        jax_weights = read_jax_run(args.jax_run)
    if torch_weights is None:
        return jax_weights, None
    return torch_weights, jax_weights


def config_from(args) -> Config:
    width, joints = args.width, args.joints
    if args.weights is not None:  # the checkpoint's shape wins
        joints, width = (int(n) for n in args.weights["output_layer.weight"].shape[:2])
        if args.jax_weights is not None and args.jax_weights["output_layer.weight"].shape != \
                args.weights["output_layer.weight"].shape:
            raise ValueError(f"--torch-checkpoint and --jax-run hold different models (output layers "
                             f"{args.weights['output_layer.weight'].shape} and "
                             f"{args.jax_weights['output_layer.weight'].shape})")
    try:
        return Config(width=width, grid=args.grid, batch=args.batch, joints=joints, dtype=args.dtype,
                      device=args.device, tf32=ON_OFF[args.tf32], cudnn=ON_OFF[args.cudnn],
                      channels_last=args.channels_last, seed=args.seed, steps=args.steps, density=args.density,
                      conv=args.conv, upsample=args.upsample)
    except ValueError as e:  # Config names its fields; the user typed options
        raise ValueError("; ".join(f"--{part}" for part in str(e).split("; "))) from None


# ---------------------------------------------------------------------------------------------------- output

def _worst(rows: list[TensorRow], dtype: str) -> TensorRow:
    """The row a block's line shows: a deviating one first, else the largest error ratio either way."""
    def key(r):
        ratio = V.ratio(r.jax, r.torch, "rel_fro", dtype)
        return (r.verdict != V.WITHIN, max(ratio, 1 / ratio) if math.isfinite(ratio) else math.inf)
    return max(rows, key=key)


def _quantity(q: str) -> str:
    return q.split(" after ")[0].split(" over ")[0]


def format_table(report: AnchoredReport) -> str:
    """One line per block and quantity, the worst of its layers."""
    dtype = report.config.rounding
    lines = ["| block | quantity | layers | JAX err | PyTorch err | JAX/PyTorch | float64 diff | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[TensorRow]] = {}
    for r in report.rows:
        groups.setdefault((r.block, r.quantity), []).append(r)
    for (block, quantity), rows in groups.items():
        r = _worst(rows, dtype)
        lines.append(f"| {block} | {quantity} | {len(rows)} | {r.jax.rel_fro:.2e} | {r.torch.rel_fro:.2e} | "
                     f"{V.ratio(r.jax, r.torch, 'rel_fro', dtype):.2f} | {r.float64.rel_fro:.1e} | {r.verdict} |")
    return "\n".join(lines)


def tendencies(report: AnchoredReport) -> list[str]:
    """Where one framework's rounding is consistently worse without leaving the band, in words."""
    if report.config.dtype == "float64":
        return []
    dtype = report.config.rounding
    by: dict[str, list[float]] = {}
    for r in report.rows:
        if r.quantity != "init":  # z-scores, not rounding errors
            by.setdefault(_quantity(r.quantity), []).append(V.ratio(r.jax, r.torch, "rel_fro", dtype))
    out = []
    for quantity, ratios in by.items():
        median = float(np.median(ratios))
        if len(ratios) >= 3 and not 0.5 <= median <= 2:
            worse, factor = (V.JAX, median) if median > 1 else (V.TORCH, 1 / median)
            why = KNOWN.get(quantity)
            out.append(f"{worse}'s {report.config.dtype} {quantity} errors are {factor:.1f}x the other's "
                       f"(median over {len(ratios)} tensors){': ' + why if why else ''}")
    return out


_AFTER_STEPS = ("measured on unmodified code too (docs/parity.md, Calibration): RMSprop's first steps are about "
                "10 lr sign(g), so weights whose gradient is within its rounding move at full size either way, "
                "and the trained state amplifies differences in the per-entry accuracy of the gradients that the "
                "norm-wise gradient errors do not show")
KNOWN = {"parameters": _AFTER_STEPS, "BN running variance": _AFTER_STEPS, "losses": _AFTER_STEPS}


# Why the errors are measured on each run's own decisions (docs/parity.md, "Decisions"), printed where a run flipped.
FLIPS_EXPLAINED = ("a decision taken within rounding of its boundary is rounding, not a bug, yet against plain "
                   "float64 one flipped ReLU voxel moves the weight gradients of every layer before it by about 1e-3 "
                   "relative at the authors' init (weights of std 1e-3), in either framework; so each run is judged "
                   "against float64 taking its own decisions, and each flip by its distance from the boundary")


def decision_line(framework: str, flips) -> str:
    """How many of a framework's ReLU and pool decisions rounding took the other way than float64, and whether
    the farthest of them lies within rounding of its boundary."""
    if not flips.flipped:
        return f"decisions: {framework} took all {flips.decisions} ReLU and pool decisions as float64 does"
    within = "within" if flips.worst <= FLIP_BOUND else "BEYOND"
    return (f"decisions: {framework} took {flips.flipped} of {flips.decisions} ReLU and pool decisions otherwise "
            f"than float64; the farthest ({flips.worst_key}) lies {flips.worst:.2g} RMS errors of its input from "
            f"its boundary, {within} the bound {FLIP_BOUND:g}")


def header(report: AnchoredReport) -> str:
    c = report.config
    torch_device = torch.cuda.get_device_name() if c.device == "gpu" else platform.processor() or "cpu"
    jax_device = jax.devices(c.device)[0].device_kind
    return (f"V2V calibrated parity, torch {torch.__version__} ({torch_device}) vs jax {jax.__version__} "
            f"({jax_device}); {datetime.date.today()}\n\n"
            f"{c.dtype} against float64 truth, TF32 {'on' if c.tf32 else 'off'}, cuDNN "
            f"{'on' if c.cudnn else 'off'}, grid {c.grid}^3, width {c.width}, batch {c.batch}, joints {c.joints}, "
            f"{c.steps} RMSprop steps, density {c.density}, conv {c.conv}, upsample {c.upsample}, torch memory "
            f"format {'channels_last_3d' if c.channels_last else 'contiguous'}, seed {c.seed}\n\n"
            + (f"Errors: relative Frobenius norm of the framework's float64 run on weights, input and target "
               f"perturbed by {V.PERTURBATION:.1e} against its plain float64 run; float64 diff: JAX float64 against "
               f"PyTorch float64, within {V.PERTURBED_MULTIPLIER:g} x (u64 / perturbation) x the larger error + "
               f"{V.FLOAT64_FLOOR:g} u64 (parity_tests/verdict.py).\n" if c.dtype == "float64" else
               f"Errors: relative Frobenius norm against the framework's own float64 run on the same ReLU and pool "
               f"decisions (parity_tests/decisions.py); float64 diff: JAX float64 against PyTorch float64. Rule: "
               f"err <= {V.RULE.multiplier:g} x the other's + {V.RULE.floor:g} u in the first step, "
               f"{V.TRAINING_RULE.multiplier:g} x after it (parity_tests/verdict.py).\n"))


def render(report: AnchoredReport, seconds: dict[str, float]) -> str:
    counts = {}
    for r in report.rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    lines = [header(report), format_table(report), "",
             f"verdict: {report.overall} ({', '.join(f'{n} {v}' for v, n in counts.items())} of "
             f"{len(report.rows)} tensors)"]
    lines += [decision_line(fw, f) for fw, f in report.flips.items()]
    if any(f.flipped for f in report.flips.values()):
        lines.append(f"note: {FLIPS_EXPLAINED}")
    if report.first_divergence is not None:
        lines.append(f"first divergence: {report.first_divergence.words}")
    lines += [f"note: {t}" for t in tendencies(report)]
    lines.append(f"time: {seconds['wall']:.0f} s wall, {seconds['cpu']:.0f} s CPU")
    return "\n".join(lines) + "\n"


def to_json(report: AnchoredReport, seconds: dict[str, float]) -> dict:
    def clean(v):
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)
    return {"config": dataclasses.asdict(report.config), "overall": report.overall,
            "first_divergence": None if report.first_divergence is None else
            dataclasses.asdict(report.first_divergence),
            "rows": [{k: ({m: clean(x) for m, x in v.items()} if isinstance(v, dict) else clean(v))
                      for k, v in dataclasses.asdict(r).items()} for r in report.rows],
            "amplification": report.amplification, "seconds": seconds,
            "flips": {fw: dataclasses.asdict(f) for fw, f in report.flips.items()}}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    start, cpu = time.time(), _cpu_seconds()
    try:
        report = run_anchored(args.config, weights=args.weights, jax_weights=args.jax_weights)
    except ValueError as e:  # a device that is not there, a checkpoint that does not fit
        print(f"parity_tests.report: {e}", file=sys.stderr)
        return 2
    seconds = {"wall": time.time() - start, "cpu": _cpu_seconds() - cpu}
    text = render(report, seconds)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(to_json(report, seconds), indent=1))
    return 1 if report.deviates else 0


if __name__ == "__main__":
    sys.exit(main())
