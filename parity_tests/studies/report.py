"""Markdown tables, loss-curve figures and a JSON record of a study."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from parity_tests.compare import INPUT, OUTPUT, Row
from parity_tests.studies.divergence import BlockReference, Pair
from parity_tests.studies.overfit import Result, Variant


def _num(value, fmt=".2e") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def describe(v: Variant, device: str) -> str:
    """The numerics of a variant in words (the backend switches only where they act)."""
    if v.framework == "jax":
        parts = [f"BN {'two-pass' if v.batchnorm == 'torch' else 'one-pass E[x²]−E[x]²'}",
                 f"precision {v.precision or 'default'}"]
    else:
        parts = ["contiguous" if not v.channels_last else "channels_last_3d"]
        if device == "gpu" or v.needs_cuda:
            parts += [f"cuDNN {'on' if v.cudnn else 'off'}", f"TF32 {'on' if v.tf32 else 'off'}"]
    parts += [f"init {v.init}", v.optimizer + (f" lr {v.lr:g}" if v.lr is not None else "")]
    return ", ".join(parts)


def results_table(results: list[Result], skipped: list[tuple[Variant, str]], device: str, zero_loss: float,
                  checks: dict[str, str] | None = None) -> str:
    """One row per variant: the loss after N steps, how fast it fell, the final joint error."""
    check_col = checks is not None
    ops_col = any(r.batchnorm_ops for r in results)
    head = ("| configuration | numerics | initial loss (× zero-output) | loss after N | fell | lowest | steps to "
            "1/10 | steps to 1/100 | mean error (voxels) | ms/step |" + (" dead-output check |" if check_col else "")
            + (" BatchNorm operators and kernels |" if ops_col else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        fell = r.losses[0] / r.losses[-1] if np.isfinite(r.losses[-1]) and r.losses[-1] > 0 else math.nan
        final = f"diverged at step {r.diverged_at}" if r.diverged_at is not None else _num(r.losses[-1])
        row = (f"| {r.variant.name} | {describe(r.variant, device)} | {r.losses[0]:.3e} "
               f"({r.losses[0] / zero_loss:.3f}) | {final} | {_num(fell, '.0f')}× | {_num(np.nanmin(r.losses))} "
               f"| {_num(r.steps_to(10), 'd')} "
               f"| {_num(r.steps_to(100), 'd')} | {r.error_voxels:.2f} | {r.seconds_per_step * 1e3:.0f} |")
        if check_col:
            row += f" {checks.get(r.variant.name) or 'passes'} |"
        if ops_col:
            row += f" {r.batchnorm_ops or '–'} |"
        lines.append(row)
    for v, why in skipped:
        lines.append(f"| {v.name} | {describe(v, device)} | skipped: {why} |" + " |" * (8 + check_col + ops_col))
    return "\n".join(lines)


def plot_curves(path: Path, experiments: dict[str, tuple[list[Result], float]], title: str) -> None:
    """One panel per experiment: every variant's loss (log scale; JAX solid, PyTorch dashed), the all-zero-output
    loss, and 1/10 and 1/100 of the initial loss; one legend below the panels."""
    fig = Figure(figsize=(6 * len(experiments), 5.5))
    axes = fig.subplots(1, len(experiments), squeeze=False)[0]
    names = list(dict.fromkeys(r.variant.name for results, _ in experiments.values() for r in results))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    handles = {}
    for ax, (name, (results, zero)) in zip(axes, experiments.items()):
        for r in results:
            style = "-" if r.variant.framework == "jax" else "--"
            handles[r.variant.name], = ax.semilogy(np.arange(len(r.losses)), r.losses, style, lw=1.2,
                                                   color=colors[r.variant.name], label=r.variant.name)
        handles["all-zero output"] = ax.axhline(zero, color="k", lw=0.8, ls=":", label="all-zero output")
        if results:
            initial = results[0].losses[0]
            for factor in (10, 100):
                ax.axhline(initial / factor, color="gray", lw=0.6, ls="-.")
                ax.annotate(f"1/{factor}", (1, initial / factor), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", color="gray", fontsize=8)
        ax.set(xlabel="step", ylabel="heatmap MSE (log)", title=name)
        ax.grid(alpha=0.3, which="both")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * math.ceil(len(handles) / 3)))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def pair_summary(pairs: list[Pair], agreement: dict[tuple[str, str], tuple[float, float, int | None]]) -> str:
    """One line per pair of trained variants: how their losses and weights agree, where they part first."""
    lines = ["| configuration vs reference | losses, first steps | losses part at step | loss after N | weights "
             "after N (worst block) | first block beyond tolerance |", "|---|---|---|---|---|---|"]
    for p in pairs:
        first, last, part = agreement[(p.reference, p.other)]
        worst = max(p.weights, key=p.weights.get) if p.weights else None
        drift = f"{p.weights[worst]:.1e} ({worst})" if worst else "–"
        where = f"{p.divergence.path} ({p.divergence.quantity} {p.divergence.error:.1e} > {p.divergence.tol:.0e})" \
            if p.divergence else "none"
        lines.append(f"| {p.other} vs {p.reference} | {first:.1e} | {_num(part, 'd')} | {last:.1e} | {drift} "
                     f"| {where} |")
    return "\n".join(lines)


def pair_summary_same(pairs: list[Pair]) -> str:
    """One line per configuration run on shared weights: its worst block, the first beyond tolerance."""
    lines = ["| configuration | output: forward / gradient | worst forward (block) | worst gradient (block) "
             "| first block beyond tolerance |", "|---|---|---|---|---|"]
    for p in pairs:
        fwd = max((r for r in p.rows if r.fwd_rel is not None), key=lambda r: r.fwd_rel)
        grad = max((r for r in p.rows if r.grad_rel is not None), key=lambda r: r.grad_rel)
        out = p.rows[-1]
        where = f"{p.divergence.path} ({p.divergence.quantity} {p.divergence.error:.1e} > {p.divergence.tol:.0e})" \
            if p.divergence else f"none (tolerance {p.rows[0].tol:.0e})"
        lines.append(f"| {p.other} | {_num(out.fwd_rel, '.1e')} / {_num(out.grad_rel, '.1e')} | "
                     f"{fwd.fwd_rel:.1e} ({fwd.path}) | {grad.grad_rel:.1e} ({grad.path}) | {where} |")
    return "\n".join(lines)


def per_block(pairs: list[Pair], kinds: dict[str, str], cell: Callable[[Pair, Row], str], title: str) -> str:
    """Blocks down, pairs across; `cell` renders one block of one pair."""
    head = f"| block | kind | " + " | ".join(f"{p.other}: {title}" for p in pairs) + " |"
    lines = [head, "|" + "---|" * (2 + len(pairs))]
    rows = [{r.path: r for r in p.rows} for p in pairs]
    for path in [INPUT, *kinds, OUTPUT]:
        cells = [cell(p, r[path]) if path in r else "" for p, r in zip(pairs, rows)]
        lines.append(f"| {path} | {kinds.get(path, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drift_and_forward(pair: Pair, row: Row) -> str:
    return f"{_num(pair.weights.get(row.path), '.1e')} / {_num(row.fwd_rel, '.1e')}"


def forward_and_gradient(_pair: Pair, row: Row) -> str:
    return f"{_num(row.fwd_rel, '.1e')} / {_num(row.grad_rel, '.1e')}"


def block_table(ref: BlockReference, local: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Leaf blocks down: the float64 gains, then the local forward / gradient error of each configuration."""
    head = ("| block | kind | gain (f64) | gain without skip | "
            + " | ".join(f"{name}: forward / gradient" for name in local) + " |")
    lines = [head, "|" + "---|" * (4 + len(local))]
    for path, kind in ref.kinds.items():
        cells = [f"{errors[path][0]:.1e} / {errors[path][1]:.1e}" for errors in local.values()]
        lines.append(f"| {path} | {kind} | {ref.gain[path]:.2f} | {_num(ref.gain_without_skip.get(path), '.2f')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def bn_table(errors: dict[tuple[int, int], dict[str, float]]) -> str:
    names = list(dict.fromkeys(name for row in errors.values() for name in row))
    lines = ["| values per channel | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
    for (batch, n), row in errors.items():
        size = f"{batch} × {n}³ = {batch * n ** 3:,}" if batch > 1 else f"{n}³ = {n ** 3:,}"
        lines.append(f"| {size} | " + " | ".join(_num(row.get(name), ".1e") for name in names) + " |")
    return "\n".join(lines)


def write_json(path: Path, experiments: dict[str, list[Result]]) -> None:
    record = {name: [{"name": r.variant.name, "losses": [float(x) for x in r.losses],
                      "error_voxels": r.error_voxels, "seconds_per_step": r.seconds_per_step}
                     for r in results] for name, results in experiments.items()}
    write_text(path, json.dumps(record, indent=1))


def write_text(path: Path, text: str) -> None:
    """Atomically (a study stopped by a time limit leaves the last complete version)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
