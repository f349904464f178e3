"""The precision study and the ablations: run the variants, compare them, write the report as results arrive."""

from __future__ import annotations

import dataclasses
import datetime
import platform

import jax
import numpy as np
import torch

from parity_tests import compare
from v2v_jax.studies import divergence, report
from v2v_jax.studies.overfit import Problem, Result, Variant, make_problem
from v2v_jax.studies.plans import (BLOCK_CANDIDATES, DIVERGENCE_PAIRS, Budget, Settings, ablation_variants,
                                   precision_variants, run_variants)
from v2v_jax.train.data import dead_output_warning

FIRST_STEPS = 10  # trajectory agreement is reported over this many steps


@dataclasses.dataclass
class Experiment:
    problem: Problem
    results: list[Result] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Variant, str]] = dataclasses.field(default_factory=list)

    def by_name(self) -> dict[str, Result]:
        return {r.variant.name: r for r in self.results}


def label(num_samples: int) -> str:
    return "one sample" if num_samples == 1 else f"{num_samples} samples"


def machine(device: str) -> str:
    if device == "gpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    kind = jax.devices(device)[0].device_kind if device == "gpu" else (platform.processor() or "cpu")
    return f"{kind}, {torch.get_num_threads()} PyTorch threads"


def header(title: str, settings: Settings, budget: Budget) -> str:
    return (f"# {title}\n\n"
            f"{datetime.date.today()}, {settings.device.upper()} ({machine(settings.device)}); jax {jax.__version__}, "
            f"torch {torch.__version__}. Synthetic hand frames (`v2v_jax.data.synth`, seed {settings.seed}, one "
            f"subject), voxelised at {settings.grid}³ without augmentation, joints '{settings.joints}'; V2V width "
            f"{settings.width}; {settings.steps} steps; RMSprop lr {settings.lr:g} unless stated (α 0.99, ε 1e-8); "
            f"JAX conv formulation '{settings.conv}'. Every configuration starts from the same weights "
            f"(converted with `v2v_jax.convert`). Run time {budget.elapsed():.0f} s.\n\n"
            "Columns: loss before the first step (and as a multiple of the all-zero-output loss), after the last "
            "step, the fall between them, the first step at which the loss is at most 1/10 and 1/100 of the "
            "initial loss (– never), the mean joint error of the final output's argmax in input voxels "
            "(argmax alone leaves ~0.96), and the time per step (noisy on a shared machine).\n")


def trajectory_agreement(a: Result, b: Result) -> str:
    k = min(FIRST_STEPS, len(a.losses), len(b.losses))
    first = compare.rel_error(b.losses[:k], a.losses[:k])
    last = compare.rel_error(b.losses[-1:], a.losses[-1:])
    return f"Losses agree to {first:.1e} (max-relative) over the first {k} steps and to {last:.1e} after the last."


def tolerance_for(v: Variant) -> float:
    dtype = "float32" if v.dtype == "float32" else v.dtype
    return compare.tolerance(dtype, tf32=v.tf32 or (v.framework == "jax" and v.precision is None))


def precision_study(settings: Settings) -> str:
    budget = Budget(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Experiment] = {}
    pairs: list[divergence.PairDivergence] = []
    blocks: list[divergence.BlockPrecision] = []

    def write(_=None) -> str:
        text = render_precision(settings, budget, experiments, pairs, blocks)
        report.write_text(settings.out / "report.md", text)
        report.write_json(settings.out / "curves.json", {k: e.results for k, e in experiments.items()})
        report.plot_curves(settings.out / "precision.png",
                           {k: (e.results, e.problem.zero_loss) for k, e in experiments.items()},
                           f"V2V overfit, {settings.device.upper()}, {settings.grid}³, width {settings.width}")
        return text

    for n in settings.samples:
        print(f"{label(n)}:", flush=True)
        experiment = experiments[label(n)] = Experiment(make_problem(n, settings.grid, settings.joints, settings.seed))
        variants, experiment.skipped = precision_variants(settings.device, n)
        run_variants(variants, experiment.problem, settings, budget,
                     on_result=lambda e, exp=experiment: _add(exp, e) or write())
    first = next(iter(experiments.values()))
    done = first.by_name()
    for ref, other in DIVERGENCE_PAIRS:
        if ref in done and other in done and not budget.exhausted():
            print(f"divergence {other} vs {ref}", flush=True)
            pairs.append(divergence.trained_divergence(done[ref], done[other], first.problem, conv=settings.conv,
                                                       device=settings.device, tol=tolerance_for(done[other].variant)))
            write()
    candidates = [done[name].variant for name in BLOCK_CANDIDATES if name in done]
    if "JAX f64" in done and candidates and not budget.exhausted():
        print("block by block", flush=True)
        blocks.extend(divergence.block_precision(done["JAX f64"].state_dict, first.problem, candidates,
                                                 conv=settings.conv, device=settings.device))
    return write()


