"""Measures, on unmodified code, what the verdict's constants must cover (parity_tests/verdict.py).

    python -m parity_tests.calibrate --sizes 8:16 16:24 32:32 --seeds 0 1 2 3 4 --out calibration.json

For every configuration (width:grid) and seed, one anchored run; for every compared tensor the ratio
err_JAX / err_PyTorch of each metric (both floored at u), the float64 disagreement over its expected size
(u64 / u) * max(err_JAX, err_PyTorch), and per block the ratio of the frameworks' amplifications. With `--dtype
float64` the errors are the perturbed float64 runs' and u is `verdict.PERTURBATION`. Prints the distribution by
quantity (median, 99th percentile, extremes either way), the multiplier the float64 bound needs, and writes every
number as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import numpy as np

from parity_tests import verdict as V
from parity_tests.anchored import Config, run_anchored


def measure(config: Config) -> dict:
    report = run_anchored(config)
    return summarise(vars(config) | {"rounding": config.rounding}, report.rows, report.amplification,
                     report.overall, {fw: dataclasses.asdict(f) for fw, f in report.flips.items()})


def summarise(config: dict, rows, amplification, overall, flips) -> dict:
    """The numbers of one run (rows: TensorRow objects, or their dicts from `report --json`)."""
    u64, u = V.unit_roundoff("float64"), V.perturbation(config["rounding"])
    out = []
    for r in rows:
        r = r if isinstance(r, dict) else dataclasses.asdict(r)
        j, t, f64 = (V.Errors(*(float(r[k][m]) for m in ("rel_fro", "rmse", "q999"))) for k in ("jax", "torch",
                                                                                             "float64"))
        expected = (u64 / u) * max(j.rel_fro, t.rel_fro, u)
        out.append(dict(block=r["block"], quantity=r["quantity"], layer=r["layer"], jax=j.rel_fro, torch=t.rel_fro,
                        jax_q=j.q999, torch_q=t.q999, float64=f64.rel_fro, float64_q=f64.q999,
                        **{f"ratio_{m}": V.ratio(j, t, m, config["rounding"]) for m in V.METRICS},
                        float64_ratio=f64.rel_fro / expected, verdict=r["verdict"]))
    amp = {b: a[V.JAX] / a[V.TORCH] for b, a in amplification.items()}
    return dict(config=config, rows=out, amplification_ratio=amp, overall=overall, flips=flips)


def from_report(path: Path) -> dict:
    """A run recorded by `python -m parity_tests.report --json PATH`."""
    data = json.loads(path.read_text())
    config = Config(**data["config"])
    return summarise(data["config"] | {"rounding": config.rounding}, data["rows"], data["amplification"],
                     data["overall"], data["flips"])


def group(quantity: str) -> str:
    return quantity.split(" after ")[0].split(" over ")[0]


def summary(runs: list[dict]) -> str:
    by: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for r in run["rows"]:
            if r["quantity"] == "init":  # z-scores, not errors
                continue
            g = by.setdefault(group(r["quantity"]), {"rel_fro": [], "q999": [], "float64": []})
            g["rel_fro"].append(r["ratio_rel_fro"])
            g["q999"].append(r["ratio_q999"])
            g["float64"].append(r["float64_ratio"])
        by.setdefault("amplification", {"rel_fro": [], "q999": [], "float64": []})["rel_fro"].extend(
            run["amplification_ratio"].values())
    lines = ["| quantity | tensors | metric | median | 99th pct | max JAX/PyTorch | max PyTorch/JAX |",
             "|---|---|---|---|---|---|---|"]
    for name, g in by.items():
        for metric in ("rel_fro", "q999"):
            v = np.asarray(g[metric])
            if v.size:
                lines.append(f"| {name} | {v.size} | {metric} | {np.median(v):.2f} | {np.quantile(v, 0.99):.2f} | "
                             f"{v.max():.2f} | {1 / v.min():.2f} |")
    f64 = np.concatenate([np.asarray(g["float64"]) for g in by.values() if g["float64"]])
    lines.append(f"\nfloat64 disagreement / ((u64/u) * max scaled-run error), {f64.size} tensors: median "
                 f"{np.median(f64):.2e}, 99th pct {np.quantile(f64, 0.99):.2e}, max {f64.max():.2e}")
    margins = [r["float64"] / V.float64_bound(V.Errors(r["jax"], 0, 0), V.Errors(r["torch"], 0, 0),
                                              run["config"]["rounding"], "rel_fro")
               for run in runs for r in run["rows"] if r["quantity"] != "init"]
    lines.append(f"float64 disagreement / its bound (verdict.float64_bound, relative Frobenius): max "
                 f"{max(margins):.2e}")
    need, where = needed_multiplier(runs)
    lines.append(f"multiplier the float64 bound needs above its floor (either metric): {need:.1f}, at {where}")
    flips = [f for run in runs for f in run["flips"].values()]
    lines.append(f"decisions taken otherwise than float64 (parity_tests/decisions.py): "
                 f"{sum(f['flipped'] for f in flips)} of {sum(f['decisions'] for f in flips)} over {len(runs)} runs "
                 f"and both frameworks; the farthest lies {max(float(f['worst']) for f in flips):.2f} RMS errors of "
                 f"its input from its boundary")
    return "\n".join(lines)


def needed_multiplier(runs: list[dict]) -> tuple[float, str]:
    """The largest (disagreement - floor) / ((u64 / u) * max(err_JAX, err_PyTorch)) over tensors and metrics: the
    smallest multiplier with which `verdict.float64_bound` holds every float64 disagreement measured."""
    u64 = V.unit_roundoff("float64")
    need, where = 0.0, "-"
    for run in runs:
        u = V.perturbation(run["config"]["rounding"])
        for r in run["rows"]:
            for f64, j, t in (("float64", "jax", "torch"), ("float64_q", "jax_q", "torch_q")):
                excess = r.get(f64, 0.0) - V.FLOAT64_FLOOR * u64
                if r["quantity"] != "init" and excess > 0:
                    n = excess / ((u64 / u) * max(r[j], r[t])) if max(r[j], r[t]) > 0 else float("inf")
                    if n > need:
                        need = n
                        where = (f"width {run['config']['width']} grid {run['config']['grid']} seed "
                                 f"{run['config']['seed']}, {r['quantity']} {r['layer'] or r['block']} ({f64})")
    return need, where


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["8:16", "16:24", "32:32"], help="width:grid pairs")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--joints", type=int, default=21)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", type=Path)
    p.add_argument("--runs", nargs="*", type=Path, default=[], metavar="JSON",
                   help="earlier runs to include: this tool's --out files or the report's --json files")
    args = p.parse_args(argv)
    earlier = []
    for path in args.runs:
        try:
            data = json.loads(path.read_text())
            earlier += data if isinstance(data, list) else [from_report(path)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--runs {path}: not a calibration or report JSON ({e})")
    try:
        sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes]
        configs = [Config(width=w, grid=g, batch=args.batch, joints=args.joints, dtype=args.dtype, seed=s)
                   for w, g in sizes for s in args.seeds]
    except ValueError as e:
        p.error(f"--sizes {args.sizes}: {e}")
    runs = list(earlier)
    for config in configs:
        start = time.time()
        runs.append(measure(config))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"width {config.width} grid {config.grid} seed {config.seed}: {runs[-1]['overall']} "
              f"({time.time() - start:.0f} s wall; process CPU so far {usage.ru_utime + usage.ru_stime:.0f} s)",
              flush=True)
        if args.out:
            args.out.write_text(json.dumps(runs))
    print(summary(runs))


if __name__ == "__main__":
    main()
