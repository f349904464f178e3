"""Op-level localisation inside one block: each op of the block run alone, in JAX, in PyTorch and in an
independent NumPy float64 definition, on the float64 truth of its own inputs.

    truth = truth_from_torch(weights, x, target, block)           # or the caller's own float64 truth
    rows = op_errors(block, weights, truth.x, truth.cotangent, "float32", target=target)
    print(format_table(rows))
    found = localise_op(block, weights, truth.x, truth.cotangent, "float32", target=target)
    found.op, found.kind, found.framework, str(found)              # None when every op is within rounding

Call signature (stable): `localise_op(block, weights, x, cotangent, dtype="float32", *, target=None, train=True,
jax_patch=contextlib.nullcontext, torch_patch=contextlib.nullcontext, seed=0, tf32=False, **numerics_fields)`;
`op_errors` takes the same arguments and returns every row.
- block: a leaf block's path as the models label them (`encoder_decoder.encoder_res1`, `front_layers.1`),
  `encoder_decoder` for its own ops, the two skip joins, or `(output)` for the output conv and the loss.
- weights: a torch-keyed state_dict (arrays or tensors) of the whole V2V; each framework builds a whole V2V from it
  (JAX through `v2v_jax.convert`) and takes the block from it, inside `jax_patch()` / `torch_patch()`
  (zero-argument context-manager factories, so a planted bug reaches one framework only, also a bug planted in
  one layer of every V2V built); the NumPy definitions read it directly.
- x, cotangent: the float64 truth of the block's input and of the gradient of the loss with respect to its output
  (torch layout); for `(output)`, x is the input of the output conv, the cotangent is ignored (the loss is the end)
  and `target` is required.
- dtype: "float32", "float64" or "bfloat16", the precision both frameworks compute in (bfloat16: JAX on float32
  parameters, as `v2v_jax.dtypes.PRECISIONS`; PyTorch's block in bfloat16); numerics_fields go to the JAX model's
  `Numerics` (e.g. conv="xla"). tf32: JAX's float32 convolutions at the default precision, TF32 on a GPU (PyTorch's
  ops run on the CPU, in float32); otherwise JAX's run at full precision on any device.

Ops and their kinds: conv, upsample (the transposed conv), BN normalise (forward and backward of the batch
normalisation with its own batch statistics, or with the running ones in eval mode), BN statistics (the running
mean and variance after the update), ReLU, pool, residual add, loss. Each op gets the truth of its inputs cast to
`dtype`, and for its backward the truth cotangent of its output; the truth is carried from op to op by the NumPy
definitions, so a bug planted in either framework (present in its float64 run too) cannot move it. The add and
the final ReLU of a residual block are one function in both frameworks' code (run with the branches replaced by
the truth): its output entries are judged as the add where the truth is positive and as the ReLU where it is not.
The encoder-decoder's skip joins (`x + skip_x2`, `x + skip_x1`, kind residual add) run in each framework's
`EncoderDecoder` code with its sub-blocks replaced; the truth of the sub-block outputs they add, and of the
cotangent of the inner join's output, comes from an unpatched float64 PyTorch encoder-decoder.

The rounding band of one row (see `band`): rounding the op's inputs to the dtype (relative u, its unit roundoff,
`verdict.unit_roundoff`; TF32's for the convolutions under tf32) moves the exact
result by e_in, measured by the NumPy definition on inputs, parameters and cotangent multiplied by
(1 + u N(0, 1)); the op's own reduction of K terms adds the rounding of its partial sums, which blocked and
pairwise summation (BLAS microkernels, both frameworks' reductions) bound by log2(K) u times the sum of the
magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2). So
band = C (1 + log2 K) max(e_in, u) per metric, K the op's reduction length (conv: I k^3 forward, O k^3 input
cotangent, N D H W kernel cotangent; upsample: I, 8 O, N D H W; BN and its statistics: N D H W; the loss: all of
its elements; 1 for ReLU, pool and add), and C = BAND_FACTORS[rounding][kind], per metric, four times the
largest err / ((1 + log2 K) max(e_in, u)) measured on unmodified code (docs/parity.md, "Op-level localisation").
In float32 the measured ratio stays below 1.2 in relative Frobenius norm everywhere; the quantile of a
convolution's parameter cotangents reaches ~8 (a same-signed bias sum, which PyTorch accumulates less accurately
than log2 K predicts).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view

from parity_tests import compare
from parity_tests import verdict as V
from parity_tests.compare import OUTPUT, to_jax_layout, to_torch_layout
from v2v_jax import convert
from v2v_jax import model as jmodel
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.layers import CONV_IMPLS, UPSAMPLE_IMPLS, Numerics
from v2v_torch_ref import model as tmodel

JAX, TORCH = "JAX", "PyTorch"
KINDS = ("conv", "upsample", "BN normalise", "BN statistics", "ReLU", "pool", "residual add", "loss")
# A node's kind (Node.kind) -> the op kind that rows and verdicts name.
KIND_NAMES = {"conv": "conv", "upsample": "upsample", "bn": "BN normalise", "relu": "ReLU", "pool": "pool",
              "residual": "residual add", "join": "residual add", "loss": "loss"}
QUANTILE = 0.999
DTYPES = ("float32", "float64", "bfloat16")
# The ops whose products TF32 rounds (cuDNN convolutions and cuBLAS matmuls on a GPU, float32 in and out).
TF32_KINDS = ("conv", "upsample")
# Four times the largest err / ((1 + log2 K) max(e_in, u)) over every row of unmodified code, rounded up, at least 2
# (docs/parity.md, "Op-level localisation": `python -m parity_tests.ops --calibrate`), per rounding, then per kind
# (relative Frobenius, q99.9). float32: width 32, grid 16 (seeds 0-2, float32; seeds 0-1, float64) and grid 32
# (seed 0, float32); float64 shares them. bfloat16: width 32, grid 16, seeds 0-1. TF32 takes float32's until a GPU
# run measures its own.
BAND_FACTORS = {
    "float32": {"conv": (5.0, 51.0), "upsample": (3.0, 5.0), "BN normalise": (2.0, 4.0),
                "BN statistics": (4.0, 6.0), "ReLU": (2.0, 2.0), "pool": (2.0, 2.0), "residual add": (3.0, 3.0),
                "loss": (3.0, 2.0)},
    "bfloat16": {"conv": (2.0, 2.0), "upsample": (2.0, 2.0), "BN normalise": (2.0, 2.0),
                 "BN statistics": (2.0, 2.0), "ReLU": (2.0, 2.0), "pool": (5.0, 2.0), "residual add": (5.0, 3.0),
                 "loss": (3.0, 3.0)},
}
FACTORS_OF = {"float64": "float32", "tf32": "float32"}  # roundings without factors of their own

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch.nn.BatchNorm3d's defaults, the authors' settings


# ------------------------------------------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class Err:
    """rel_fro: ||a - t|| / ||t||; q999: the 99.9 % quantile of |a - t| over RMS(t) (a high quantile, not the
    maximum, which near-zero entries and single rounding flips dominate)."""

    rel_fro: float
    q999: float

    def __le__(self, other: Err) -> bool:
        return self.rel_fro <= other.rel_fro and self.q999 <= other.q999


def err(a: np.ndarray, t: np.ndarray, mask: np.ndarray | None = None, scale: np.ndarray | None = None) -> Err:
    """Errors of a against t over the entries in `mask`, scaled by the norm of `scale` (default t) everywhere."""
    a, t = np.asarray(a, np.float64).ravel(), np.asarray(t, np.float64).ravel()
    s = t if scale is None else np.asarray(scale, np.float64).ravel()
    diff = np.abs(a - t) if mask is None else np.abs(a - t)[np.asarray(mask).ravel()]
    if not np.all(np.isfinite(diff)):
        return Err(math.inf, math.inf)
    if diff.size == 0 or not diff.any():
        return Err(0.0, 0.0)
    rms = math.sqrt(np.mean(np.square(s)))
    if rms == 0:
        return Err(math.inf, math.inf)
    return Err(math.sqrt(np.sum(np.square(diff)) / s.size) / rms, float(np.quantile(diff, QUANTILE)) / rms)


def growth(k: int) -> float:
    return 1 + math.log2(max(k, 1))


def rounding_unit(e_in: Err, k: int, u: float) -> Err:
    """(1 + log2 K) max(e_in, u) per metric: the band of a row in units of BAND_FACTORS (module docstring)."""
    return Err(growth(k) * max(e_in.rel_fro, u), growth(k) * max(e_in.q999, u))


# --------------------------------------------------------------------------- NumPy float64 definitions (NCDHW)


def np_conv(x, w, b, pad):
    """Conv3d, stride 1: y[n, o] = sum_i x[n, i] (*) w[o, i] + b[o], cross-correlation over windows."""
    k = w.shape[2]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * 3)
    win = sliding_window_view(xp, (k, k, k), axis=(2, 3, 4))
    return np.einsum("nidhwabc,oiabc->nodhw", win, w, optimize=True) + b[None, :, None, None, None]


def np_conv_vjp(x, w, pad, g):
    k = w.shape[2]
    dx = np_conv(g, np.flip(w, (2, 3, 4)).swapaxes(0, 1), np.zeros(w.shape[1]), k - 1 - pad)
    win = sliding_window_view(np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * 3), (k, k, k), axis=(2, 3, 4))
    return dx, {"weight": np.einsum("nidhwabc,nodhw->oiabc", win, g, optimize=True), "bias": g.sum((0, 2, 3, 4))}


def _phases(y):
    """(N, O, 2D, 2H, 2W) -> (N, O, D, 2, H, 2, W, 2)."""
    n, o, d, h, w = y.shape
    return y.reshape(n, o, d // 2, 2, h // 2, 2, w // 2, 2)


def np_upsample(x, w, b):
    """ConvTranspose3d(k=2, s=2): y[n, o, 2d+a, 2h+b, 2w+c] = sum_i x[n, i, d, h, w] w[i, o, a, b, c] + b[o]."""
    n, _, d, h, ww = x.shape
    y = np.einsum("nidhw,ioabc->nodahbwc", x, w, optimize=True).reshape(n, w.shape[1], 2 * d, 2 * h, 2 * ww)
    return y + b[None, :, None, None, None]


def np_upsample_vjp(x, w, g):
    gp = _phases(g)
    return (np.einsum("nodahbwc,ioabc->nidhw", gp, w, optimize=True),
            {"weight": np.einsum("nidhw,nodahbwc->ioabc", x, gp, optimize=True), "bias": g.sum((0, 2, 3, 4))})


AXES = (0, 2, 3, 4)


def _c(v):
    return v[None, :, None, None, None]


def np_bn_moments(x):
    mean = x.mean(AXES)
    return mean, np.square(x - _c(mean)).mean(AXES)


def np_bn(x, gamma, beta, running, train):
    mean, var = np_bn_moments(x) if train else running
    return (x - _c(mean)) / np.sqrt(_c(var) + BN_EPS) * _c(gamma) + _c(beta)


def np_bn_vjp(x, gamma, running, train, g):
    mean, var = np_bn_moments(x) if train else running
    inv = 1 / np.sqrt(var + BN_EPS)
    xhat = (x - _c(mean)) * _c(inv)
    grads = {"weight": (g * xhat).sum(AXES), "bias": g.sum(AXES)}
    if train:
        dx = _c(gamma * inv) * (g - _c(g.mean(AXES)) - xhat * _c((g * xhat).mean(AXES)))
    else:
        dx = g * _c(gamma * inv)
    return dx, grads


def np_bn_running(x, running):
    """The running statistics after one update: momentum 0.1, the unbiased batch variance."""
    mean, var = np_bn_moments(x)
    n = x.size // x.shape[1]
    return ((1 - BN_MOMENTUM) * running[0] + BN_MOMENTUM * mean,
            (1 - BN_MOMENTUM) * running[1] + BN_MOMENTUM * var * n / max(n - 1, 1))


def _pool_windows(x, s):
    n, c, d, h, w = x.shape
    d, h, w = d // s, h // s, w // s
    win = x[:, :, :d * s, :h * s, :w * s].reshape(n, c, d, s, h, s, w, s)
    return win.transpose(0, 1, 2, 4, 6, 3, 5, 7).reshape(n, c, d, h, w, s ** 3)


def np_max_pool(x, s):
    return _pool_windows(x, s).max(-1)


def np_max_pool_vjp(x, s, g):
    """The gradient goes to the first maximum of each window, in depth-height-width order (torch's rule)."""
    win = _pool_windows(x, s)
    onehot = np.arange(s ** 3) == win.argmax(-1)[..., None]
    n, c, d, h, w = g.shape
    part = (onehot * g[..., None]).reshape(n, c, d, h, w, s, s, s).transpose(0, 1, 2, 5, 3, 6, 4, 7)
    dx = np.zeros_like(x)
    dx[:, :, :d * s, :h * s, :w * s] = part.reshape(n, c, d * s, h * s, w * s)
    return dx


# ------------------------------------------------------------------------------------------------- the ops


@dataclasses.dataclass(frozen=True)
class Node:
    """One op of a block: `path` the leaf module's path inside the block (None for the block's own code),
    `inputs` the names of the values it reads ('x' the block's input, else an earlier node's name)."""

    name: str
    kind: str  # conv, upsample, bn, relu, pool, residual, join (the encoder-decoder's skip add), loss
    inputs: tuple[str, ...]
    path: str | None = None


def _res_nodes(conv_skip: bool) -> list[Node]:
    nodes = [Node("res_branch.0", "conv", ("x",), "res_branch.0"),
             Node("res_branch.1", "bn", ("res_branch.0",), "res_branch.1"),
             Node("res_branch.2", "relu", ("res_branch.1",), "res_branch.2"),
             Node("res_branch.3", "conv", ("res_branch.2",), "res_branch.3"),
             Node("res_branch.4", "bn", ("res_branch.3",), "res_branch.4")]
    if conv_skip:
        nodes += [Node("skip_con.0", "conv", ("x",), "skip_con.0"),
                  Node("skip_con.1", "bn", ("skip_con.0",), "skip_con.1")]
    return nodes + [Node("(add, ReLU)", "residual", ("res_branch.4", "skip_con.1" if conv_skip else "x"))]


# The encoder-decoder's own ops: its two skip joins (EncoderDecoder.forward, v2v_torch_ref/model.py), in execution
# order; their inputs are the outputs of its sub-blocks.
JOINS = (Node("(x + skip_x2)", "join", ("decoder_upsample2", "skip_res2")),
         Node("(x + skip_x1)", "join", ("decoder_upsample1", "skip_res1")))


def block_nodes(torch_block: torch.nn.Module | None, block: str) -> list[Node]:
    """The ops of a block in execution order (from the type of the torch block; None for `(output)`)."""
    if block == OUTPUT:
        return [Node("output_layer", "conv", ("x",), ""), Node("(loss)", "loss", ("output_layer",))]
    if isinstance(torch_block, tmodel.EncoderDecoder):
        return list(JOINS)
    if isinstance(torch_block, tmodel.Res3DBlock):
        return _res_nodes(len(torch_block.skip_con) > 0)
    if isinstance(torch_block, (tmodel.Basic3DBlock, tmodel.Upsample3DBlock)):
        first = "upsample" if isinstance(torch_block, tmodel.Upsample3DBlock) else "conv"
        return [Node("block.0", first, ("x",), "block.0"), Node("block.1", "bn", ("block.0",), "block.1"),
                Node("block.2", "relu", ("block.1",), "block.2")]
    if isinstance(torch_block, tmodel.Pool3DBlock):
        return [Node("(pool)", "pool", ("x",))]
    raise ValueError(f"block {block!r}: op-level localisation covers the leaf blocks (Basic, Res, Pool, Upsample), "
                     f"the encoder-decoder's skip joins and {OUTPUT}; localise inside one of the sub-blocks instead")


@dataclasses.dataclass
class Spec:
    """What the NumPy definition of a node needs: parameters (torch names), BN running statistics, constants."""

    params: dict[str, np.ndarray]
    running: tuple[np.ndarray, np.ndarray] | None = None
    pad: int = 0
    pool: int = 2


def _spec(node: Node, weights: Mapping[str, np.ndarray], prefix: str, torch_block) -> Spec:
    key = ".".join(p for p in (prefix, node.path) if p) + "."
    params = {name: np.asarray(weights[key + name], np.float64) for name in ("weight", "bias")
              if node.kind in ("conv", "upsample", "bn")}
    running = None
    if node.kind == "bn":
        running = tuple(np.asarray(weights[key + s], np.float64) for s in ("running_mean", "running_var"))
    pad = (params["weight"].shape[2] - 1) // 2 if node.kind == "conv" else 0
    pool = torch_block.pool_size if isinstance(torch_block, tmodel.Pool3DBlock) else 2
    return Spec(params, running, pad, pool)


def numpy_forward(node: Node, ins: list[np.ndarray], spec: Spec, train: bool, target) -> dict[str, np.ndarray]:
    """{'output': ..., and for BN in train mode 'running_mean', 'running_var'}."""
    p = spec.params
    if node.kind == "conv":
        return {"output": np_conv(ins[0], p["weight"], p["bias"], spec.pad)}
    if node.kind == "upsample":
        return {"output": np_upsample(ins[0], p["weight"], p["bias"])}
    if node.kind == "bn":
        out = {"output": np_bn(ins[0], p["weight"], p["bias"], spec.running, train)}
        if train:
            out["running_mean"], out["running_var"] = np_bn_running(ins[0], spec.running)
        return out
    if node.kind == "relu":
        return {"output": np.maximum(ins[0], 0)}
    if node.kind == "pool":
        return {"output": np_max_pool(ins[0], spec.pool)}
    if node.kind == "residual":
        return {"output": np.maximum(ins[0] + ins[1], 0)}
    if node.kind == "join":
        return {"output": ins[0] + ins[1]}
    return {"output": np.asarray(np.mean(np.square(ins[0] - target)))}


def numpy_vjp(node: Node, ins: list[np.ndarray], spec: Spec, train: bool, target, g) -> tuple[list, dict]:
    """(cotangents of the inputs, of the parameters by torch name)."""
    p = spec.params
    if node.kind == "conv":
        dx, dp = np_conv_vjp(ins[0], p["weight"], spec.pad, g)
    elif node.kind == "upsample":
        dx, dp = np_upsample_vjp(ins[0], p["weight"], g)
    elif node.kind == "bn":
        dx, dp = np_bn_vjp(ins[0], p["weight"], spec.running, train, g)
    elif node.kind == "relu":
        dx, dp = g * (ins[0] > 0), {}
    elif node.kind == "pool":
        dx, dp = np_max_pool_vjp(ins[0], spec.pool, g), {}
    elif node.kind == "residual":
        d = g * (ins[0] + ins[1] > 0)
        return [d, d], {}
    elif node.kind == "join":
        return [g, g], {}
    else:
        dx, dp = 2 * (ins[0] - target) / ins[0].size * g, {}
    return [dx], dp


# ------------------------------------------------------------------------------------------ framework runs


@dataclasses.dataclass
class OpRun:
    """One framework's (or the NumPy definition's) results of one node, torch layout and names, float64."""

    forward: dict[str, np.ndarray]
    input_grads: list[np.ndarray]
    param_grads: dict[str, np.ndarray]


def _torch_leaf(module: torch.nn.Module, ins, g, dtype, train) -> OpRun:
    module = copy.deepcopy(module).to(tmodel.DTYPES[dtype]).train(train)
    xs = [torch.tensor(a, dtype=tmodel.DTYPES[dtype], requires_grad=True) for a in ins]
    y = module(*[x.clone() for x in xs])  # a clone: the ReLUs work in place
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(y, [*xs, *params.values()], torch.tensor(g, dtype=y.dtype), allow_unused=True)
    forward = {"output": compare._numpy(y)}
    if isinstance(module, torch.nn.BatchNorm3d) and train:
        forward.update(running_mean=compare._numpy(module.running_mean), running_var=compare._numpy(module.running_var))
    return OpRun(forward, [compare._numpy(d) for d in grads[:len(xs)]],
                 {k: compare._numpy(d) for k, d in zip(params, grads[len(xs):])})


def _torch_glue(fn: Callable, ins, g, dtype) -> OpRun:
    xs = [torch.tensor(a, dtype=tmodel.DTYPES[dtype], requires_grad=True) for a in ins]
    y = fn(*xs)
    grads = torch.autograd.grad(y, xs, torch.tensor(g, dtype=y.dtype), allow_unused=True)
    return OpRun({"output": compare._numpy(y)}, [np.zeros_like(a) if d is None else compare._numpy(d)
                                                 for a, d in zip(ins, grads)], {})


def _stand_in(block_module, **parts) -> SimpleNamespace:
    """The block with some of its parts replaced, to run the block's own code on given values: every other
    attribute stays (a planted bug's mark, too)."""
    children = dict(block_module.named_children()) if isinstance(block_module, torch.nn.Module) else {}
    return SimpleNamespace(**{**vars(block_module), **children, **parts})


def _join_parts(block_module, node: Node, a, b, zero) -> dict:
    """Sub-blocks of the encoder-decoder under which its forward computes the join `node` on (a, b) and nothing
    else: the join's inputs come from `a` and `b`, a later join adds `zero` (exact), the rest pass values on."""
    if isinstance(block_module, torch.nn.Module):
        names = [name for name, _ in block_module.named_children()]
    else:
        names = [name for name, value in vars(block_module).items() if isinstance(value, nnx.Module)]
    parts = {name: (lambda v: v) for name in names}
    parts.update({node.inputs[0]: lambda _: a, node.inputs[1]: lambda _: b})
    for later in JOINS[JOINS.index(node) + 1:]:
        parts[later.inputs[1]] = lambda _: zero
    return parts


def torch_op(node: Node, block_module, ins, g, dtype, train, target) -> OpRun:
    if node.path is not None:
        return _torch_leaf(block_module.get_submodule(node.path), ins, g, dtype, train)
    if node.kind == "pool":
        return _torch_glue(lambda x: type(block_module).forward(block_module, x), ins, g, dtype)
    if node.kind == "residual":
        def residual(a, b):
            return type(block_module).forward(_stand_in(block_module, res_branch=lambda _: a,
                                                        skip_con=lambda _: b), a)
        return _torch_glue(residual, ins, g, dtype)
    if node.kind == "join":
        def join(a, b):
            parts = _join_parts(block_module, node, a, b, torch.zeros_like(a))
            return type(block_module).forward(_stand_in(block_module, **parts), a)
        return _torch_glue(join, ins, g, dtype)
    t = torch.tensor(target, dtype=tmodel.DTYPES[dtype])
    return _torch_glue(lambda y: F.mse_loss(y, t), ins, g, dtype)


def _jnp(a, dtype):
    a = np.asarray(a)
    return jnp.asarray(to_jax_layout(a) if a.ndim == 5 else a, dtype)


def _np(a):
    a = np.asarray(a, np.float64)
    return to_torch_layout(a) if a.ndim == 5 else a


def _jax_run(fn: Callable, params, ins, g, dtype, rest=None) -> tuple[dict, list, dict]:
    """fn(inputs, params, rest) -> (output, aux): output, input and parameter cotangents, aux, as float64 numpy.
    `rest` (a module's other state) goes through the vjp too, so that the module may update it."""
    @jax.jit
    def run(xs, params, rest, g):
        y, vjp, aux = jax.vjp(fn, xs, params, rest, has_aux=True)
        dxs, dparams, _ = vjp(g.astype(y.dtype))  # the loss is float32 under bfloat16
        return y, aux, dxs, dparams

    y, aux, dxs, dparams = run([_jnp(a, dtype) for a in ins], params, rest, _jnp(g, dtype))
    return {"output": _np(y), **{k: _np(v) for k, v in aux.items()}}, [_np(d) for d in dxs], dparams


def _jax_leaf(module: nnx.Module, ins, g, dtype) -> OpRun:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def fn(xs, params, rest):
        m = nnx.merge(graphdef, params, rest)
        y = m(*xs)
        stats = nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))
        return y, {f"running_{k}": stats[k] for k in ("mean", "var") if k in stats and m.use_running_average is False}

    forward, dxs, dparams = _jax_run(fn, params, ins, g, dtype, rest)
    fields = convert.FIELDS.get(type(module), ())
    grads = nnx.to_pure_dict(dparams)
    return OpRun(forward, dxs, {suffix: np.asarray(grads[attr], np.float64).transpose(perm or None)
                                for attr, suffix, perm in fields if attr in grads})


