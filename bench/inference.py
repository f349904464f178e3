"""Inference, JAX vs the PyTorch reference: latency at batch 1 and samples/s at batch 32 (eval-mode BatchNorm);
on CPU batch 8 instead of 32 (two models' 88^3 activations at batch 32 exhaust a 24 GB machine).

    python bench/inference.py                          # CPU: 88^3, batches 1 and 8, float32
    python bench/inference.py --grid 32 --batches 1 8  # quicker
    python bench/inference.py --dtypes float32 bfloat16 --out DIR   # GPU, unchanged

One call = the forward pass of V2V on a batch of occupancy grids already on the device, BatchNorm with running
statistics; torch under inference_mode (and autocast for bfloat16). Same weights and inputs in both frameworks.
"""

from __future__ import annotations

import common  # noqa: F401, I001  (first: it configures torch's OpenMP threads before torch loads)

from common import (base_parser, check_dtypes, describe, header, inputs, interleaved, jax_forward, markdown_table,
                    model_pair, parse, ratio, setup_torch, to_torch, torch_forward, write_result)


def measure(grid, batch, dtype, args, device) -> dict:
    jmodel, tmodel = model_pair(args.conv, dtype, device, channels_last=args.channels_last)
    voxels, _ = inputs(batch, grid)
    calls = {"jax": jax_forward(jmodel, voxels),
             "torch": torch_forward(tmodel, to_torch(voxels, device, args.channels_last), dtype)}
    times = interleaved(calls, args.rounds, args.repeats)
    return {"grid": grid, "batch": batch, "dtype": dtype, "times": times,
            "jax_over_torch_time": ratio(times, "jax", "torch"),
            "jax_latency_ms": 1e3 * times["jax"]["wall_s"], "torch_latency_ms": 1e3 * times["torch"]["wall_s"],
            "jax_samples_per_s": batch / times["jax"]["wall_s"],
            "torch_samples_per_s": batch / times["torch"]["wall_s"]}


def main(argv=None):
    p = base_parser(__doc__)
    p.add_argument("--grid", type=int, default=88)
    p.add_argument("--batches", type=int, nargs="+", help="default 1 and 32 (GPU) or 1 and 8 (CPU)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="bfloat16 runs on GPU only")
    args = parse(p, argv)
    device = setup_torch()
    env = header(args)
    batches = args.batches or [1, 32 if device.type == "cuda" else 8]
    rows = [measure(args.grid, b, d, args, device) for d in check_dtypes(args.dtypes) for b in batches]
    table = markdown_table(
        ["grid", "batch", "dtype", "JAX ms/call", "torch ms/call", "JAX / torch time", "JAX samples/s",
         "torch samples/s", "JAX CPU s", "torch CPU s"],
        [[f"{r['grid']}^3", r["batch"], r["dtype"], r["jax_latency_ms"], r["torch_latency_ms"],
          r["jax_over_torch_time"], r["jax_samples_per_s"], r["torch_samples_per_s"], r["times"]["jax"]["cpu_s"],
          r["times"]["torch"]["cpu_s"]] for r in rows])
    write_result(args.out, "inference", {"environment": env, "rows": rows},
                 f"Inference (eval-mode BN). {describe(env)}.\n\n{table}")


if __name__ == "__main__":
    main()
