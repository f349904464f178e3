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
from v2v_jax.studies.plans import (DIVERGENCE_PAIRS, Budget, Settings, ablation_variants,
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


def loss_agreement(a: Result, b: Result) -> tuple[float, float]:
    """Max-relative difference of two loss curves over the first FIRST_STEPS steps, and after the last step."""
    k = min(FIRST_STEPS, len(a.losses), len(b.losses))
    return compare.rel_error(b.losses[:k], a.losses[:k]), compare.rel_error(b.losses[-1:], a.losses[-1:])


def tolerance_for(v: Variant, device: str) -> float:
    """compare.TOLERANCES of the variant's compute; float32 convolutions run as TF32 on a GPU unless turned off."""
    tf32 = device == "gpu" and (v.tf32 if v.framework == "torch" else v.precision is None)
    return compare.tolerance(v.dtype, tf32=tf32)


@dataclasses.dataclass
class Analysis:
    """The block-by-block comparisons of a precision study (filled in as they finish)."""

    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    trajectories: list[divergence.Pair] = dataclasses.field(default_factory=list)
    agreement: dict[tuple[str, str], tuple[float, float]] = dataclasses.field(default_factory=dict)
    same_weights: list[divergence.Pair] = dataclasses.field(default_factory=list)
    blocks: list[divergence.BlockPrecision] = dataclasses.field(default_factory=list)


def precision_study(settings: Settings) -> str:
    budget = Budget(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Experiment] = {}
    analysis = Analysis()

    def write(_=None) -> str:
        text = render_precision(settings, budget, experiments, analysis)
        report.write_text(settings.out / "report.md", text)
        report.write_json(settings.out / "curves.json", {k: e.results for k, e in experiments.items()})
        report.plot_curves(settings.out / "precision.png",
                           {k: (e.results, e.problem.zero_loss) for k, e in experiments.items()},
                           f"V2V overfit, {settings.device.upper()}, {settings.grid}³, width {settings.width}, "
                           f"RMSprop lr {settings.lr:g}")
        return text

    for n in settings.samples:
        print(f"{label(n)}:", flush=True)
        experiment = experiments[label(n)] = Experiment(make_problem(n, settings.grid, settings.joints, settings.seed))
        variants, experiment.skipped = precision_variants(settings.device, n)
        run_variants(variants, experiment.problem, settings, budget,
                     on_result=lambda e, exp=experiment: _add(exp, e) or write())
    first = next(iter(experiments.values()))
    if first.results:
        compare_blocks(first, settings, budget, analysis, write)
    return write()


def compare_blocks(experiment: Experiment, settings: Settings, budget: Budget, analysis: Analysis, write) -> None:
    """Trajectory pairs after training, then every configuration on the float64-trained weights, then block by
    block; each part only while the budget lasts."""
    done = experiment.by_name()
    x, target = divergence.torch_layout(experiment.problem)
    analysis.kinds = divergence.block_kinds(experiment.results[0].state_dict)
    runs: dict[str, compare.Run] = {}

    def run(result: Result) -> compare.Run:
        if result.variant.name not in runs:
            runs[result.variant.name] = divergence.run_variant(result.variant, result.state_dict, x, target,
                                                               conv=settings.conv, device=settings.device)
        return runs[result.variant.name]

    for ref, other in DIVERGENCE_PAIRS:
        if ref in done and other in done and not budget.exhausted():
            print(f"after training: {other} vs {ref} ({budget.elapsed():.0f} s)", flush=True)
            a, b = done[ref], done[other]
            analysis.trajectories.append(divergence.compare_pair(
                run(a), run(b), analysis.kinds, tolerance_for(b.variant, settings.device), names=(ref, other),
                weights=(a.state_dict, b.state_dict)))
            analysis.agreement[(ref, other)] = loss_agreement(a, b)
            write()
    f64 = done.get("JAX f64") or done.get("PyTorch f64")
    if f64 is None or budget.exhausted():
        return
    candidates = [r.variant for r in experiment.results if r.variant.name != "PyTorch f64"
                  and not (settings.device == "cpu" and r.variant.precision is not None
                           and r.variant.batchnorm == "torch")]  # XLA's CPU convolutions ignore precision
    reference = divergence.run_variant(divergence.F64, f64.state_dict, x, target, conv=settings.conv, device="cpu")
    for v in candidates:
        if budget.exhausted():
            return
        print(f"same weights: {v.name} ({budget.elapsed():.0f} s)", flush=True)
        other = divergence.run_variant(v, f64.state_dict, x, target, conv=settings.conv, device=settings.device)
        analysis.same_weights.append(divergence.compare_pair(
            reference, other, analysis.kinds, tolerance_for(v, settings.device), names=("PyTorch f64", v.name)))
        write()
    if not budget.exhausted():
        print(f"block by block ({budget.elapsed():.0f} s)", flush=True)
        analysis.blocks = divergence.block_precision(f64.state_dict, experiment.problem,
                                                     [v for v in candidates if v.dtype != "float64"],
                                                     conv=settings.conv, device=settings.device)


def _add(experiment: Experiment, entry) -> None:
    if isinstance(entry, Result):
        experiment.results.append(entry)
    elif entry not in experiment.skipped:
        experiment.skipped.append(entry)


def render_precision(settings: Settings, budget: Budget, experiments: dict[str, Experiment],
                     analysis: Analysis) -> str:
    parts = [header("V2V precision and backend study", settings, budget), "![loss curves](precision.png)\n"]
    for name, e in experiments.items():
        parts += [f"## {name.capitalize()} (all-zero-output loss {e.problem.zero_loss:.3e})\n",
                  report.results_table(e.results, e.skipped, settings.device, e.problem.zero_loss) + "\n"]
    first = next(iter(experiments), "")
    if analysis.trajectories:
        parts += [f"## Trajectories: pairs of configurations after {settings.steps} steps ({first})\n\n"
                  "Each trained network runs under its own numerics on the fitted batch (train-mode BN); "
                  "`parity_tests.compare` measures every block's output and its parameters' gradients against "
                  "the reference's. *weights* is how far the trained parameters have drifted apart. All "
                  f"max-relative; losses over the first {FIRST_STEPS} steps. The first block beyond tolerance "
                  "uses the tolerance of the lower precision (`parity_tests.compare.TOLERANCES`).\n",
                  report.pair_summary(analysis.trajectories, analysis.agreement) + "\n",
                  report.per_block(analysis.trajectories, analysis.kinds, report.drift_and_forward,
                                   "weights / forward") + "\n"]
    if analysis.same_weights:
        parts += ["## Same weights: where precision is lost along the network\n\n"
                  "Every configuration runs the trained float64 weights (JAX f64 after "
                  f"{settings.steps} steps) on the fitted batch, against PyTorch float64 on CPU: the error "
                  "accumulated at each block's output (forward) and in its parameters' gradients. On CPU, "
                  "'highest' precision is left out here and below: it computes exactly what the default does.\n",
                  report.pair_summary_same(analysis.same_weights) + "\n",
                  report.per_block(analysis.same_weights, analysis.kinds, report.forward_and_gradient,
                                   "forward / gradient") + "\n"]
    if analysis.blocks:
        parts += ["## Block by block: the error each block adds, and how it passes errors on\n\n"
                  "Every block alone, fed the input it sees in the float64 network (same weights and batch): "
                  "*forward / gradient* is the error the block itself adds in that configuration (its output; the "
                  "worst of its input and parameter gradients for a uniform random MSE target), against PyTorch "
                  "float64 on CPU. *gain* is, in float64, the relative output change over the relative input "
                  "change for a random 2⁻²⁴ relative input perturbation (how much the block amplifies an error "
                  "it receives; max-relative); *gain without skip* is the same for relu(branch(x)), the residual "
                  "block with its skip path removed.\n",
                  report.block_table(analysis.blocks) + "\n"]
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