def _submodule(module: nnx.Module, path: str) -> nnx.Module:
    for p, m in nnx.iter_graph(module):
        if ".".join(str(q) for q in p) == path:
            return m
    raise KeyError(f"no module at {path!r}")


def jax_op(node: Node, block_module, ins, g, dtype, target) -> OpRun:
    if node.path is not None:
        return _jax_leaf(_submodule(block_module, node.path), ins, g, dtype)
    if node.kind == "pool":
        fn = lambda xs, *_: (type(block_module).__call__(block_module, xs[0]), {})  # noqa: E731
    elif node.kind == "residual":
        def fn(xs, *_):
            fake = _stand_in(block_module, res_branch=[lambda _: xs[0]], skip_con=[lambda _: xs[1]],
                             _record=lambda y: y)
            return type(block_module).__call__(fake, xs[0]), {}
    elif node.kind == "join":
        def fn(xs, *_):
            parts = _join_parts(block_module, node, xs[0], xs[1], jnp.zeros_like(xs[0]))
            return type(block_module).__call__(_stand_in(block_module, **parts, _record=lambda y: y), xs[0]), {}
    else:
        t = _jnp(target, dtype)
        fn = lambda xs, *_: (compare._mse(xs[0], t), {})  # noqa: E731
    forward, dxs, _ = _jax_run(fn, {}, ins, g, dtype)
    return OpRun(forward, dxs, {})


