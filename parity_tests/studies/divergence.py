"""Where configurations part: per-block comparisons built on `parity_tests.compare` (a thin adapter around it).

- `compare_pair`: two runs (`run_variant`: weights under a variant's numerics on the fitted batch), block by
  block: forward outputs and parameter gradients (`compare.compare_runs`), and for two trained variants how far
  their weights have drifted apart (`compare.layer_errors`).
- `block_reference` and `local_errors`: every block alone, fed the float64 network's input of that block: the
  error the block itself adds in a lower precision (local error), and in float64 how much it amplifies a small
  input error (gain); for residual blocks also the gain of the same block without its skip path.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from parity_tests import compare
from v2v_jax.layers import BatchNorm3d
from parity_tests.studies.overfit import (Problem, Variant, jax_device, jax_model, jax_numerics, memory_format,
                                     shape_of, torch_backend, torch_model)
from v2v_torch_ref import model as torch_model_lib

LEAF_BLOCKS = (torch_model_lib.Basic3DBlock, torch_model_lib.Res3DBlock, torch_model_lib.Upsample3DBlock)
F64 = Variant("float64 reference", framework="torch", dtype="float64")


def torch_layout(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """The fitted batch (voxels, heatmaps) in torch layout, float64, as fresh C-order arrays.

    A transposed view would do for NumPy, but not for PyTorch: (B, 1, D, H, W) with the strides of an NDHWC array
    is also a channels_last_3d tensor, and convolutions then carry that layout through the whole network (whose
    CPU BatchNorm is less precise in it; see `batchnorm_alone`)."""
    return tuple(np.array(compare.to_torch_layout(a), np.float64, order="C")
                 for a in (problem.voxels, problem.heatmaps))


def block_kinds(state_dict) -> dict[str, str]:
    """Block path -> class name (Res3DBlock, Pool3DBlock, ...) of the V2V these weights fit, in the order the
    blocks finish in a forward pass (torch's forward hooks; inner blocks before the encoder-decoder)."""
    width, joints = shape_of(state_dict)
    model = torch_model_lib.V2VModel(1, joints, width).double().eval()
    _, taps = torch_model_lib.forward_with_intermediates(model, torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64))
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    return {name: kinds[name] for name in taps if name}


def run_variant(variant: Variant, state_dict, x: np.ndarray, target: np.ndarray, *, conv: str,
                device: str) -> compare.Run:
    """One train-mode forward and backward pass of the weights under the variant's numerics."""
    if variant.framework == "torch":
        with torch_backend(variant):
            model = torch_model(variant, state_dict, "cuda" if device == "gpu" else "cpu")
            run, _ = compare.run_torch(model, x, target, train=True, memory_format=memory_format(variant))
        return run
    with jax.default_device(jax_device(device)):
        return compare.run_jax(jax_model(variant, state_dict, conv), x, target, train=True)


@dataclasses.dataclass
class Pair:
    """`other` against `reference`, block by block: rows in execution order, the first block beyond `tol`, and
    how far the two sets of weights have drifted apart (per block, max-relative; empty for shared weights)."""

    reference: str
    other: str
    rows: list[compare.Row]
    divergence: compare.Divergence | None
    weights: dict[str, float]


def compare_pair(reference: compare.Run, other: compare.Run, kinds: dict[str, str], tol: float, *,
                 names: tuple[str, str], weights: tuple[dict, dict] | None = None) -> Pair:
    """`compare.compare_runs` with the reference's blocks put in execution order first (a JAX run returns its
    intermediates sorted by name), so that `first_divergence` reads them in the order they are computed."""
    reference = dataclasses.replace(reference, acts={k: reference.acts[k] for k in kinds})
    rows = compare.compare_runs(reference, other, train=True, tol=tol)
    drift = {} if weights is None else weight_drift(*weights, list(kinds))
    return Pair(names[0], names[1], rows, compare.first_divergence(rows, tol), drift)


def weight_drift(reference: dict, other: dict, blocks: list[str]) -> dict[str, float]:
    """Block -> the largest max-relative difference of its layers' parameters (weight and bias as one vector)."""
    params = [k for k in reference if k.endswith(("weight", "bias"))]
    layer = compare.layer_errors(_numpy(other), _numpy(reference), params)
    drift: dict[str, float] = {}
    for name, err in layer.items():
        owners = [b for b in blocks if name.startswith(b + ".")]
        owner = max(owners, key=len) if owners else compare.OUTPUT
        drift[owner] = max(drift.get(owner, 0.0), err)
    return drift


