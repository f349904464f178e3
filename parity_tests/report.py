"""Block-by-block parity report of the PyTorch and the Flax V2V on one sparse binary batch.

    python -m parity_tests.report --dtype float32 --grid 32 --width 32
    python -m parity_tests.report --device gpu --tf32 off --channels-last --out docs/results/parity_gpu.md

Prints a markdown table (forward error of every block's output, relative error of the gradients of its own
parameters, of its BN running statistics after the step, pass/fail) and the first block where the frameworks
diverge beyond the tolerance of the dtype. Runs unchanged on CPU and GPU.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

from parity_tests.compare import compare_models, first_divergence, format_table, tolerance
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.layers import BATCHNORM_FLAVOURS, CONV_IMPLS, UPSAMPLE_IMPLS, Numerics
from v2v_jax.model import V2VModel
from v2v_torch_ref import model as tmodel

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="float32",
                   help="compute dtype (bfloat16: JAX computes in bf16 with float32 parameters, torch in float32)")
    p.add_argument("--tf32", choices=("on", "off"), default="off",
                   help="TF32 convolutions and matmuls on GPU in both frameworks (no effect on CPU)")
    p.add_argument("--batchnorm", choices=BATCHNORM_FLAVOURS, default="torch", help="JAX BatchNorm flavour")
    p.add_argument("--upsample", choices=UPSAMPLE_IMPLS, default=Numerics.upsample)
    p.add_argument("--conv", choices=CONV_IMPLS, default=Numerics.conv)
    p.add_argument("--mode", choices=("train", "eval"), default="train", help="BatchNorm mode")
    p.add_argument("--grid", type=int, default=32, help="input grid N (multiple of 4; V2V uses 88)")
    p.add_argument("--width", type=int, default=32, help="network width (V2V: 32)")
    p.add_argument("--joints", type=int, default=21)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--density", type=float, default=0.05, help="fraction of occupied voxels in the input")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--channels-last", action="store_true",
                   help="torch model and input in channels_last_3d (cuDNN then uses its persistent BatchNorm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the report to this markdown file")
    args = p.parse_args(argv)
    if args.grid % 4:
        p.error(f"--grid {args.grid}: must be a multiple of 4 (two 2x poolings)")
    return args


def set_tf32(enabled: bool) -> None:
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    jax.config.update("jax_default_matmul_precision", "default" if enabled else "highest")


def jax_device(kind: str):
    try:
        return jax.devices(kind)[0]
    except RuntimeError as e:
        raise SystemExit(f"--device {kind}: JAX sees no {kind} ({e})") from e


def build_models(args):
    compute, params = PRECISIONS[args.dtype]
    reference = tmodel.DTYPES["float32" if args.dtype == "bfloat16" else args.dtype]
    torch.manual_seed(args.seed)
    torch_model = tmodel.V2VModel(1, args.joints, args.width).to(reference)
    if args.device == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--device gpu: torch sees no CUDA device")
        torch_model = torch_model.cuda()
    numerics = Numerics(dtype=compute, param_dtype=params, batchnorm=args.batchnorm, upsample=args.upsample,
                        conv=args.conv)
    return torch_model, V2VModel(1, args.joints, args.width, numerics=numerics, rngs=nnx.Rngs(args.seed))


def sparse_voxels(args) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    return (rng.random((args.batch, 1, args.grid, args.grid, args.grid)) < args.density).astype(np.float64)


def report(args) -> str:
    set_tf32(args.tf32 == "on")
    torch_model, jax_model = build_models(args)
    memory_format = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    tol = tolerance(args.dtype, tf32=args.tf32 == "on" and args.device == "gpu")
    with jax.default_device(jax_device(args.device)):
        rows = compare_models(torch_model, jax_model, sparse_voxels(args), train=args.mode == "train", tol=tol,
                              memory_format=memory_format, seed=args.seed)
    divergence = first_divergence(rows)
    torch_device = torch.cuda.get_device_name() if args.device == "gpu" else platform.processor() or "cpu"
    header = (f"V2V parity, torch {torch.__version__} ({torch_device}) vs jax {jax.__version__} "
              f"({jax_device(args.device).device_kind}); {datetime.date.today()}\n\n"
              f"dtype {args.dtype}, TF32 {args.tf32}, BN {args.batchnorm} ({args.mode} mode), upsample "
              f"{args.upsample}, conv {args.conv}, grid {args.grid}^3, width {args.width}, batch {args.batch}, "
              f"joints {args.joints}, density {args.density}, torch memory format "
              f"{'channels_last_3d' if args.channels_last else 'contiguous'}, seed {args.seed}\n")
    verdict = str(divergence) if divergence else f"no divergence beyond {tol:.0e}"
    return f"{header}\n{format_table(rows)}\n\n{verdict}\n"


def main(argv=None):
    args = parse_args(argv)
    if args.dtype == "float64":  # every other dtype runs in JAX's default configuration, as the product does
        jax.config.update("jax_enable_x64", True)
    text = report(args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