# -------------------------------------------------------------------------------------------------- judging


@dataclasses.dataclass(frozen=True)
class OpRow:
    """One compared tensor of one op: quantity 'forward' (output), 'running statistics' (BN) or 'backward'
    (input cotangents, then parameter cotangents); errors per framework against the NumPy definition."""

    block: str
    op: str
    kind: str
    quantity: str
    tensor: str
    k: int
    errors: dict[str, Err]
    unit: Err  # rounding_unit of the row
    rounding: str  # what rounds the op's inputs: its dtype, or tf32 (verdict.unit_roundoff)

    @property
    def band(self) -> Err:
        fro, q = BAND_FACTORS[FACTORS_OF.get(self.rounding, self.rounding)][self.kind]
        return Err(fro * self.unit.rel_fro, q * self.unit.q999)

    def deviating(self) -> list[str]:
        return [fw for fw, e in self.errors.items() if not e <= self.band]


@dataclasses.dataclass(frozen=True)
class OpDeviation:
    block: str
    op: str
    kind: str
    framework: str  # "JAX", "PyTorch" or "JAX and PyTorch"
    quantity: str
    tensor: str
    error: Err
    band: Err

    def __str__(self):
        return (f"{self.framework} deviates at op {self.op} ({self.kind}) of {self.block}: {self.quantity} "
                f"{self.tensor} rel. Frobenius {self.error.rel_fro:.2e}, q99.9 {self.error.q999:.2e} against the "
                f"rounding band {self.band.rel_fro:.1e}, {self.band.q999:.1e}")