def _numpy(state_dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------- block by block


@dataclasses.dataclass
class BlockReference:
    """Every leaf block (Basic, Res, Upsample; pooling is exact) of float64 weights, fed its input in the float64
    network on the fitted batch: the block, its input, its float64 run (MSE against a uniform random target) and
    its gains (output error / input error for a 2^-24 relative input perturbation, float64; for Res blocks also
    of relu(branch(x)), the block without its skip path)."""

    state_dict: dict
    kinds: dict[str, str]
    blocks: dict[str, torch.nn.Module]
    inputs: dict[str, np.ndarray]
    runs: dict[str, compare.Run]
    targets: dict[str, np.ndarray]
    gain: dict[str, float]
    gain_without_skip: dict[str, float]


def block_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every leaf block in a train-mode forward pass of a copy of `model`."""
    model = copy.deepcopy(model).train()
    inputs, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, LEAF_BLOCKS):
            handles.append(m.register_forward_pre_hook(
                lambda _m, args, name=name: inputs.__setitem__(name, args[0].detach().clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return inputs


def gain(fn, x: torch.Tensor, seed: int = 0) -> float:
    """max-relative output change / max-relative input change of fn for x * (1 + 2^-24 N(0, 1)), float64."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    xp = x * (1 + 2.0 ** -24 * noise)
    with torch.no_grad():
        y, yp = fn(x), fn(xp)
    return compare.rel_error(yp, y) / compare.rel_error(xp, x)


def block_reference(state_dict, problem: Problem) -> BlockReference:
    reference = torch_model(F64, state_dict, "cpu")
    x, _ = torch_layout(problem)
    inputs = block_inputs(reference, torch.from_numpy(x))
    kinds = block_kinds(state_dict)
    ref = BlockReference(state_dict, {p: kinds[p] for p in inputs}, {}, {}, {}, {}, {}, {})
    for path, block_input in inputs.items():
        block = copy.deepcopy(reference.get_submodule(path)).train()
        ref.blocks[path], ref.inputs[path] = block, block_input.numpy()
        ref.runs[path], ref.targets[path] = compare.run_torch(block, ref.inputs[path], None, train=True)
        ref.gain[path] = gain(block, block_input)
        if kinds[path] == "Res3DBlock":
            ref.gain_without_skip[path] = gain(lambda z, b=block: torch.relu(b.res_branch(z)), block_input)
    return ref


def submodule(model: nnx.Module, path: str) -> nnx.Module:
    """The NNX block at a torch module path such as 'encoder_decoder.skip_res1' or 'front_layers.2'."""
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def local_errors(ref: BlockReference, variant: Variant, *, conv: str, device: str) -> dict[str, tuple[float, float]]:
    """Block -> (forward, gradient) error the block adds under the variant's numerics: its output, and the worst
    of its input gradient and its parameters' gradients, against float64 on the same input."""
    out = {}
    if variant.framework == "torch":
        model = torch_model(variant, ref.state_dict, "cuda" if device == "gpu" else "cpu")
    else:
        with jax.default_device(jax_device(device)):
            model = jax_model(variant, ref.state_dict, conv)
    for path, x in ref.inputs.items():
        if variant.framework == "torch":
            with torch_backend(variant):
                run, _ = compare.run_torch(model.get_submodule(path), x, ref.targets[path], train=True,
                                           memory_format=memory_format(variant))
        else:
            with jax.default_device(jax_device(device)):
                block = compare.with_torch_weights(submodule(model, path), ref.blocks[path])
                run = compare.run_jax(block, x, ref.targets[path], train=True)
        rows = compare.compare_runs(ref.runs[path], run, train=True, tol=np.inf)
        out[path] = rows[-1].fwd_rel, max(r.grad_rel for r in (rows[0], rows[-1]) if r.grad_rel is not None)
    return out


# ------------------------------------------------------------------------------------------- BatchNorm alone


# (batch, n) of (batch, 4, n, n, n) inputs; the last is V2V's first BatchNorm at batch 8 (5.45M values a channel).
BN_SIZES = ((1, 12), (1, 24), (1, 48), (1, 88), (8, 88))


def bn_input(batch: int, n: int, seed: int = 0) -> np.ndarray:
    """(batch, 4, n, n, n) float64 values with mean 3 standard deviations away from 0, like a channel whose bias
    dominates (sparse binary input through a convolution)."""
    return (np.random.default_rng(seed).standard_normal((batch, 4, n, n, n)) + 3.0) * 0.25


def batchnorm_alone(variants: list[Variant], device: str, sizes=BN_SIZES) -> dict[tuple[int, int], dict[str, float]]:
    """(batch, n) -> {configuration: max-relative error of a train-mode BatchNorm's output against float64}:
    PyTorch in each variant's backend and memory format, JAX in its BN flavour (two-pass or one-pass variance)."""
    out = {}
    for batch, n in sizes:
        x = bn_input(batch, n)
        reference = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
        out[batch, n] = {}
        for v in variants:
            if v.framework == "torch":
                with torch_backend(v):
                    xt = torch.from_numpy(x).to("cuda" if device == "gpu" else "cpu", torch_model_lib.DTYPES[v.dtype])
                    y = torch.nn.functional.batch_norm(xt.contiguous(memory_format=memory_format(v)), None, None,
                                                       training=True)
                    y = y.double().cpu().numpy()
            else:
                with jax.default_device(jax_device(device)):
                    bn = BatchNorm3d(4, numerics=jax_numerics(v, "xla"), rngs=nnx.Rngs(0))
                    bn.scale[...] = jnp.ones_like(bn.scale[...])
                    y = compare.to_torch_layout(np.asarray(bn(jnp.asarray(compare.to_jax_layout(x),
                                                                          bn.numerics.dtype)), np.float64))
            out[batch, n][v.name] = compare.rel_error(y, reference)
    return out
