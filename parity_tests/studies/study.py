"""The precision study and the ablations: run the variants, compare them, write the report as results arrive."""

from __future__ import annotations

import dataclasses
import datetime

import jax
import jax.numpy as jnp
import numpy as np
import torch

from parity_tests import compare
from parity_tests.studies import divergence, report
from parity_tests.studies.overfit import Problem, Result, Variant, jax_has, make_problem
from parity_tests.studies.plans import (DIVERGENCE_PAIRS, Budget, Settings, ablation_variants, final_relu_variants,
                                   precision_variants, run_variants)
from v2v_jax import geometry
from v2v_jax.train.checks import dead_output_warning

FIRST_STEPS = 10  # trajectory agreement is reported over this many steps
PART = 0.01  # and the step at which two loss curves first differ by this fraction
# A final ReLU can kill every output only where the all-zero output is nearly right everywhere: at V2V's own 88^3
# grid (mean target 77.4 / 44^3 = 9e-4 per voxel, below the initial outputs' ~1e-3), not at 24^3 or 48^3 (there
# it fits). So the final-ReLU check runs the full network: width 32, 21 joints, 88^3 (~2 s per step on the CPU).
FULL = dict(grid=88, width=32, joints="all", steps=20)


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
    """What ran the study: JAX's device kind and PyTorch's CUDA device or CPU threads."""
    backend = "gpu" if device == "gpu" and jax_has("gpu") else "cpu"
    threads = torch.get_num_threads()
    torch_kind = (torch.cuda.get_device_name() if device == "gpu" and torch.cuda.is_available()
                  else f"CPU with {threads} thread{'s' if threads > 1 else ''}")
    return f"JAX on {jax.devices(backend)[0].device_kind}, PyTorch on {torch_kind}"


def header(title: str, settings: Settings, budget: Budget) -> str:
    return (f"# {title}\n\n"
            f"{datetime.date.today()}, {settings.device.upper()} ({machine(settings.device)}); jax {jax.__version__}, "
            f"torch {torch.__version__}. Synthetic hand frames (`v2v_jax.data.synth`, seed {settings.seed}, one "
            f"subject), voxelised at {settings.grid}³ without augmentation, joints '{settings.joints}'; V2V width "
            f"{settings.width}; {settings.steps} steps; RMSprop lr {settings.lr:g} unless stated (α 0.99, ε 1e-8); "
            f"JAX conv formulation '{settings.conv}'. Every configuration starts from the same weights "
            f"(converted with `v2v_jax.convert`). Run time {budget.elapsed():.0f} s.\n\n"
            "Columns: loss before the first step (and as a multiple of the all-zero-output loss), after the last "
            "step, the fall between them, the lowest loss of the run, the first step at which the loss is at most "
            "1/10 and 1/100 of the initial loss (– never), the mean joint error of the final output's argmax in "
            "input voxels (argmax alone leaves ~0.96), and the time per step (noisy on a shared machine).\n")


def loss_agreement(a: Result, b: Result) -> tuple[float, float, int | None]:
    """Max-relative difference of two loss curves over the first FIRST_STEPS steps and after the last step, and
    the first step at which they differ by more than PART (None: never)."""
    k = min(FIRST_STEPS, len(a.losses), len(b.losses))
    apart = np.flatnonzero(np.abs(b.losses - a.losses) > PART * np.abs(a.losses))
    return (compare.rel_error(b.losses[:k], a.losses[:k]), compare.rel_error(b.losses[-1:], a.losses[-1:]),
            int(apart[0]) if apart.size else None)


def tolerance_for(v: Variant, device: str) -> float:
    """compare.TOLERANCES of the variant's compute; float32 convolutions run as TF32 on a GPU unless turned off."""
    tf32 = device == "gpu" and (v.tf32 if v.framework == "torch" else v.precision is None)
    return compare.tolerance(v.dtype, tf32=tf32)


@dataclasses.dataclass
class Analysis:
    """The block-by-block comparisons of a precision study (filled in as they finish)."""

    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    trajectories: list[divergence.Pair] = dataclasses.field(default_factory=list)
    agreement: dict[tuple[str, str], tuple[float, float, int | None]] = dataclasses.field(default_factory=dict)
    weights_from: str = ""  # the float64 configuration whose trained weights the same-weight analyses use
    reference: compare.Run | None = None  # those weights in PyTorch float64 on CPU
    same_weights: list[divergence.Pair] = dataclasses.field(default_factory=list)
    block_ref: divergence.BlockReference | None = None
    bn_alone: dict[tuple[int, int], dict[str, float]] = dataclasses.field(default_factory=dict)
    block_local: dict[str, dict[str, tuple[float, float]]] = dataclasses.field(default_factory=dict)