def _shape_k(node: Node, ins, spec: Spec, quantity: str) -> int:
    """The reduction length behind each rounded result (module docstring)."""
    x = ins[0]
    per_channel = x.size // x.shape[1] if x.ndim == 5 else x.size
    if node.kind == "conv":
        w = spec.params["weight"]
        return {"forward": w[0].size, "input": w.shape[0] * w[0, 0].size}.get(quantity, per_channel)
    if node.kind == "upsample":
        w = spec.params["weight"]
        return {"forward": w.shape[0], "input": w.shape[1] * 8}.get(quantity, per_channel)
    if node.kind == "bn":
        return per_channel
    if node.kind == "loss":
        return x.size if quantity == "forward" else 1
    return 1


def _perturbed(arrays, u, rng):
    return [a * (1 + u * rng.standard_normal(np.shape(a))) for a in arrays]


def _rows_of(node, block, ins, spec, truth_fwd, truth_in, truth_par, pert_fwd, pert_in, pert_par, runs, rounding):
    """The rows of one node: its forward outputs, input cotangents and parameter cotangents."""
    rows = []

    def add(kind, quantity, tensor, kq, pick, mask=None):
        t = pick(truth_fwd, truth_in, truth_par)
        e_in = err(pick(pert_fwd, pert_in, pert_par), t, mask, t)
        errors = {fw: err(pick(r.forward, r.input_grads, r.param_grads), t, mask, t) for fw, r in runs.items()}
        k = _shape_k(node, ins, spec, kq)
        rows.append(OpRow(block, node.name, kind, quantity, tensor, k, errors,
                          rounding_unit(e_in, k, V.unit_roundoff(rounding)), rounding))

    cat = lambda *xs: np.concatenate([np.ravel(x) for x in xs])  # noqa: E731
    if node.kind == "residual":
        pos = truth_fwd["output"] > 0  # the add where the truth passes the ReLU, the ReLU where it does not
        for kind, mask in (("residual add", pos), ("ReLU", ~pos)):
            add(kind, "forward", "output", "forward", lambda f, i, p: f["output"], mask)
            add(kind, "backward", "input cotangents", "input", lambda f, i, p: cat(*i), cat(mask, mask))
        return rows
    kind = KIND_NAMES[node.kind]
    add(kind, "forward", "output", "forward", lambda f, i, p: f["output"])
    for stat in ("running_mean", "running_var"):
        if stat in truth_fwd:
            add("BN statistics", "running statistics", stat.replace("_", " "), "stats", lambda f, i, p, s=stat: f[s])
    if node.kind == "join":
        add(kind, "backward", "input cotangents", "input", lambda f, i, p: cat(*i))
    elif node.kind != "loss":
        add(kind, "backward", "input cotangent", "input", lambda f, i, p: i[0])
    else:
        add(kind, "backward", "input cotangent", "loss", lambda f, i, p: i[0])
    if truth_par:
        add(kind, "backward", "parameter cotangents", "params",
            lambda f, i, p: cat(*(p[k] for k in sorted(truth_par))))
    return rows


