"""One 3D convolution, forward + backward, per JAX formulation (v2v_jax.formulations.CONV_IMPLS) against torch.conv3d.

    python bench/conv.py                                  # V2V's convolution shapes at 88^3, batch 1, float32
    python bench/conv.py --cores 1 --impls xla depth_folded --out DIR
    python bench/conv.py --dtypes float32 bfloat16 --out DIR       # GPU, unchanged

Backward = gradients of the kernel and, except for the first layer (its input is the data), of the input, as in
training. Formulations and torch are interleaved round by round; the ratio is JAX time / torch time per round.
"""

from __future__ import annotations

import common  # noqa: F401, I001  (first: it configures torch's OpenMP threads before torch loads)
import jax
import jax.numpy as jnp
import numpy as np
import torch

from common import (base_parser, check_dtypes, describe, header, interleaved, jax_step_bytes, markdown_table, parse,
                    ratio, setup_torch, to_torch, write_result)
from v2v_jax.formulations import CONV_IMPLS, conv3d

# V2V's convolutions (v2v_torch_ref/model.py): (where, in channels, out channels, kernel, grid divisor, input
# gradient needed).
SHAPES = (
    ("front_layers.0 (stem)", 1, 16, 7, 1, False),
    ("front_layers.2 conv 1", 16, 32, 3, 2, True),
    ("Res 32 conv (x9)", 32, 32, 3, 2, True),
    ("Res 64 conv (x5)", 64, 64, 3, 4, True),
    ("Res 128 conv (x5)", 128, 128, 3, 8, True),
    ("Basic k1 32 (x2)", 32, 32, 1, 2, True),
)


def jax_call(impl, x, kernel, cotangent, padding, input_grad):
    def loss(x, kernel):
        return jnp.vdot(conv3d(x, kernel, padding, impl).astype(jnp.float32), cotangent)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 1)).lower(x, kernel).compile()
    return (lambda: compiled(x, kernel)), compiled


def torch_call(x, kernel, cotangent, padding, input_grad, dtype, device, channels_last):
    xt = to_torch(x, device, channels_last).to(getattr(torch, dtype)).requires_grad_(input_grad)
    wt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))).to(device, getattr(torch, dtype))
    wt.requires_grad_(True)
    ct = to_torch(cotangent, device, channels_last).to(getattr(torch, dtype))

    def call():
        xt.grad, wt.grad = None, None
        torch.nn.functional.conv3d(xt, wt, padding=padding).backward(ct)
        return wt.grad

    return call


def measure(shape, grid, batch, dtype, impls, args, device) -> dict:
    where, cin, cout, k, div, input_grad = shape
    n, padding = grid // div, (k - 1) // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, n, n, n, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, k, cin, cout)) * 0.05).astype(np.float32)
    cotangent = rng.standard_normal((batch, n, n, n, cout)).astype(np.float32)
    jdtype = jnp.dtype(dtype)
    calls, memory = {}, {}
    for impl in impls:
        calls[impl], compiled = jax_call(impl, jnp.asarray(x, jdtype), jnp.asarray(kernel, jdtype),
                                         jnp.asarray(cotangent), padding, input_grad)
        memory[impl] = jax_step_bytes(compiled)
    calls["torch"] = torch_call(x, kernel, cotangent, padding, input_grad, dtype, device, args.channels_last)
    times = interleaved(calls, args.rounds, args.repeats)
    return {"where": where, "cin": cin, "cout": cout, "kernel": k, "grid": n, "batch": batch, "dtype": dtype,
            "gflop": 2 * 3 * batch * n ** 3 * k ** 3 * cin * cout / 1e9 * (1 if input_grad else 2 / 3),
            "times": times, "jax_bytes": memory,
            "jax_over_torch": {impl: ratio(times, impl, "torch") for impl in impls}}


def main(argv=None):
    p = base_parser(__doc__, conv_option=False)
    p.add_argument("--grid", type=int, default=88)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--impls", nargs="+", default=[i for i in CONV_IMPLS if i != "shifted_matmul"],
                   choices=CONV_IMPLS, help="shifted_matmul compiles 343 products for the 7^3 stem (slow)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], help="bfloat16 runs on GPU only")
    args = parse(p, argv)
    device = setup_torch()
    env = header(args)
    rows = [measure(s, args.grid, args.batch, d, args.impls, args, device) for d in check_dtypes(args.dtypes)
            for s in SHAPES]
    columns = (["convolution", "in->out, k", "grid", "dtype", "GFLOP", "torch ms"]
               + [f"{i} ms" for i in args.impls] + [f"{i} / torch" for i in args.impls])
    table = markdown_table(columns, [
        [r["where"], f"{r['cin']}->{r['cout']}, {r['kernel']}^3", f"{r['grid']}^3", r["dtype"], r["gflop"],
         1e3 * r["times"]["torch"]["wall_s"]] + [1e3 * r["times"][i]["wall_s"] for i in args.impls]
        + [r["jax_over_torch"][i] for i in args.impls] for r in rows])
    markdown = f"One convolution, forward + backward, batch {args.batch}. {describe(env)}.\n\n{table}"
    write_result(args.out, "conv", {"environment": env, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