def precision_study(settings: Settings) -> str:
    budget = Budget(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Experiment] = {}
    analysis = Analysis()

    def write(_=None) -> str:
        text = render_precision(settings, budget, experiments, analysis)
        report.write_text(settings.out / "precision_report.md", text)
        report.write_json(settings.out / "precision.json", {k: e.results for k, e in experiments.items()})
        report.plot_curves(settings.out / "precision.png",
                           {k: (e.results, e.problem.zero_loss) for k, e in experiments.items()},
                           f"V2V overfit, {settings.device.upper()}, {settings.grid}³, width {settings.width}, "
                           f"RMSprop lr {settings.lr:g}")
        return text

    for i, n in enumerate(settings.samples):
        print(f"{label(n)}:", flush=True)
        experiment = experiments[label(n)] = Experiment(make_problem(n, settings.grid, settings.joints, settings.seed))
        variants, experiment.skipped = precision_variants(settings.device, n)
        for framework in ("torch", "jax"):  # PyTorch first: it compiles nothing, and holds the backend questions
            run_variants([v for v in variants if v.framework == framework], experiment.problem, settings, budget,
                         on_result=lambda e, exp=experiment: _add(exp, e) or write())
            if i == 0:
                same_weights_and_blocks(experiment, framework, settings, budget, analysis, write)
    first = next(iter(experiments.values()))
    if first.results:
        trajectories(first, settings, budget, analysis, write)
    return write()


def same_weights_and_blocks(experiment: Experiment, framework: str, settings: Settings, budget: Budget,
                            analysis: Analysis, write) -> None:
    """The configurations of one framework on the float64-trained weights: along the network, then block by
    block, while the budget lasts."""
    done = experiment.by_name()
    if not analysis.weights_from:
        f64 = done.get("PyTorch f64") or done.get("JAX f64")
        if f64 is None:
            return
        analysis.weights_from = f64.variant.name
    weights = done[analysis.weights_from].state_dict
    x, target = divergence.torch_layout(experiment.problem)
    if analysis.reference is None:
        analysis.kinds = divergence.block_kinds(weights)
        analysis.reference = divergence.run_variant(divergence.F64, weights, x, target, conv=settings.conv,
                                                    device="cpu")
        analysis.block_ref = divergence.block_reference(weights, experiment.problem)
    candidates = [r.variant for r in experiment.results if r.variant.framework == framework
                  and r.variant.name != analysis.weights_from and not redundant(r.variant, settings)]
    bn_variants = [v for v in candidates if v.dtype != "float64" and not v.tf32]  # TF32 does not touch BN
    if bn_variants and not budget.exhausted():
        print(f"BatchNorm alone ({budget.elapsed():.0f} s)", flush=True)
        for size, errors in divergence.batchnorm_alone(bn_variants, settings.device).items():
            analysis.bn_alone.setdefault(size, {}).update(errors)
        write()
    for v in candidates:
        if budget.exhausted():
            return
        print(f"same weights: {v.name} ({budget.elapsed():.0f} s)", flush=True)
        other = divergence.run_variant(v, weights, x, target, conv=settings.conv, device=settings.device)
        analysis.same_weights.append(divergence.compare_pair(
            analysis.reference, other, analysis.kinds, tolerance_for(v, settings.device),
            names=("PyTorch f64", v.name)))
        write()
    for v in candidates:
        if budget.exhausted():
            return
        if v.dtype != "float64":
            print(f"block by block: {v.name} ({budget.elapsed():.0f} s)", flush=True)
            analysis.block_local[v.name] = divergence.local_errors(analysis.block_ref, v, conv=settings.conv,
                                                                   device=settings.device)
            write()


def trajectories(experiment: Experiment, settings: Settings, budget: Budget, analysis: Analysis, write) -> None:
    """DIVERGENCE_PAIRS after training: each network under its own numerics, block by block."""
    done = experiment.by_name()
    x, target = divergence.torch_layout(experiment.problem)
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
            analysis.kinds = analysis.kinds or divergence.block_kinds(a.state_dict)
            analysis.trajectories.append(divergence.compare_pair(
                run(a), run(b), analysis.kinds, tolerance_for(b.variant, settings.device), names=(ref, other),
                weights=(a.state_dict, b.state_dict)))
            analysis.agreement[(ref, other)] = loss_agreement(a, b)
            write()


