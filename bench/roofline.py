"""FLOPs, HBM bytes and the roofline bound of each V2V block's forward + backward, counted from the shapes.

    python bench/roofline.py                                   # 88^3 batch 8, float32 and bfloat16, H100 and H200
    python bench/roofline.py --grid 88 --batch 8 --devices h100-sxm --dtypes float32 --out DIR

FLOPs: 2 per multiply-accumulate of the convolutions (BatchNorm, ReLU, pooling and the loss are counted as 0);
backward = input gradient + kernel gradient = 2x the forward, except for the first convolution, whose input is the
data (1x). Bytes: what a well-fused implementation must move through device memory, under this model: each
convolution reads its input and writes its output once; BatchNorm reads its input once for the statistics and once
more to normalise, with ReLU and the residual add fused into that pass; the backward of BatchNorm + ReLU reads the
output gradient and the BN input twice (reductions, then the elementwise pass) and writes the input gradient; each
convolution's input gradient reads the output gradient and writes its own, its kernel gradient reads the input and
the output gradient; parameters are read twice and their gradient written once. Anything a real program moves
beyond that (layout copies, unfused elementwise passes, padding) is what the measured time shows above the bound.
Bound = max(FLOPs / compute peak, bytes / memory bandwidth): a block whose FLOPs/byte is below the ridge point
(peak / bandwidth) is memory-bound.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

from tables import markdown_table

JOINTS = 21
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


class Device(NamedTuple):
    name: str
    tflops: dict          # dense peak by compute mode: tf32 / bfloat16 tensor cores, float32 CUDA cores
    tb_per_s: float       # HBM bandwidth
    source: str


# Dense (no sparsity) peaks from NVIDIA's data sheets: H100 Tensor Core GPU data sheet (SXM5: TF32 989 and BF16
# 1,979 TFLOP/s with sparsity, i.e. 494.5 and 989.5 dense, FP32 66.9, HBM3 3.35 TB/s; PCIe: TF32 756 / BF16 1,513
# sparse, FP32 51.2, HBM2e 2.0 TB/s) and H200 data sheet (SXM: the H100 SXM's compute, HBM3e 4.8 TB/s).
DEVICES = {
    "h100-sxm": Device("NVIDIA H100 SXM5 80 GB", {"tf32": 494.5, "bfloat16": 989.5, "float32": 66.9}, 3.35,
                       "NVIDIA H100 Tensor Core GPU data sheet"),
    "h100-pcie": Device("NVIDIA H100 PCIe 80 GB", {"tf32": 378.0, "bfloat16": 756.5, "float32": 51.2}, 2.0,
                        "NVIDIA H100 Tensor Core GPU data sheet"),
    "h200": Device("NVIDIA H200 SXM 141 GB", {"tf32": 494.5, "bfloat16": 989.5, "float32": 66.9}, 4.8,
                   "NVIDIA H200 Tensor Core GPU data sheet"),
}


def device_for(kind: str) -> str | None:
    """The DEVICES key of a JAX device_kind / torch device name, or None for other devices."""
    kind = kind.upper()
    if "H200" in kind:
        return "h200"
    if "H100" in kind:
        return "h100-pcie" if "PCIE" in kind else "h100-sxm"
    return None


def compute_mode(dtype: str, tf32: bool) -> str:
    return "bfloat16" if dtype == "bfloat16" else ("tf32" if tf32 else "float32")


class Block(NamedTuple):
    path: str             # first instance in the model (torch and JAX share the paths)
    what: str
    kind: str             # basic | res | pool | up | conv | loss
    cin: int
    cout: int
    kernel: int
    div: int              # input grid = N / div
    count: int            # blocks of this shape in V2V


def blocks(width: int = 32, joints: int = JOINTS) -> tuple[Block, ...]:
    """V2V's blocks (v2v_jax/model.py), one entry per distinct shape with how many there are. Res w1 at N/2:
    front_layers.3, .4, skip_res1, back_layers.0; Res w2 at N/4: skip_res2, decoder_res1; Res w4 at N/8: mid_res,
    decoder_res2; Basic k1: back_layers.1, .2."""
    w0, w1, w2, w4 = width // 2, width, 2 * width, 4 * width
    return (
        Block("front_layers.0", f"Basic k7 1->{w0}", "basic", 1, w0, 7, 1, 1),
        Block("front_layers.1", "Pool", "pool", w0, w0, 2, 1, 1),
        Block("front_layers.2", f"Res {w0}->{w1}", "res", w0, w1, 3, 2, 1),
        Block("front_layers.3", f"Res {w1}", "res", w1, w1, 3, 2, 4),
        Block("encoder_decoder.encoder_pool1", "Pool", "pool", w1, w1, 2, 2, 1),
        Block("encoder_decoder.encoder_res1", f"Res {w1}->{w2}", "res", w1, w2, 3, 4, 1),
        Block("encoder_decoder.skip_res2", f"Res {w2}", "res", w2, w2, 3, 4, 2),
        Block("encoder_decoder.encoder_pool2", "Pool", "pool", w2, w2, 2, 4, 1),
        Block("encoder_decoder.encoder_res2", f"Res {w2}->{w4}", "res", w2, w4, 3, 8, 1),
        Block("encoder_decoder.mid_res", f"Res {w4}", "res", w4, w4, 3, 8, 2),
        Block("encoder_decoder.decoder_upsample2", f"Up (ConvTranspose k2 s2) {w4}->{w2}", "up", w4, w2, 2, 8, 1),
        Block("encoder_decoder.decoder_upsample1", f"Up (ConvTranspose k2 s2) {w2}->{w1}", "up", w2, w1, 2, 4, 1),
        Block("back_layers.1", f"Basic k1 {w1}", "basic", w1, w1, 1, 2, 2),
        Block("output_layer", f"Conv k1 {w1}->J", "conv", w1, joints, 1, 2, 1),
        Block("loss", f"MSE over (N/2)^3 x {joints} heatmaps", "loss", joints, joints, 1, 2, 1),
    )


def _conv_macs(cin, cout, k, n):
    return n ** 3 * k ** 3 * cin * cout


def forward_macs(block: Block, grid: int) -> int:
    """Multiply-accumulates of one forward pass of the block, per sample."""
    n, b = grid // block.div, block
    if b.kind in ("basic", "conv"):
        return _conv_macs(b.cin, b.cout, b.kernel, n)
    if b.kind == "res":
        skip = _conv_macs(b.cin, b.cout, 1, n) if b.cin != b.cout else 0
        return _conv_macs(b.cin, b.cout, 3, n) + _conv_macs(b.cout, b.cout, 3, n) + skip
    if b.kind == "up":
        return n ** 3 * 8 * b.cin * b.cout
    return 0


def model_forward_macs(grid: int, width: int = 32, joints: int = JOINTS) -> int:
    """Multiply-accumulates of one V2V forward pass per sample (36.40 G at 88^3, width 32, J = 21)."""
    return sum(b.count * forward_macs(b, grid) for b in blocks(width, joints))


def train_flops(block: Block, grid: int) -> int:
    """FLOPs of forward + backward per sample: 3x the forward (2x for the first layer: no input gradient)."""
    return 2 * forward_macs(block, grid) * (2 if block.path == "front_layers.0" else 3)


def _conv_bn_elements(a: int, b: int, input_grad: bool = True) -> int:
    """Tensor elements moved by conv -> BN (-> ReLU), forward + backward, for a conv input of a elements and an
    output of b elements."""
    forward = a + b + 2 * b + b                       # conv in/out; BN statistics read, normalise read + write
    backward = 2 * b + 3 * b + (a + b) * input_grad + (a + b)  # BN reductions; dY pass; input grad; kernel grad
    return forward + backward


def train_bytes(block: Block, grid: int, dtype: str) -> int:
    """Device-memory bytes of forward + backward per sample under the model in this module's docstring."""
    s, n, b = DTYPE_BYTES[dtype], grid // block.div, block
    k3 = b.kernel ** 3
    params = 4 * 3  # float32 parameters: read twice, gradient written
    if b.kind == "basic":
        elements = _conv_bn_elements(n ** 3 * b.cin, n ** 3 * b.cout, input_grad=b.path != "front_layers.0")
        weights = k3 * b.cin * b.cout
    elif b.kind == "conv":
        a, y = n ** 3 * b.cin, n ** 3 * b.cout
        elements, weights = (a + y) + (y + a) + (a + y), b.cin * b.cout
    elif b.kind == "res":
        a, y = n ** 3 * b.cin, n ** 3 * b.cout
        elements = _conv_bn_elements(a, y) + _conv_bn_elements(y, y)
        weights = 27 * b.cin * b.cout + 27 * b.cout * b.cout
        if b.cin != b.cout:
            elements += _conv_bn_elements(a, y)
            weights += b.cin * b.cout
        elements += 2 * y  # the residual sum + ReLU: written, and its gradient mask read
    elif b.kind == "up":
        elements = _conv_bn_elements(n ** 3 * b.cin, (2 * n) ** 3 * b.cout)
        weights = 8 * b.cin * b.cout
    elif b.kind == "pool":
        a = n ** 3 * b.cin
        elements, weights = a + a // 8 + (a // 8 + a + a // 8 + a), 0
    else:  # loss: read the prediction, write its gradient (the targets are built in registers)
        elements, weights = 2 * n ** 3 * b.cin, 0
    return elements * s + weights * params


