"""Command line of the studies: `python -m parity_tests.studies {precision,ablations} [options]`."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and PyTorch share the GPU in one process

import argparse  # noqa: E402
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import torch  # noqa: E402

from v2v_jax.layers import CONV_IMPLS  # noqa: E402
from parity_tests.studies.overfit import JOINT_SETS  # noqa: E402
from parity_tests.studies.plans import DEFAULTS  # noqa: E402
from parity_tests.studies.study import ablation_study, precision_study  # noqa: E402

STUDIES = {"precision": precision_study, "ablations": ablation_study}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m parity_tests.studies", description=__doc__)
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--device", choices=sorted(DEFAULTS), default="cpu",
                   help="where both frameworks run; the defaults below depend on it")
    p.add_argument("--steps", type=int, help="optimiser steps per configuration (cpu 300, gpu 300)")
    p.add_argument("--grid", type=int, help="input grid N, a multiple of 4 (cpu 24, gpu 32; V2V uses 88)")
    p.add_argument("--width", type=int, help="network width (cpu 8, gpu 16; V2V uses 32)")
    p.add_argument("--joints", choices=sorted(JOINT_SETS), help="joints to fit (default tips: wrist + fingertips)")
    p.add_argument("--lr", type=float, help="RMSprop learning rate (default 1e-3; the authors' 2.5e-4 is an "
                                            "ablation)")
    p.add_argument("--samples", type=int, nargs="+", help="batch sizes to overfit, one experiment each "
                                                           "(cpu: 1 8, gpu: 1)")
    p.add_argument("--conv", choices=("auto",) + CONV_IMPLS, help="JAX convolution formulation (default auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--budget-s", type=float, help="start no new configuration after this many seconds "
                                                  "(gpu default 75; the report lists what was skipped)")
    p.add_argument("--torch-threads", type=int, help="PyTorch CPU threads (cpu default 1: see plans.DEFAULTS)")
    p.add_argument("--out", type=Path, help="output directory (default docs/studies)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("study", "device") and v is not None}
    if "samples" in overrides:
        overrides["samples"] = tuple(overrides["samples"])
    settings = dataclasses.replace(DEFAULTS[args.device], **overrides)
    if settings.grid % 4:
        p.error(f"--grid {settings.grid}: must be a multiple of 4 (two 2x poolings)")
    return args.study, settings


def main(argv=None):
    study, settings = parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # for the float64 configurations; all others name their dtypes
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    STUDIES[study](settings)
    print(f"report in {settings.out}")


if __name__ == "__main__":
    main()