def redundant(v: Variant, settings: Settings) -> bool:
    """'highest' precision computes exactly what the default does on CPU (XLA's CPU convolutions ignore it)."""
    return settings.device == "cpu" and v.precision is not None and v.batchnorm == "torch"


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
    if analysis.same_weights:
        parts += ["## Same weights: where precision is lost along the network\n\n"
                  f"Every configuration runs the trained weights of {analysis.weights_from} (after "
                  f"{settings.steps} steps, one sample) on the fitted batch, against PyTorch float64 on CPU: the "
                  "error accumulated at each block's output (forward) and in its parameters' gradients "
                  "(`parity_tests.compare`, max-relative). On CPU 'highest' precision is left out here and below: "
                  "it computes exactly what the default does.\n",
                  report.pair_summary_same(analysis.same_weights) + "\n",
                  report.per_block(analysis.same_weights, analysis.kinds, report.forward_and_gradient,
                                   "forward / gradient") + "\n"]
    if analysis.bn_alone:
        parts += ["## BatchNorm alone\n\n"
                  "One train-mode BatchNorm on (batch, 4, n, n, n) values N(3, 1)·0.25 (mean three standard "
                  "deviations from zero), in each configuration's dtype, backend and memory format, against "
                  "float64: the max-relative error of its output as the number of values per channel grows. The "
                  "last row is V2V's first BatchNorm at batch 8.\n",
                  report.bn_table(analysis.bn_alone) + "\n"]
    if analysis.block_local:
        parts += ["## Block by block: the error each block adds, and how it passes errors on\n\n"
                  "Every block alone, fed the input it sees in the float64 network (same weights and batch): "
                  "*forward / gradient* is the error the block itself adds in that configuration (its output; the "
                  "worst of its input and parameter gradients for a uniform random MSE target), against PyTorch "
                  "float64 on CPU. *gain* is, in float64, the relative output change over the relative input "
                  "change for a random 2⁻²⁴ relative input perturbation (how much the block amplifies an error "
                  "it receives; max-relative); *gain without skip* is the same for relu(branch(x)), the residual "
                  "block with its skip path removed.\n",
                  report.block_table(analysis.block_ref, analysis.block_local) + "\n"]
    if analysis.trajectories:
        parts += [f"## Trajectories: pairs of configurations after {settings.steps} steps (one sample)\n\n"
                  "Each trained network runs under its own numerics on the fitted batch (train-mode BN); "
                  "`parity_tests.compare` measures every block's output and its parameters' gradients against "
                  "the reference's. *weights* is how far the trained parameters have drifted apart. All "
                  f"max-relative; losses over the first {FIRST_STEPS} steps, and the first step at which they "
                  f"differ by more than {PART:.0%}. The first block beyond tolerance "
                  "uses the tolerance of the lower precision (`parity_tests.compare.TOLERANCES`).\n",
                  report.pair_summary(analysis.trajectories, analysis.agreement) + "\n",
                  report.per_block(analysis.trajectories, analysis.kinds, report.drift_and_forward,
                                   "weights / forward") + "\n"]
    return "\n".join(parts)


def ablation_study(settings: Settings) -> str:
    """The ablation variants on each batch size, then the final ReLU against the baseline in the full network."""
    budget = Budget(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Experiment] = {}
    grids: dict[str, int] = {}

    def write(_=None) -> str:
        parts = [header("V2V ablations: init, optimiser, final ReLU", settings, budget),
                 "![loss curves](ablations.png)\n",
                 "The dead-output check is `v2v_jax.train.checks.dead_output_warning`: it fires when the second "
                 "half of the losses stays within 2 % of the all-zero-output loss.\n"]
        for name, e in experiments.items():
            checks = {r.variant.name: dead_output_warning(list(r.losses), e.problem.zero_loss) for r in e.results}
            parts += [f"## {name.capitalize()} (all-zero-output loss {e.problem.zero_loss:.3e}; "
                      f"{centred_zero_output_loss(grids[name]):.3e} for a joint away from the border)\n",
                      report.results_table(e.results, e.skipped, settings.device, e.problem.zero_loss, checks)
                      + "\n"]
        text = "\n".join(parts)
        report.write_text(settings.out / "ablations_report.md", text)
        report.write_json(settings.out / "ablations.json", {k: e.results for k, e in experiments.items()})
        report.plot_curves(settings.out / "ablations.png",
                           {k: (e.results, e.problem.zero_loss) for k, e in experiments.items()},
                           f"V2V ablations, {settings.device.upper()}, JAX float32")
        return text

    def experiment(name: str, variants: list[Variant], sized: Settings, n: int) -> None:
        print(f"{name}:", flush=True)
        grids[name] = sized.grid
        e = experiments[name] = Experiment(make_problem(n, sized.grid, sized.joints, sized.seed))
        run_variants(variants, e.problem, sized, budget, on_result=lambda entry: _add(e, entry) or write())

    variants = ablation_variants(settings.lr)
    for n in settings.samples:
        experiment(f"{label(n)}, {settings.grid}³", variants, settings, n)
    full = dataclasses.replace(settings, **{**FULL, "steps": min(settings.steps, FULL["steps"])})
    experiment(f"one sample, full V2V ({full.grid}³, width {full.width}, {full.joints} joints, {full.steps} steps)",
               final_relu_variants(settings.lr), full, 1)
    return write()


def centred_zero_output_loss(grid: int) -> float:
    """The all-zero-output loss of one joint at the centre of the grid (`geometry.zero_output_loss`)."""
    return float(geometry.zero_output_loss(np.full((1, 1, 3), grid / 2), grid // 2, dtype=jnp.float64))
