"""Training step, JAX vs the PyTorch reference: samples/s, ratio, fraction of peak FLOP/s, memory.

    python bench/train_step.py                                   # CPU: 32^3 batch 4 and 88^3 batch 1, float32
    python bench/train_step.py --grids 88 --batches 1 --conv xla # the plain XLA convolution ("before")
    python bench/train_step.py --grids 88 --batches 8 --dtypes float32 bfloat16 --out DIR   # GPU, unchanged
    python bench/train_step.py --grids 88 --batches 1 --profile DIR   # + jax.profiler trace + per-block table

One step = forward, MSE against Gaussian heatmaps (mean over B*J*(N/2)^3), backward, RMSprop(2.5e-4, alpha 0.99,
eps 1e-8) update, BatchNorm in train mode: `v2v_jax.train.step.make_update` (targets built on the device from
joint coordinates, state donated) against `v2v_torch_ref.train`'s step (targets given). Same weights and inputs.
FLOPs per step are counted as 3x the forward's multiply-accumulates (bench.common.forward_macs) x 2.
"""

from __future__ import annotations

import common  # noqa: F401, I001  (first: it configures torch's OpenMP threads before torch loads)
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from common import (JOINTS, base_parser, check_dtypes, describe, header, inputs, interleaved, jax_peak_bytes,
                    jax_step_bytes, jax_train_step, markdown_table, model_pair, parse, peak_tflops, ratio,
                    setup_torch, sync, target_heatmaps, to_torch, torch_peak_memory, torch_train_step,
                    train_step_flops, write_result)
from v2v_jax import geometry

# Blocks timed separately by --profile: (path, what it is, input channels, input grid as a fraction of N, how many
# blocks of that shape V2V has). Res 32 @ N/2: front_layers.3, .4, skip_res1, back_layers.0. The first block gets
# no input gradient, as in training.
PROFILE_BLOCKS = (
    ("front_layers.0", "Basic k7 1->16", 1, 1, 1),
    ("front_layers.1", "Pool", 16, 1, 1),
    ("front_layers.2", "Res 16->32", 16, 2, 1),
    ("front_layers.3", "Res 32", 32, 2, 4),
    ("encoder_decoder.encoder_pool1", "Pool", 32, 2, 1),
    ("encoder_decoder.encoder_res1", "Res 32->64", 32, 4, 1),
    ("encoder_decoder.skip_res2", "Res 64", 64, 4, 2),
    ("encoder_decoder.encoder_pool2", "Pool", 64, 4, 1),
    ("encoder_decoder.encoder_res2", "Res 64->128", 64, 8, 1),
    ("encoder_decoder.mid_res", "Res 128", 128, 8, 2),
    ("encoder_decoder.decoder_upsample2", "Up (ConvTranspose k2 s2) 128->64", 128, 8, 1),
    ("encoder_decoder.decoder_upsample1", "Up (ConvTranspose k2 s2) 64->32", 64, 4, 1),
    ("back_layers.1", "Basic k1 32", 32, 2, 2),
    ("output_layer", "Conv k1 32->J", 32, 2, 1),
)


def measure(grid, batch, dtype, args, device) -> dict:
    jmodel, tmodel = model_pair(args.conv, dtype, device, channels_last=args.channels_last)
    voxels, coords = inputs(batch, grid)
    jax_call, compiled = jax_train_step(jmodel, voxels, coords)
    tvox = to_torch(voxels, device, args.channels_last)
    theat = to_torch(target_heatmaps(coords, grid), device)
    torch_call = torch_train_step(tmodel, tvox, theat, dtype)
    record = {}
    with torch_peak_memory(record, "torch_peak_bytes"):
        times = interleaved({"jax": jax_call, "torch": torch_call}, args.rounds, args.repeats)
    flops = train_step_flops(grid, batch)
    peak = peak_tflops(dtype, args.peak_tflops) * 1e12
    return {
        "grid": grid, "batch": batch, "dtype": dtype, "times": times,
        "jax_over_torch_time": ratio(times, "jax", "torch"),
        "jax_samples_per_s": batch / times["jax"]["wall_s"], "torch_samples_per_s": batch / times["torch"]["wall_s"],
        "step_gflop": flops / 1e9, "peak_tflops": peak / 1e12,
        "jax_fraction_of_peak": flops / times["jax"]["wall_s"] / peak,
        "torch_fraction_of_peak": flops / times["torch"]["wall_s"] / peak,
        "jax_step_bytes": jax_step_bytes(compiled), "jax_peak_bytes_in_use": jax_peak_bytes(), **record,
    }


