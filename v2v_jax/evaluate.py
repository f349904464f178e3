"""Evaluate community result files (one line per frame, `u v d` per joint) against ground truth.

    python -m v2v_jax.evaluate --dataset nyu --gt GT.txt PRED.txt [PRED2.txt ...] [--plot FILE.png] [--per-joint]

Prints the mean error (mean of per-joint means) and the fraction of frames whose worst joint is within 20 / 40 / 80 mm,
and saves the max-frame success-rate curves (one per prediction file) with per-joint mean errors as a PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

from v2v_jax import metrics
from v2v_jax.config import Parser
from v2v_jax.data import cameras
from v2v_jax.data.base import DataError

REPORTED_THRESHOLDS_MM = (20, 40, 80)


def summarise(errors) -> dict:
    rates = metrics.success_rates(errors)["max_frame"]
    return {"frames": len(errors), "mean_mm": metrics.mean_error(errors),
            **{f"max_frame_le_{t}": float(rates[t]) for t in REPORTED_THRESHOLDS_MM}}


def format_table(results: dict, joint_names, per_joint: bool = False) -> str:
    header = f"{'prediction':<36} {'frames':>7} {'mean mm':>8}" + "".join(
        f" {'max<=' + str(t):>8}" for t in REPORTED_THRESHOLDS_MM)
    lines = [header, "-" * len(header)]
    for name, errors in results.items():
        s = summarise(errors)
        lines.append(f"{name:<36} {s['frames']:>7} {s['mean_mm']:>8.3f}" + "".join(
            f" {100 * s[f'max_frame_le_{t}']:>7.1f}%" for t in REPORTED_THRESHOLDS_MM))
    if per_joint:
        for name, errors in results.items():
            lines.append(f"\nper-joint mean error (mm), {name}")
            for j, (label, e) in enumerate(zip(joint_names, metrics.per_joint_error(errors))):
                lines.append(f"  {j:>2} {label:<16} {e:7.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = Parser(description="Evaluate result files (u v d per joint, one line per frame).")
    parser.add_argument("--dataset", required=True, choices=sorted(cameras.EVAL_INTRINSICS),
                        help="selects the evaluator's intrinsics")
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth file in the same format")
    parser.add_argument("predictions", nargs="+", type=Path, help="one or more prediction files")
    parser.add_argument("--plot", type=Path, help="save the success-rate curves to this PNG")
    parser.add_argument("--per-joint", action="store_true", help="also print per-joint mean errors")
    args = parser.parse_args(argv)
    if args.plot and not args.plot.parent.is_dir():
        parser.error(f"--plot {args.plot}: folder {args.plot.parent} does not exist")

    try:
        results = metrics.evaluate_files(args.gt, args.predictions, args.dataset)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    num_joints = next(iter(results.values())).shape[1]
    spec_names = cameras.get(args.dataset).joint_names
    joint_names = list(spec_names) if len(spec_names) == num_joints else [str(j) for j in range(num_joints)]
    print(format_table(results, joint_names, args.per_joint))
    if args.plot:
        from v2v_jax.vis import plot_success_curves

        curves = {f"{Path(n).name} ({metrics.mean_error(e):.3f} mm)": metrics.success_rates(e)["max_frame"]
                  for n, e in results.items()}
        per_joint = {Path(n).name: metrics.per_joint_error(e) for n, e in results.items()}
        plot_success_curves(args.plot, curves, metrics.THRESHOLDS_MM, per_joint, joint_names,
                            title=f"{args.dataset.upper()} test set, {args.gt.name} as ground truth")
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
