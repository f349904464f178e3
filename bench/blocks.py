"""Per-block profile of the training step: each V2V block's forward + backward timed alone in JAX (every requested
formulation of the blocks it changes) and PyTorch, with FLOPs, device-memory bytes and the roofline bound.

    python bench/blocks.py                                        # CPU: 32^3 batch 4, float32
    python bench/blocks.py --grid 88 --batch 8 --dtypes float32 bfloat16 --conv xla folded_stem im2col_stem \
        --upsample einsum conv_transpose pad_conv depth_to_space phases --out DIR              # GPU

Per block: forward in train mode, then the gradients of its parameters and (except for the first block, whose
input is the data) of its input, as in training. Columns: measured ms of each JAX formulation and of torch;
FLOPs and bytes by bench/roofline.py's model, and XLA's own count of the compiled JAX block (`cost_analysis`:
FLOPs and bytes accessed after fusion); the roofline bound on the device (data-sheet peaks; on CPU no bound) and
the fraction of it each framework reaches. Rows are written as they are measured; no new block starts after
--budget-s.
"""

from __future__ import annotations

import common  # noqa: F401, I001  (first: it configures torch's OpenMP threads before torch loads)
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import roofline
from common import (JOINTS, autocast, base_parser, describe, header, inputs, interleaved, markdown_table,
                    model_pair, on_gpu, parse, ratio, setup_torch, target_heatmaps, to_torch,
                    torch_model, write_result)
from v2v_jax import geometry
from v2v_jax.formulations import CONV_IMPLS, STEM_IMPLS, UPSAMPLE_IMPLS
from v2v_torch_ref.backends import torch_switches


def submodule(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def jax_block_call(jblock, x: np.ndarray, input_grad: bool):
    """Compiled forward + backward of one JAX block in train mode, and XLA's cost analysis of it."""
    jblock.train()
    graphdef, params, rest = nnx.split(jblock, nnx.Param, ...)

    def loss(params, x, cot):
        y = nnx.merge(graphdef, params, rest, copy=True)(x)
        return jnp.vdot(y.astype(jnp.float32), cot)

    xj = jnp.asarray(x)
    shape = jax.eval_shape(lambda p, v: nnx.merge(graphdef, p, rest, copy=True)(v), params, xj).shape
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 0)).lower(params, xj, cot).compile()
    return (lambda: compiled(params, xj, cot)), cost(compiled)


def torch_block_call(tblock, x: np.ndarray, device, dtype: str, channels_last: bool, input_grad: bool):
    xt = to_torch(x, device, channels_last).requires_grad_(input_grad)
    tblock.train()
    cot = None

    def call():
        nonlocal cot
        tblock.zero_grad(set_to_none=True)
        xt.grad = None
        with autocast(dtype, device):
            y = tblock(xt)
        if cot is None:
            cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, y.dtype)
            cot = cot.contiguous(memory_format=torch.channels_last_3d) if channels_last else cot
        y.backward(cot)
        return xt.grad

    return call


def loss_calls(grid, batch, device):
    """MSE over (N/2)^3 x J heatmaps and its gradient: JAX builds the targets on the device, torch gets them."""
    m = grid // 2
    pred = np.random.default_rng(2).random((batch, m, m, m, JOINTS), np.float32)
    _, coords = inputs(batch, grid)
    pj, cj = jnp.asarray(pred), jnp.asarray(coords)
    compiled = jax.jit(jax.value_and_grad(geometry.heatmap_mse)).lower(pj, cj).compile()
    pt = to_torch(pred, device).requires_grad_(True)
    ht = to_torch(target_heatmaps(coords, grid), device)

    def torch_call():
        pt.grad = None
        torch.nn.functional.mse_loss(pt, ht).backward()
        return pt.grad

    return (lambda: compiled(pj, cj)), cost(compiled), torch_call