def _add(experiment: Experiment, entry) -> None:
    if isinstance(entry, Result):
        experiment.results.append(entry)
    elif entry not in experiment.skipped:
        experiment.skipped.append(entry)


def render_precision(settings, budget, experiments, pairs, blocks) -> str:
    parts = [header("V2V precision and backend study", settings, budget), "![loss curves](precision.png)\n"]
    for name, e in experiments.items():
        parts += [f"## {name.capitalize()} (all-zero-output loss {e.problem.zero_loss:.3e})\n",
                  report.results_table(e.results, e.skipped, settings.device, e.problem.zero_loss) + "\n"]
    if pairs:
        first = next(iter(experiments.values()))
        kinds = divergence.block_types(first.results[0].state_dict)
        parts.append(f"## Per-block divergence after {settings.steps} steps ({next(iter(experiments))})\n\n"
                     "Each trained network runs under its own numerics on the fitted batch (train-mode BN), "
                     "`parity_tests.compare` measures every block's output and its parameters' gradients "
                     "against the reference's; 'weights' is how far the trained parameters have drifted apart. "
                     "All max-relative. The first divergence uses the tolerance of the lower precision "
                     "(parity_tests.compare.TOLERANCES).\n")
        for pair in pairs:
            results = experiments[next(iter(experiments))].by_name()
            agreement = trajectory_agreement(results[pair.reference], results[pair.other])
            parts.append(report.divergence_section(pair, kinds, settings.steps, agreement) + "\n")
    if blocks:
        parts += ["## Block by block at the trained float64 weights\n\n"
                  "Every block alone, fed the input it sees in the float64 network (trained JAX f64 weights, "
                  "fitted batch, train-mode BN): *forward / gradient* is the error the block itself adds in that "
                  "configuration (its output; the worst of its input and parameter gradients for a uniform "
                  "random MSE target), against PyTorch float64 on CPU. *gain* is, in float64, the relative "
                  "output change over the relative input change for a 2⁻²⁴ relative input perturbation (how "
                  "much the block amplifies an error it receives); *gain without skip* is the same for "
                  "relu(branch(x)), the residual block with its skip path removed.\n",
                  report.block_table(blocks) + "\n"]
    return "\n".join(parts)


def ablation_study(settings: Settings) -> str:
    budget = Budget(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Experiment] = {}

    def write(_=None) -> str:
        parts = [header("V2V ablations: init, optimiser, final ReLU", settings, budget),
                 "![loss curves](ablations.png)\n",
                 "The dead-output check is `v2v_jax.train.data.dead_output_warning`: it fires when the second "
                 "half of the losses stays within 2 % of the all-zero-output loss.\n"]
        for name, e in experiments.items():
            checks = {r.variant.name: dead_output_warning(list(r.losses), e.problem.zero_loss) for r in e.results}
            parts += [f"## {name.capitalize()} (all-zero-output loss {e.problem.zero_loss:.3e}; "
                      f"{zero_output_loss(settings.grid):.3e} for a joint away from the border)\n",
                      report.results_table(e.results, e.skipped, settings.device, e.problem.zero_loss, checks)
                      + "\n"]
        text = "\n".join(parts)
        report.write_text(settings.out / "ablations.md", text)
        report.write_json(settings.out / "ablations.json", {k: e.results for k, e in experiments.items()})
        report.plot_curves(settings.out / "ablations.png",
                           {k: (e.results, e.problem.zero_loss) for k, e in experiments.items()},
                           f"V2V ablations, {settings.device.upper()}, {settings.grid}³, width {settings.width}")
        return text

    for n in settings.samples:
        print(f"{label(n)}:", flush=True)
        experiment = experiments[label(n)] = Experiment(make_problem(n, settings.grid, settings.joints, settings.seed))
        run_variants(ablation_variants(settings.lr), experiment.problem, settings, budget,
                     on_result=lambda e, exp=experiment: _add(exp, e) or write())
    return write()


def zero_output_loss(grid: int, sigma: float = 1.7) -> float:
    """mean(H²) of one joint's Gaussian at the centre of an (grid/2)³ heatmap, ignoring truncation at the border:
    (√π σ)³ / M³ (SPEC §4: 3.21e-4 at 44³)."""
    return float((np.sqrt(np.pi) * sigma) ** 3 / (grid // 2) ** 3)
