"""The studies' configurations and sizes, and running a list of variants under a time budget."""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from parity_tests.studies.overfit import Problem, Result, Variant, initial_state_dict, jax_has, train
from v2v_jax.train.optim import AUTHORS_RMSPROP

AUTHORS_LR = AUTHORS_RMSPROP["lr"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of a study. Defaults per device: `DEFAULTS`."""

    device: str = "cpu"
    steps: int = 300
    grid: int = 24
    width: int = 8
    joints: str = "tips"
    lr: float = 1e-3
    samples: tuple[int, ...] = (1, 8)
    conv: str = "auto"
    seed: int = 0
    budget_s: float | None = None  # start no new work after this many seconds (then report what is done)
    torch_threads: int | None = 1  # PyTorch's CPU threads (None: its default)
    out: Path = Path("docs/studies")


# CPU: sized for the 2-core dev machine (XLA compiles each configuration for ~20 s there). The RMSprop lr is 4x the
# authors' because at 300 steps their 2.5e-4 takes a single sample only 13x down (it is run as an ablation). One
# PyTorch thread: on the shared machine (load ~8) a step took 2.4 s with 2 threads and 0.2 s with 1.
# GPU: fits the 120 s the project's GPU check gives the study (scripts/gpu_check.sh), with a budget that stops
# starting new configurations in time to write the report.
DEFAULTS = {
    "cpu": Settings(),
    "gpu": Settings(device="gpu", steps=300, grid=32, width=16, samples=(1,), budget_s=75.0, torch_threads=None),
}


# On CPU a batch of 8 costs ~0.2 s per step in JAX and 1-2 s in PyTorch: that experiment keeps these.
CPU_BATCH_VARIANTS = ("JAX f32", "JAX f64")


def precision_variants(device: str, num_samples: int) -> tuple[list[Variant], list[tuple[Variant, str]]]:
    """(variants to run, [(variant, why it is skipped)]) of the precision study for this device and batch."""
    # In order of interest, so that a GPU run cut short by its budget has the main answers.
    variants = [
        Variant("PyTorch f32 TF32 (torch default)", "torch", tf32=True, needs_cuda=True),
        Variant("PyTorch f32 channels_last_3d", "torch", channels_last=True),
        Variant("PyTorch f32 no cuDNN", "torch", cudnn=False, needs_cuda=True),
        Variant("PyTorch f32", "torch"),
        Variant("PyTorch f64", "torch", "float64"),
        Variant("JAX f32"),
        Variant("JAX f32 highest", precision="highest"),
        Variant("JAX f64", dtype="float64"),
        Variant("PyTorch f32 TF32 channels_last_3d", "torch", tf32=True, channels_last=True, needs_cuda=True),
        Variant("PyTorch f32 no cuDNN channels_last_3d", "torch", cudnn=False, channels_last=True, needs_cuda=True),
        Variant("PyTorch f64 channels_last_3d", "torch", "float64", channels_last=True, needs_cuda=True),
        Variant("JAX bf16", dtype="bfloat16"),
        Variant("JAX f32 highest one-pass BN", batchnorm="flax", precision="highest"),
    ]
    run, skipped = [], []
    for v in variants:
        if v.needs_cuda and device != "gpu":
            skipped.append((v, "needs a CUDA device (cuDNN and TF32 switches)"))
        elif device == "cpu" and num_samples > 1 and v.name not in CPU_BATCH_VARIANTS:
            skipped.append((v, "on CPU the batch experiment runs only " + ", ".join(CPU_BATCH_VARIANTS)
                               + " (see the one-sample experiment for the rest)"))
        else:
            run.append(v)
    return run, skipped


# Pairs compared block by block after training: (reference, other).
DIVERGENCE_PAIRS = (("JAX f64", "JAX f32"), ("PyTorch f64", "PyTorch f32"), ("PyTorch f64", "JAX f64"),
                    ("JAX f64", "JAX bf16"), ("JAX f32 highest", "JAX f32 highest one-pass BN"),
                    ("PyTorch f64", "PyTorch f32 channels_last_3d"), ("PyTorch f64", "PyTorch f32 no cuDNN"),
                    ("JAX f32 highest", "JAX f32"))

def ablation_variants(lr: float) -> list[Variant]:
    """JAX float32 throughout: init, optimiser and the final-ReLU bug, each against the RMSprop baseline."""
    return [
        Variant(f"RMSprop lr {lr:g} (baseline)"),
        Variant(f"RMSprop lr {AUTHORS_LR:g} (authors')", lr=AUTHORS_LR),
        Variant("Adam lr 1e-3 (PyTorch port's default)", optimizer="adam", lr=1e-3),
        Variant("SGD momentum 0.9 lr 1", optimizer="sgd", lr=1.0),
        Variant("SGD momentum 0.9 lr 10", optimizer="sgd", lr=10.0),
        Variant("init framework (PyTorch default)", init="framework-torch"),
        Variant("init framework (Flax default)", init="framework-flax"),
        Variant("final ReLU after the output conv", final_relu=True),
    ]


def final_relu_variants(lr: float) -> list[Variant]:
    """The baseline and the final-ReLU bug at the study's lr and at the authors'."""
    return [Variant(f"RMSprop lr {lr:g} (baseline)"), Variant(f"final ReLU, RMSprop lr {lr:g}", final_relu=True),
            Variant(f"final ReLU, RMSprop lr {AUTHORS_LR:g} (authors')", final_relu=True, lr=AUTHORS_LR)]


class Budget:
    """Wall-clock allowance of a study: work starts only while `left()` is positive."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


def run_variants(variants: list[Variant], problem: Problem, settings: Settings, budget: Budget,
                 on_result: Callable[[Result | tuple[Variant, str]], None] = lambda r: None
                 ) -> tuple[list[Result], list[tuple[Variant, str]]]:
    """Trains each variant from the initial weights of its init scheme; skips what the device or budget rules out."""
    results, skipped, inits = [], [], {}
    for v in variants:
        if v.framework == "torch" and settings.device == "gpu" and not torch.cuda.is_available():
            entry = (v, "PyTorch sees no CUDA device")
        elif v.framework == "jax" and not jax_has(settings.device):
            entry = (v, f"JAX sees no {settings.device} device")
        elif budget.exhausted():
            entry = (v, f"time budget of {settings.budget_s:g} s spent")
        else:
            if v.init not in inits:
                inits[v.init] = initial_state_dict(v.init, settings.width, problem.num_joints, settings.seed)
            entry = _train(v, problem, inits[v.init], settings)
        if isinstance(entry, Result):
            results.append(entry)
            print(f"  {v.name}: loss {entry.losses[0]:.3e} -> {entry.losses[-1]:.3e}, "
                  f"{entry.seconds_per_step * 1e3:.0f} ms/step ({budget.elapsed():.0f} s)", flush=True)
        else:
            skipped.append(entry)
            print(f"  {v.name}: {entry[1]}", flush=True)
        on_result(entry)
    return results, skipped


def _train(v: Variant, problem: Problem, init: dict, settings: Settings) -> Result | tuple[Variant, str]:
    """One variant; a configuration the backend cannot run is reported, and the study goes on."""
    try:
        return train(v, problem, init, steps=settings.steps, lr=settings.lr, conv=settings.conv,
                     device=settings.device)
    except Exception as e:  # noqa: BLE001 - e.g. an operator without a kernel for this dtype or memory format
        traceback.print_exc()
        return v, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