def submodule(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def block_calls(jblock, tblock, x: np.ndarray, device, input_grad: bool = True):
    """Forward + backward (parameter gradients, and the input's unless the input is the data) of one block in
    train mode, in both frameworks."""
    jblock.train()
    graphdef, params, rest = nnx.split(jblock, nnx.Param, ...)

    def loss(params, x, cot):
        y = nnx.merge(graphdef, params, rest, copy=True)(x)
        return jnp.vdot(y.astype(jnp.float32), cot)

    xj = jnp.asarray(x)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(jax.eval_shape(
        lambda p, v: nnx.merge(graphdef, p, rest, copy=True)(v), params, xj).shape), jnp.float32)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 0))
    xt = to_torch(x, device).requires_grad_(input_grad)
    ct = to_torch(np.asarray(cot), device)
    tblock.train()

    def torch_call():
        tblock.zero_grad(set_to_none=True)
        xt.grad = None
        tblock(xt).backward(ct)
        return xt.grad

    return (lambda: grad(params, xj, cot)), torch_call


def loss_calls(grid, batch, device):
    """MSE over (N/2)^3 x J heatmaps and its gradient: JAX builds the targets on the device, torch gets them."""
    m = grid // 2
    pred = np.random.default_rng(2).random((batch, m, m, m, JOINTS), np.float32)
    _, coords = inputs(batch, grid)
    grad = jax.jit(jax.value_and_grad(geometry.heatmap_mse))
    pj, cj = jnp.asarray(pred), jnp.asarray(coords)
    pt = to_torch(pred, device).requires_grad_(True)
    ht = to_torch(target_heatmaps(coords, grid), device)

    def torch_call():
        pt.grad = None
        torch.nn.functional.mse_loss(pt, ht).backward()
        return pt.grad

    return (lambda: grad(pj, cj)), torch_call


def profile(grid, batch, args, device, step_row) -> str:
    """jax.profiler trace of three steps, then each block's forward + backward timed in both frameworks."""
    voxels, coords = inputs(batch, grid)
    jax_call, _ = jax_train_step(model_pair(args.conv, "float32", device)[0], voxels, coords)  # donates its arrays
    sync(jax_call())
    with jax.profiler.trace(str(args.profile)):
        for _ in range(3):
            sync(jax_call())
    jmodel, tmodel = model_pair(args.conv, "float32", device)
    rng = np.random.default_rng(3)
    rows, total = [], {"jax": 0.0, "torch": 0.0}
    entries = [(p, what, cin, div, count) for p, what, cin, div, count in PROFILE_BLOCKS]
    entries.append(("loss", f"MSE over {grid // 2}^3 x {JOINTS} heatmaps", JOINTS, 2, 1))
    for path, what, cin, div, count in entries:
        n = grid // div
        if path == "loss":
            calls = loss_calls(grid, batch, device)
        else:
            x = rng.random((batch, n, n, n, cin), np.float32)
            calls = block_calls(submodule(jmodel, path), tmodel.get_submodule(path), x, device,
                                input_grad=path != "front_layers.0")
        t = interleaved(dict(zip(("jax", "torch"), calls)), args.rounds, args.repeats)
        for k in total:
            total[k] += count * t[k]["wall_s"]
        rows.append([path, what, f"{n}^3", count, 1e3 * t["jax"]["wall_s"], 1e3 * t["torch"]["wall_s"],
                     ratio(t, "jax", "torch"), count * t["jax"]["wall_s"] / step_row["times"]["jax"]["wall_s"]])
    rows.append(["sum (x count)", "", "", "", 1e3 * total["jax"], 1e3 * total["torch"], total["jax"] / total["torch"],
                 total["jax"] / step_row["times"]["jax"]["wall_s"]])
    rows.append(["whole step", "", "", "", 1e3 * step_row["times"]["jax"]["wall_s"],
                 1e3 * step_row["times"]["torch"]["wall_s"], step_row["jax_over_torch_time"], 1.0])
    return markdown_table(["block", "what", "input grid", "count", "JAX fwd+bwd ms", "torch fwd+bwd ms",
                           "JAX / torch", "JAX share of step (x count)"], rows)


