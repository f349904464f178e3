"""Markdown tables, loss-curve figures and a JSON record of a study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from v2v_jax.studies.divergence import BlockPrecision, PairDivergence
from v2v_jax.studies.overfit import Result, Variant


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
    head = ("| configuration | numerics | initial loss (× zero-output) | loss after N | fell | steps to 1/10 "
            "| steps to 1/100 | mean error (voxels) | ms/step |" + (" dead-output check |" if check_col else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        fell = r.losses[0] / r.losses[-1] if np.isfinite(r.losses[-1]) and r.losses[-1] > 0 else math.nan
        final = f"diverged at step {r.diverged_at}" if r.diverged_at is not None else _num(r.losses[-1])
        row = (f"| {r.variant.name} | {describe(r.variant, device)} | {r.losses[0]:.3e} "
               f"({r.losses[0] / zero_loss:.3f}) | {final} | {_num(fell, '.0f')}× | {_num(r.steps_to(10), 'd')} "
               f"| {_num(r.steps_to(100), 'd')} | {r.error_voxels:.2f} | {r.seconds_per_step * 1e3:.0f} |")
        if check_col:
            row += f" {checks.get(r.variant.name) or 'passes'} |"
        lines.append(row)
    for v, why in skipped:
        lines.append(f"| {v.name} | {describe(v, device)} | skipped: {why} |" + " |" * (7 + check_col))
    return "\n".join(lines)


def plot_curves(path: Path, experiments: dict[str, tuple[list[Result], float]], title: str) -> None:
    """One panel per experiment: every variant's loss (log scale), the zero-output loss, 1/10 and 1/100 of the
    initial loss."""
    fig = Figure(figsize=(6.5 * len(experiments), 5.2))
    axes = fig.subplots(1, len(experiments), squeeze=False)[0]
    for ax, (name, (results, zero)) in zip(axes, experiments.items()):
        for i, r in enumerate(results):
            style = "-" if r.variant.framework == "jax" else "--"
            ax.semilogy(np.arange(len(r.losses)), r.losses, style, lw=1.3, label=r.variant.name,
                        color=f"C{i % 10}")
        ax.axhline(zero, color="k", lw=0.8, ls=":", label="all-zero output")
        if results:
            initial = results[0].losses[0]
            for factor in (10, 100):
                ax.axhline(initial / factor, color="gray", lw=0.6, ls="-.")
                ax.annotate(f"1/{factor}", (0, initial / factor), color="gray", fontsize=8, va="bottom")
        ax.set(xlabel="step", ylabel="heatmap MSE (log)", title=name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def divergence_section(pair: PairDivergence, kinds: dict[str, str], steps: int, loss_agreement: str) -> str:
    """A table per pair: the drift of the trained weights, forward and gradient errors per block."""
    worst = max(pair.weights.values()) if pair.weights else math.nan
    lines = [f"### {pair.other} vs {pair.reference}", "",
             f"{loss_agreement} Trained weights differ by up to {worst:.2e} (max-relative per layer). "
             f"{pair.divergence if pair.divergence else 'No block exceeds the tolerance.'}", "",
             "| block | kind | weights after N steps | forward | gradient |", "|---|---|---|---|---|"]
    for row in pair.rows:
        weights = pair.weights.get(row.path)
        lines.append(f"| {row.path} | {kinds.get(row.path, '')} | {_num(weights)} | {_num(row.fwd_rel)} "
                     f"| {_num(row.grad_rel)} |")
    return "\n".join(lines)


def block_table(blocks: list[BlockPrecision]) -> str:
    names = list(blocks[0].local) if blocks else []
    head = ("| block | kind | gain (f64) | gain without skip | "
            + " | ".join(f"{n}: forward / gradient" for n in names) + " |")
    lines = [head, "|" + "---|" * (4 + len(names))]
    for b in blocks:
        cells = [f"{f:.1e} / {g:.1e}" for f, g in b.local.values()]
        lines.append(f"| {b.path} | {b.kind} | {b.gain:.2f} | {_num(b.gain_without_skip, '.2f')} | "
                     + " | ".join(cells) + " |")
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