def _weights(weights) -> dict[str, np.ndarray]:
    return {k: compare._numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in weights.items()}


def _model_sizes(weights) -> tuple[int, int, int]:
    """(input channels, joints, width) of the V2V a torch-keyed state_dict holds."""
    w = weights["output_layer.weight"]
    return weights["front_layers.0.block.0.weight"].shape[1], w.shape[0], w.shape[1]


def _torch_model(weights, dtype):
    model = tmodel.V2VModel(*_model_sizes(weights))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return model.to(tmodel.DTYPES[dtype])


def _blocks(weights, block, dtype, numerics_fields, jax_patch, torch_patch):
    """(torch block, Flax block) holding `weights`, each taken from a whole V2V built inside its framework's patch
    (so that a bug planted in one layer of every V2V built reaches the block); the Flax model loads the torch
    model's state_dict through v2v_jax.convert."""
    with torch_patch():
        model = _torch_model(weights, dtype)
        torch_block = model.output_layer if block == OUTPUT else model.get_submodule(block)
    compute, param = PRECISIONS[dtype]
    with jax_patch(), (jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()):
        jax_model = jmodel.V2VModel(*_model_sizes(weights),
                                    numerics=Numerics(dtype=compute, param_dtype=param, **numerics_fields),
                                    rngs=nnx.Rngs(0))
        state = {k: v.detach().cpu().to(torch.float32) if v.dtype == torch.bfloat16 else v.detach().cpu()
                 for k, v in model.state_dict().items()}  # bfloat16: JAX's parameters are float32
        convert.load_torch_state_dict(jax_model, state, source=f"weights of {block}")
    jax_block = jax_model.output_layer if block == OUTPUT else _submodule(jax_model, block)
    return torch_block, jax_block