def cost(compiled) -> dict:
    """XLA's FLOPs and bytes accessed of a compiled program (None where the backend gives none)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return {"flops": None, "bytes": None}
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": analysis.get("flops"), "bytes": analysis.get("bytes accessed")}


def block_variants(block: roofline.Block, args) -> list[tuple[str, str]]:
    """(conv, upsample) formulations to time for this block: every requested one where the block has it."""
    if block.kind in ("basic", "res", "conv") and block.kernel > 1:
        # the stem hybrids are XLA's convolution on every block but the one-channel stem: timed there only
        convs = [c for c in args.conv if block.cin == 1 or c not in STEM_IMPLS]
        return [(c, args.upsample[0]) for c in convs]
    if block.kind == "up":
        return [(args.conv[0], u) for u in args.upsample]
    return [(args.conv[0], args.upsample[0])]


def measure_block(block, dtype, tf32, models, tmodel, args, device, rng) -> dict:
    n = args.grid // block.div
    input_grad = block.path != "front_layers.0"
    calls, costs = {}, {}
    if block.kind == "loss":
        calls["jax"], costs["jax"], calls["torch"] = loss_calls(args.grid, args.batch, device)
    else:
        x = rng.random((args.batch, n, n, n, block.cin), np.float32)
        for conv, upsample in block_variants(block, args):
            name = f"jax {conv}/{upsample}"
            jblock = submodule(models(conv, upsample), block.path)
            calls[name], costs[name] = jax_block_call(jblock, x, input_grad)
        calls["torch"] = torch_block_call(tmodel.get_submodule(block.path), x, device, dtype, args.torch == "best",
                                          input_grad)
    with torch_switches(benchmark=args.torch == "best", tf32=tf32):
        times = interleaved(calls, args.rounds, args.repeats)
    flops = args.batch * roofline.train_flops(block, args.grid)
    nbytes = args.batch * roofline.train_bytes(block, args.grid, dtype)
    row = {"path": block.path, "what": block.what, "grid": n, "count": block.count, "dtype": dtype, "tf32": tf32,
           "times": times, "xla_cost": costs, "model_gflop": flops / 1e9, "model_mbytes": nbytes / 1e6,
           "jax_over_torch": {k: ratio(times, k, "torch") for k in calls if k != "torch"}}
    device_key = roofline.device_for(jax.devices()[0].device_kind) if on_gpu() else None
    if device_key:
        dev = roofline.DEVICES[device_key]
        t_compute = flops / (dev.tflops[roofline.compute_mode(dtype, tf32)] * 1e12)
        t_memory = nbytes / (dev.tb_per_s * 1e12)
        row.update(bound_ms=1e3 * max(t_compute, t_memory), bound="compute" if t_compute > t_memory else "memory",
                   fraction_of_bound={k: max(t_compute, t_memory) / t["wall_s"] for k, t in times.items()})
    return row


def to_markdown(rows, env, args) -> str:
    lines = []
    for r in rows:
        for name in [k for k in r["times"] if k != "torch"]:
            xla = r["xla_cost"][name]
            lines.append([r["path"], r["what"], f"{r['grid']}^3", r["count"], r["dtype"], name.removeprefix("jax "),
                          1e3 * r["times"][name]["wall_s"], 1e3 * r["times"]["torch"]["wall_s"],
                          r["jax_over_torch"][name], r["model_gflop"], r["model_mbytes"],
                          None if xla["flops"] is None else xla["flops"] / 1e9,
                          None if xla["bytes"] is None else xla["bytes"] / 1e6, r.get("bound_ms"), r.get("bound"),
                          _pct(r, name), _pct(r, "torch")])
    table = markdown_table(
        ["block", "what", "input grid", "count", "dtype", "JAX conv/upsample", "JAX ms", "torch ms", "JAX / torch",
         "GFLOP (model)", "MB (model)", "GFLOP (XLA)", "MB accessed (XLA)", "bound ms", "bound", "JAX % of bound",
         "torch % of bound"], lines)
    sums = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = [r for r in rows if r["dtype"] == dtype]
        best = sum(r["count"] * min(t["wall_s"] for k, t in r["times"].items() if k != "torch") for r in mine)
        theirs = sum(r["count"] * r["times"]["torch"]["wall_s"] for r in mine)
        bound = sum(r["count"] * r["bound_ms"] for r in mine) if all("bound_ms" in r for r in mine) else None
        sums.append(f"- {dtype}, sum over the {len(mine)} blocks measured (x count): JAX with the fastest "
                    f"formulation of each {1e3 * best:.3g} ms, torch {1e3 * theirs:.3g} ms"
                    + (f", roofline bound {bound:.3g} ms" if bound is not None else ""))
    return (f"Per block, forward + backward, {args.grid}^3 batch {args.batch}, torch {args.torch} "
            f"configuration. {describe(env)}.\n\n{table}\n\n" + "\n".join(sums) + "\n")


def _pct(row, name):
    f = row.get("fraction_of_bound")
    return None if f is None else 100 * f[name]


def main(argv=None):
    p = base_parser(__doc__, conv_option=False, layout_option=False)
    p.add_argument("--grid", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    p.add_argument("--tf32", choices=("on", "off"), default="on", help="float32: TF32 (JAX precision default) or not")
    p.add_argument("--conv", nargs="+", default=["auto"], choices=("auto",) + CONV_IMPLS,
                   help="JAX convolution formulations timed on each convolution block")
    p.add_argument("--upsample", nargs="+", default=["einsum"], choices=UPSAMPLE_IMPLS,
                   help="JAX ConvTranspose3d formulations timed on the two upsampling blocks")
    p.add_argument("--torch", choices=("plain", "best"), default="best",
                   help="plain: contiguous, cudnn.benchmark off; best: channels_last_3d, cudnn.benchmark on")
    p.add_argument("--budget-s", type=float, help="start no new block after this many seconds")
    args = parse(p, argv)
    if args.grid % 8:
        p.error(f"--grid {args.grid}: must be a multiple of 8 (the network halves the grid three times)")
    device = setup_torch()
    env = header(args)
    tf32, start, rows, skipped = args.tf32 == "on", time.perf_counter(), [], []
    for dtype in args.dtypes:
        cache = {}

        def models(conv, upsample, dtype=dtype, cache=cache):
            if (conv, upsample) not in cache:
                cache[conv, upsample] = model_pair(conv, dtype, torch.device("cpu"), upsample=upsample,
                                                   precision="default" if tf32 else "highest", width=args.width)[0]
            return cache[conv, upsample]

        tmodel = torch_model(device, channels_last=args.torch == "best", width=args.width)
        rng = np.random.default_rng(3)
        for block in roofline.blocks(args.width):
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                skipped.append(f"{block.path} ({dtype}): time budget spent")
                continue
            rows.append(measure_block(block, dtype, tf32, models, tmodel, args, device, rng))
            print(f"[{time.perf_counter() - start:.0f} s] {block.path} {dtype}: {rows[-1]['jax_over_torch']}",
                  flush=True)
            text = to_markdown(rows, env, args) + "".join(f"\n- skipped: {s}" for s in skipped)
            write_result(args.out, "blocks", {"environment": env, "rows": rows, "skipped": skipped}, text,
                         echo=False)
    text = to_markdown(rows, env, args) + "".join(f"\n- skipped: {s}" for s in skipped)
    write_result(args.out, "blocks", {"environment": env, "rows": rows, "skipped": skipped}, text)


if __name__ == "__main__":
    main()
