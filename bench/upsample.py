"""ConvTranspose3d(kernel 2, stride 2) in JAX, every formulation of `v2v_jax.formulations.upsample2x`, torch beside.

    python bench/upsample.py                 # CPU, batch 2
    python bench/upsample.py --batch 8 --out docs/results/upsample_gpu   # on a GPU machine, unchanged
    python bench/upsample.py --grid 16 --batch 1 --rounds 1 --repeats 1   # tiny (the GPU script's dry run)

Times forward + backward (gradients of input and kernel) of each formulation at V2V's two decoder sizes, the
formulations interleaved round by round so that machine noise hits them alike, and prints medians and ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from v2v_jax.dtypes import PRECISIONS
from v2v_jax.formulations import UPSAMPLE_IMPLS, upsample2x
from v2v_torch_ref.model import DTYPES as TORCH_DTYPES

# (name, in channels, out channels, input grid as a fraction of the network's) of V2V's two Upsample3DBlocks
# (v2v_torch_ref/model.py: 128->64 at N/8, 64->32 at N/4).
SIZES = (("decoder_upsample2", 128, 64, 8), ("decoder_upsample1", 64, 32, 4))
DTYPES = ("float32", "bfloat16")


def jax_step(impl: str, precision):
    def loss(x, kernel, cotangent):
        return jnp.vdot(upsample2x(x, kernel, impl, precision).astype(jnp.float32), cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def time_call(fn, sync, repeats: int) -> list[float]:
    sync(fn())  # compile / warm up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        out.append(time.perf_counter() - start)
    return out


def bench_size(cin, cout, grid, batch, dtype, device, repeats, rounds, impls) -> dict[str, float]:
    """Median seconds of one forward + backward per formulation, measured in interleaved rounds."""
    jdtype, tdtype = PRECISIONS[dtype].compute, TORCH_DTYPES[dtype]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, grid, grid, grid, cin)).astype(np.float32)
    kernel = rng.standard_normal((2, 2, 2, cin, cout)).astype(np.float32) * 0.05
    cot = rng.standard_normal((batch, 2 * grid, 2 * grid, 2 * grid, cout)).astype(np.float32)
    precision = jax.lax.Precision.HIGHEST if dtype == "float32" else None
    xj, kj, cj = jnp.asarray(x, jdtype), jnp.asarray(kernel, jdtype), jnp.asarray(cot)
    steps = {impl: jax_step(impl, precision) for impl in impls}
    calls = {f"jax {impl}": (lambda s=s: s(xj, kj, cj), jax.block_until_ready) for impl, s in steps.items()}

    tdev = "cuda" if device == "gpu" else "cpu"
    conv = torch.nn.ConvTranspose3d(cin, cout, 2, stride=2).to(tdev, tdtype)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 4, 0, 1, 2)))
    xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3)).to(tdev, tdtype).requires_grad_(True)
    ct = torch.from_numpy(cot.transpose(0, 4, 1, 2, 3)).to(tdev, tdtype)

    def torch_step():
        xt.grad, conv.weight.grad, conv.bias.grad = None, None, None
        conv(xt).backward(ct)
        return xt.grad

    calls["torch ConvTranspose3d"] = (torch_step, lambda _: torch.cuda.synchronize() if tdev == "cuda" else None)
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, sync) in calls.items():
            times[name] += time_call(fn, sync, repeats)
    return {name: float(np.median(t)) for name, t in times.items()}


def check_agreement(cin, cout, grid, impls) -> dict[str, float]:
    """Max relative difference of each JAX formulation's output from the first's (float32, HIGHEST precision)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, grid, grid, grid, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 2, 2, cin, cout)), jnp.float32)
    base, *others = (upsample2x(x, k, impl, jax.lax.Precision.HIGHEST) for impl in impls)
    return {impl: float(jnp.max(jnp.abs(y - base)) / jnp.max(jnp.abs(base))) for impl, y in zip(impls[1:], others)}


def to_markdown(result: dict) -> str:
    names = list(result["sizes"][0]["seconds"])
    base = f"jax {result['impls'][0]}"
    lines = [f"{result['device']}, {result['dtype']}, batch {result['batch']}, {result['date']}", "",
             "| block (in->out ch, grid) | " + " | ".join(f"{n} (ms)" for n in names)
             + " | " + " | ".join(f"{n} / {base}" for n in names if n != base) + " |",
             "|---" * (2 * len(names)) + "|"]
    for s in result["sizes"]:
        sec = s["seconds"]
        lines.append(f"| {s['name']} ({s['cin']}->{s['cout']}, {s['grid']}^3->{2 * s['grid']}^3) | "
                     + " | ".join(f"{1e3 * sec[n]:.2f}" for n in names) + " | "
                     + " | ".join(f"{sec[n] / sec[base]:.2f}" for n in names if n != base) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grid", type=int, default=88, help="the network's input grid N (V2V: 88)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per formulation per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--impls", nargs="+", choices=UPSAMPLE_IMPLS, default=list(UPSAMPLE_IMPLS),
                   help="formulations to time (the first is the base of the ratios)")
    p.add_argument("--out", type=Path, help="directory for upsample.json and upsample.md")
    args = p.parse_args(argv)
    device = jax.default_backend()
    device = "gpu" if device in ("gpu", "cuda", "rocm") else "cpu"
    result = {"date": str(datetime.date.today()), "batch": args.batch, "dtype": args.dtype,
              "device": (f"{jax.devices()[0].device_kind}" if device == "gpu"
                         else f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"),
              "impls": args.impls, "sizes": []}
    for name, cin, cout, div in SIZES:
        grid = args.grid // div
        seconds = bench_size(cin, cout, grid, args.batch, args.dtype, device, args.repeats, args.rounds, args.impls)
        result["sizes"].append({"name": name, "cin": cin, "cout": cout, "grid": grid, "seconds": seconds,
                                f"max_rel_diff_vs_{args.impls[0]}": check_agreement(cin, cout, grid, args.impls)})
    text = to_markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "upsample.json").write_text(json.dumps(result, indent=2))
        (args.out / "upsample.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