def op_errors(block: str, weights: Mapping, x: np.ndarray, cotangent: np.ndarray | None, dtype: str = "float32",
              *, target: np.ndarray | None = None, train: bool = True, jax_patch: Callable = contextlib.nullcontext,
              torch_patch: Callable = contextlib.nullcontext, seed: int = 0, tf32: bool = False,
              **numerics_fields) -> list[OpRow]:
    """Every op of `block` judged in both frameworks against its NumPy float64 definition (module docstring).
    tf32: JAX's float32 convolutions and products at the backend's default precision (TF32 on a GPU), judged
    with TF32's unit roundoff; otherwise at full precision."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {DTYPES}")
    if block == OUTPUT and target is None:
        raise ValueError(f"block {OUTPUT}: the loss needs the target")
    weights = _weights(weights)
    x = np.asarray(x, np.float64)
    target = None if target is None else np.asarray(target, np.float64)
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    numerics_fields = {"precision": None if tf32 else jax.lax.Precision.HIGHEST, **numerics_fields}
    torch_block, jax_block = _blocks(weights, block, dtype, numerics_fields, jax_patch, torch_patch)
    nodes = block_nodes(torch_block, block)
    prefix = "output_layer" if block == OUTPUT else block
    specs = {n.name: _spec(n, weights, prefix, torch_block) for n in nodes}

    truth = _truth(nodes, specs, weights, block, x, cotangent, train, target)
    values, grads, outs, in_grads, par_grads = truth.values, truth.grads, truth.outs, truth.in_grads, truth.par_grads
    rng = np.random.default_rng(seed)
    rows = []
    for n in nodes:
        ins, g = [values[i] for i in n.inputs], grads[n.name]
        spec = specs[n.name]
        rounding = "tf32" if tf32 and dtype == "float32" and n.kind in TF32_KINDS else dtype
        u = V.unit_roundoff(rounding)
        pins, (pg,) = _perturbed(ins, u, rng), _perturbed([g], u, rng)
        pspec = dataclasses.replace(spec, params=dict(zip(spec.params, _perturbed(spec.params.values(), u, rng))))
        ptgt = None if target is None else _perturbed([target], u, rng)[0]
        pert_fwd = numpy_forward(n, pins, pspec, train, ptgt)
        pert_in, pert_par = numpy_vjp(n, pins, pspec, train, ptgt, pg)
        with torch_patch():
            t_run = torch_op(n, torch_block, ins, g, dtype, train, target)
        with jax_patch(), x64:
            jax_block.train() if train else jax_block.eval()
            j_run = jax_op(n, jax_block, ins, g, dtype, target)
        rows += _rows_of(n, block, ins, spec, outs[n.name], in_grads[n.name], par_grads[n.name], pert_fwd, pert_in,
                         pert_par, {JAX: j_run, TORCH: t_run}, rounding)
    return rows


@dataclasses.dataclass(frozen=True)
class _Truth:
    """The NumPy float64 truth of a block's ops: each value and its cotangent by name ('x' the block's input),
    each node's forward outputs, input cotangents and parameter cotangents."""

    values: dict
    grads: dict
    outs: dict
    in_grads: dict
    par_grads: dict


def _truth(nodes, specs, weights, block, x, cotangent, train, target) -> _Truth:
    """The truth forward, op by op, then the truth backward from the output's cotangent."""
    values = {"x": x}
    grads = {nodes[-1].name: np.asarray(1.0) if block == OUTPUT else np.asarray(cotangent, np.float64)}
    if nodes[0] in JOINS:
        inner_values, inner_grads = _join_truth(weights, x, grads[nodes[-1].name], train)
        values.update(inner_values)
        grads.update(inner_grads)
    outs = {}
    for n in nodes:
        outs[n.name] = numpy_forward(n, [values[i] for i in n.inputs], specs[n.name], train, target)
        values[n.name] = outs[n.name]["output"]
    in_grads, par_grads = {}, {}
    for n in reversed(nodes):
        ins = [values[i] for i in n.inputs]
        in_grads[n.name], par_grads[n.name] = numpy_vjp(n, ins, specs[n.name], train, target, grads[n.name])
        for i, d in zip(n.inputs, in_grads[n.name]):
            grads[i] = grads.get(i, 0) + d
    return _Truth(values, grads, outs, in_grads, par_grads)