def roofline_rows(grid: int, batch: int, dtype: str, device: str, tf32: bool = True, width: int = 32) -> list[dict]:
    """One row per block shape: FLOPs, bytes, intensity, the roofline time and which bound it is, per block."""
    dev = DEVICES[device]
    peak = dev.tflops[compute_mode(dtype, tf32)] * 1e12
    bandwidth = dev.tb_per_s * 1e12
    rows = []
    for b in blocks(width):
        flops, nbytes = batch * train_flops(b, grid), batch * train_bytes(b, grid, dtype)
        t_compute, t_memory = flops / peak, nbytes / bandwidth
        rows.append({"path": b.path, "what": b.what, "grid": grid // b.div, "count": b.count, "gflop": flops / 1e9,
                     "mbytes": nbytes / 1e6, "flop_per_byte": flops / nbytes if nbytes else None,
                     "bound_ms": 1e3 * max(t_compute, t_memory),
                     "bound": "compute" if t_compute > t_memory else "memory"})
    return rows


def ridge(device: str, dtype: str, tf32: bool = True) -> float:
    dev = DEVICES[device]
    return dev.tflops[compute_mode(dtype, tf32)] / dev.tb_per_s


def markdown(rows: list[dict], device: str, dtype: str, tf32: bool, grid: int, batch: int) -> str:
    step_ms = sum(r["count"] * r["bound_ms"] for r in rows)
    head = (f"{DEVICES[device].name} ({DEVICES[device].source}), {dtype}"
            f"{' (TF32)' if dtype == 'float32' and tf32 else ''}, {grid}^3 batch {batch}: ridge "
            f"{ridge(device, dtype, tf32):.0f} FLOP/byte; whole step at the bound {step_ms:.2f} ms")
    return head + "\n\n" + markdown_table(
        ["block", "what", "grid", "count", "GFLOP", "MB", "FLOP/byte", "bound ms (each)", "bound"],
        [[r["path"], r["what"], f"{r['grid']}^3", r["count"], r["gflop"], r["mbytes"], r["flop_per_byte"],
          r["bound_ms"], r["bound"]] for r in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=88)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPE_BYTES))
    p.add_argument("--tf32", choices=("on", "off"), default="on", help="float32 on tensor cores (TF32) or not")
    p.add_argument("--devices", nargs="+", default=["h100-sxm", "h200"], choices=sorted(DEVICES))
    p.add_argument("--out", type=Path, help="directory for roofline.json and roofline.md")
    args = p.parse_args(argv)
    tf32 = args.tf32 == "on"
    result, texts = [], []
    for device in args.devices:
        for dtype in args.dtypes:
            rows = roofline_rows(args.grid, args.batch, dtype, device, tf32, args.width)
            result.append({"device": device, "dtype": dtype, "tf32": tf32, "rows": rows})
            texts.append(markdown(rows, device, dtype, tf32, args.grid, args.batch))
    text = "\n\n".join(texts)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "roofline.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