def main(argv=None):
    p = base_parser(__doc__)
    p.add_argument("--grids", type=int, nargs="+", default=[32, 88])
    p.add_argument("--batches", type=int, nargs="+", help="one per grid (default CPU: 4 at 32^3, 1 at 88^3; GPU 8)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="bfloat16 runs on GPU only")
    p.add_argument("--peak-tflops", type=float, help="device peak (default H100 SXM dense by dtype; CPU: measured)")
    p.add_argument("--profile", type=Path,
                   help="directory for a jax.profiler trace and the per-block table (float32, the last grid)")
    args = parse(p, argv)
    device = setup_torch()
    batches = args.batches or [8 if device.type == "cuda" else (4 if g <= 32 else 1) for g in args.grids]
    if len(batches) != len(args.grids):
        raise SystemExit(f"--batches needs one value per grid ({len(args.grids)}), got {len(batches)}")
    env = header(args)
    rows = [measure(g, b, d, args, device) for g, b in zip(args.grids, batches) for d in check_dtypes(args.dtypes)]
    table = markdown_table(
        ["grid", "batch", "dtype", "JAX s/step", "torch s/step", "JAX / torch time", "JAX samples/s",
         "torch samples/s", "JAX CPU s", "torch CPU s", "GFLOP/step", "peak TFLOP/s", "JAX % of peak",
         "torch % of peak",
         "JAX step MiB (XLA plan)", "JAX peak MiB (process so far)", "torch peak MiB"],
        [[f"{r['grid']}^3", r["batch"], r["dtype"], r["times"]["jax"]["wall_s"], r["times"]["torch"]["wall_s"],
          r["jax_over_torch_time"], r["jax_samples_per_s"], r["torch_samples_per_s"], r["times"]["jax"]["cpu_s"],
          r["times"]["torch"]["cpu_s"], r["step_gflop"], r["peak_tflops"], 100 * r["jax_fraction_of_peak"],
          100 * r["torch_fraction_of_peak"], _mib(r["jax_step_bytes"]), _mib(r["jax_peak_bytes_in_use"]),
          _mib(r["torch_peak_bytes"])]
         for r in rows])
    peak_note = ("peak: a 2048^3 float32 GEMM under XLA, measured beside each row" if device.type == "cpu"
                 else "peak: --peak-tflops or H100 SXM dense (TF32 494, bfloat16 989 TFLOP/s)")
    markdown = f"Training step. {describe(env)}; {peak_note}.\n\n{table}"
    result = {"environment": env, "rows": rows}
    if args.profile is not None:
        i = max(range(len(rows)), key=lambda j: (rows[j]["grid"], rows[j]["dtype"] == "float32"))
        per_block = profile(rows[i]["grid"], rows[i]["batch"], args, device, rows[i])
        markdown += (f"\n\nPer block, float32, {rows[i]['grid']}^3 batch {rows[i]['batch']} (trace in "
                     f"{args.profile.name}/):\n\n{per_block}")
        result["per_block_markdown"] = per_block
    write_result(args.out, "train_step", result, markdown)


def _mib(n):
    return None if n is None else n / 2 ** 20


if __name__ == "__main__":
    main()