def composition_deviation(block: str, weights: Mapping, x: np.ndarray, cotangent: np.ndarray, *,
                          train: bool = True, jax_patch: Callable = contextlib.nullcontext,
                          torch_patch: Callable = contextlib.nullcontext, **numerics_fields) -> OpDeviation | None:
    """A leaf block run whole in float64, in each framework, against the NumPy chain of its ops: a fault in how
    the block joins ops that are each right (an op skipped, repeated or fed the wrong value), which judging the
    ops one at a time cannot see. Judged like a float64 result alone (`verdict.ALONE_BOUND`), forward output and
    input cotangent. Where a framework's output is the chain's value after an earlier op, the op after that one
    is named as skipped; otherwise the op is '(composition)'. None when both frameworks compose their ops right,
    and for the encoder-decoder and the output, whose own code the op rows already run."""
    if block in (OUTPUT, "encoder_decoder"):
        return None
    weights, x = _weights(weights), np.asarray(x, np.float64)
    numerics_fields = {"precision": jax.lax.Precision.HIGHEST, **numerics_fields}
    torch_block, jax_block = _blocks(weights, block, "float64", numerics_fields, jax_patch, torch_patch)
    nodes = block_nodes(torch_block, block)
    specs = {n.name: _spec(n, weights, block, torch_block) for n in nodes}
    truth = _truth(nodes, specs, weights, block, x, cotangent, train, None)
    out, g = truth.values[nodes[-1].name], truth.grads[nodes[-1].name]
    with torch_patch():
        t_run = _torch_leaf(torch_block, [x], g, "float64", train)
    with jax_patch(), jax.enable_x64(True):
        jax_block.train() if train else jax_block.eval()
        j_run = _jax_leaf(jax_block, [x], g, "float64")
    runs = {JAX: j_run, TORCH: t_run}
    for quantity, tensor, pick, want in (("forward", "output", lambda r: r.forward["output"], out),
                                         ("backward", "input cotangent", lambda r: r.input_grads[0],
                                          truth.grads["x"])):
        errors = {fw: err(pick(r), want) for fw, r in runs.items()}
        bad = [fw for fw, e in errors.items() if not e.rel_fro <= V.ALONE_BOUND]
        if bad:
            op, kind = "(composition)", "composition"
            if quantity == "forward":
                produced = pick(runs[bad[0]])
                matches = [k for k, n in enumerate(nodes[:-1]) if truth.values[n.name].shape == produced.shape
                           and err(produced, truth.values[n.name]).rel_fro <= V.ALONE_BOUND]
                if matches:
                    skipped = nodes[matches[-1] + 1]
                    op, kind = f"{skipped.name} skipped", KIND_NAMES[skipped.kind]
            worst = errors[bad[0]]
            return OpDeviation(block, op, kind, " and ".join(bad), quantity, f"{tensor} of the whole block", worst,
                               Err(V.ALONE_BOUND, math.inf))
    return None


def _join_truth(weights, x, cotangent, train: bool) -> tuple[dict, dict]:
    """The float64 truth around the encoder-decoder's joins: the outputs of the sub-blocks they add, and the
    cotangent of each join's output but the last, from an unpatched float64 PyTorch encoder-decoder (built outside
    any planted bug; its sub-blocks' ops are judged in their own blocks)."""
    ed = _torch_model(weights, "float64").encoder_decoder.train(train)
    seen, grads = {}, {}
    consumer = {"decoder_res1": JOINS[0].name}  # the sub-block reading the inner join's output

    def hook(name):
        def record(_m, inputs, output):
            seen[name] = compare._numpy(output)
            if name in consumer:
                inputs[0].register_hook(lambda g: grads.__setitem__(consumer[name], compare._numpy(g)))
        return record

    wanted = {i for join in JOINS for i in join.inputs} | set(consumer)
    handles = [getattr(ed, name).register_forward_hook(hook(name)) for name in wanted]
    try:
        ed(torch.as_tensor(x)).backward(torch.as_tensor(cotangent))
    finally:
        for h in handles:
            h.remove()
    return {i: seen[i] for join in JOINS for i in join.inputs}, grads


def localise_op(block: str, weights: Mapping, x: np.ndarray, cotangent: np.ndarray | None, dtype: str = "float32",
                **kwargs) -> OpDeviation | None:
    """The first op of `block` whose result leaves its rounding band, and in which framework: forward rows in
    execution order, then backward rows from the block's output back (the order the backward pass meets them)."""
    return first_deviation(op_errors(block, weights, x, cotangent, dtype, **kwargs))


def first_deviation(rows: Sequence[OpRow]) -> OpDeviation | None:
    """`localise_op` on rows already computed by `op_errors`."""
    forward = [r for r in rows if r.quantity != "backward"]
    backward = [r for r in reversed(rows) if r.quantity == "backward"]
    for row in forward + backward:
        bad = row.deviating()
        if bad:
            worst = max(bad, key=lambda fw: row.errors[fw].rel_fro / max(row.band.rel_fro, 1e-300))
            return OpDeviation(row.block, row.op, row.kind, " and ".join(bad), row.quantity, row.tensor,
                               row.errors[worst], row.band)
    return None


def format_table(rows: Sequence[OpRow]) -> str:
    """A markdown table: per row, each framework's errors against NumPy float64 and the band."""
    lines = ["| op | kind | quantity | K | JAX rel. Frob. | PyTorch rel. Frob. | band | JAX q99.9 | PyTorch q99.9 | "
             "band | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bad = r.deviating()
        lines.append(f"| {r.op} | {r.kind} | {r.quantity}: {r.tensor} | {r.k} | {r.errors[JAX].rel_fro:.2e} | "
                     f"{r.errors[TORCH].rel_fro:.2e} | {r.band.rel_fro:.1e} | {r.errors[JAX].q999:.2e} | "
                     f"{r.errors[TORCH].q999:.2e} | {r.band.q999:.1e} | "
                     f"{' and '.join(bad) + ' deviates' if bad else 'ok'} |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BlockTruth:
    x: np.ndarray  # the block's input
    cotangent: np.ndarray  # d loss / d (the block's output)


def truth_from_torch(weights: Mapping, x: np.ndarray, target: np.ndarray, block: str) -> BlockTruth:
    """A block's input and output cotangent from a float64 PyTorch V2V on `weights` (unpatched: call it outside
    any planted bug) with the authors' loss, MSE against `target`."""
    return truths_from_torch(weights, x, target, [block])[block]


def truths_from_torch(weights: Mapping, x: np.ndarray, target: np.ndarray,
                      blocks: Sequence[str]) -> dict[str, BlockTruth]:
    """`truth_from_torch` of several blocks from one forward and backward pass."""
    model = _torch_model(_weights(weights), "float64").train()
    seen: dict[str, dict] = {b: {} for b in blocks}

    def hook(block):
        def record(_m, inputs, output):
            seen[block]["x"] = inputs[0].detach().clone()
            output.register_hook(lambda g: seen[block].__setitem__("g", g.detach().clone()))
        return record

    handles = [(model.output_layer if b == OUTPUT else model.get_submodule(b)).register_forward_hook(hook(b))
               for b in blocks]
    try:
        y = model(torch.as_tensor(np.asarray(x, np.float64)))
        F.mse_loss(y, torch.as_tensor(np.asarray(target, np.float64))).backward()
    finally:
        for h in handles:
            h.remove()
    return {b: BlockTruth(compare._numpy(seen[b]["x"]), np.asarray(1.0) if b == OUTPUT else
                          compare._numpy(seen[b]["g"])) for b in blocks}


# ---------------------------------------------------------------------------------------------------- command


def reference_case(width: int, grid: int, batch: int, joints: int, seed: int, density: float = 0.05):
    """(weights, x, target): the authors' init drawn by PyTorch in float32 from `seed`, sparse binary voxels and a
    uniform [0, 1) heatmap target, every value a float32 held in float64."""
    torch.manual_seed(seed)
    model = tmodel.V2VModel(1, joints, width)
    weights = {k: compare._numpy(v) if v.is_floating_point() else v.numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    x = (rng.random((batch, 1, grid, grid, grid)) < density).astype(np.float64)
    target = rng.random((batch, joints, grid // 2, grid // 2, grid // 2)).astype(np.float32).astype(np.float64)
    return weights, x, target


CALIBRATION_BLOCKS = ("front_layers.0", "front_layers.1", "front_layers.2", "encoder_decoder.skip_res1",
                      "encoder_decoder.encoder_res1", "encoder_decoder.decoder_upsample1", "encoder_decoder",
                      "back_layers.1", OUTPUT)


def ratios(rows: Sequence[OpRow]) -> dict[str, dict[str, float]]:
    """Per kind, the largest err / ((1 + log2 K) max(e_in, u)) of each metric, over both frameworks."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        unit = r.unit
        d = out.setdefault(r.kind, {"rel_fro": 0.0, "q999": 0.0})
        for e in r.errors.values():
            d["rel_fro"] = max(d["rel_fro"], e.rel_fro / unit.rel_fro)
            d["q999"] = max(d["q999"], e.q999 / unit.q999)
    return out


def gradient_gap(width=32, grid=32, batch=2, joints=21, seed=0, **numerics_fields) -> str:
    """Per block: each framework's float32 gradient error against a float64 PyTorch run (relative Frobenius, the
    block's weights and biases as one vector), and the voxels whose ReLU side (block outputs) differs from float64."""
    weights, x, target = reference_case(width, grid, batch, joints, seed)
    t64 = _torch_model(weights, "float64")
    r64, _ = compare.run_torch(t64, x, target, train=True)
    r32, _ = compare.run_torch(_torch_model(weights, "float32"), x, target, train=True)
    jax_model = jmodel.V2VModel(1, joints, width, numerics=Numerics(**numerics_fields), rngs=nnx.Rngs(0))
    j32 = compare.run_jax(compare.with_torch_weights(jax_model, t64.float()), x, target, train=True)
    blocks = [b for b in r64.acts if b]
    lines = ["| block | JAX | PyTorch | ReLU flips JAX | ReLU flips PyTorch |", "|---|---|---|---|---|"]
    for b in blocks:
        keys = [k for k in r64.grads if compare.owner_block(k, blocks) == b]
        if not keys:
            continue
        t = np.concatenate([r64.grads[k].ravel() for k in keys])
        e = [np.linalg.norm(np.concatenate([r.grads[k].ravel() for k in keys]) - t) / np.linalg.norm(t)
             for r in (j32, r32)]
        flips = [int(((r.acts[b] > 0) != (r64.acts[b] > 0)).sum()) for r in (j32, r32)]
        lines.append(f"| {b} | {e[0]:.2e} | {e[1]:.2e} | {flips[0]} | {flips[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", action="append", help=f"block path (repeatable; default {CALIBRATION_BLOCKS})")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--tf32", action="store_true", help="float32: JAX's convolutions at the default precision (TF32 on "
                   "a GPU), judged with TF32's unit roundoff")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--grid", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--joints", type=int, default=21)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--conv", choices=("auto",) + CONV_IMPLS, default=Numerics.conv)
    p.add_argument("--upsample", choices=UPSAMPLE_IMPLS, default=Numerics.upsample)
    p.add_argument("--gradient-gap", action="store_true",
                   help="print each framework's float32 gradient error per block against float64 PyTorch")
    p.add_argument("--calibrate", action="store_true",
                   help="print, per op kind, the largest error over (1 + log2 K) max(e_in, u) instead of the tables")
    args = p.parse_args(argv)
    if args.grid % 4:
        p.error(f"--grid {args.grid}: must be a multiple of 4 (two 2x poolings)")
    if args.tf32 and args.dtype != "float32":
        p.error(f"--tf32: TF32 rounds float32 products; --dtype is {args.dtype}")
    if args.gradient_gap:
        for seed in args.seeds:
            print(gradient_gap(args.width, args.grid, args.batch, args.joints, seed, conv=args.conv,
                               upsample=args.upsample))
        return
    blocks = args.block or list(CALIBRATION_BLOCKS)
    worst: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        weights, x, target = reference_case(args.width, args.grid, args.batch, args.joints, seed)
        try:
            truth = truths_from_torch(weights, x, target, blocks)
        except AttributeError as e:
            p.error(f"--block: {e}")
        for block in blocks:
            rows = op_errors(block, weights, truth[block].x, truth[block].cotangent, args.dtype, target=target,
                             seed=seed, tf32=args.tf32, conv=args.conv, upsample=args.upsample)
            if args.calibrate:
                for kind, r in ratios(rows).items():
                    w = worst.setdefault(kind, {"rel_fro": 0.0, "q999": 0.0})
                    for m in w:
                        w[m] = max(w[m], r[m])
            else:
                found = first_deviation(rows)
                precision = args.dtype + (", TF32" if args.tf32 else "")
                print(f"{block} (seed {seed}, {precision}, width {args.width}, grid {args.grid}^3, batch "
                      f"{args.batch})\n\n{format_table(rows)}\n\n{found or 'every op within its rounding band'}\n")
    if args.calibrate:
        print("| kind | max err / ((1 + log2 K) max(e_in, u)), rel. Frobenius | q99.9 |\n|---|---|---|")
        for kind, w in worst.items():
            print(f"| {kind} | {w['rel_fro']:.2f} | {w['q999']:.2f} |")


if __name__ == "__main__":
    main()
