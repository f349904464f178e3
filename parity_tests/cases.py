"""Twin models and inputs for the parity tests: every V2V block type, the whole model, tiny sizes."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from flax import nnx

from v2v_jax import model as jmodel
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.layers import Numerics
from v2v_torch_ref import model as tmodel

def numerics(dtype: str = "float64", **fields) -> Numerics:
    compute, param = PRECISIONS[dtype]
    return Numerics(dtype=compute, param_dtype=param, **fields)


def sparse_voxels(shape, density=0.05, seed=0) -> np.ndarray:
    """Binary occupancy like V2V's input: a few percent of voxels set."""
    return (np.random.default_rng(seed).random(shape) < density).astype(np.float64)


def rectified_normal(shape, seed=0) -> np.ndarray:
    """Non-negative activations like the output of a ReLU block, with exact zeros."""
    return np.maximum(np.random.default_rng(seed).standard_normal(shape), 0.0)


@dataclasses.dataclass(frozen=True)
class BlockCase:
    make_torch: Callable[[], torch.nn.Module]
    make_jax: Callable[[Numerics, nnx.Rngs], nnx.Module]
    input_shape: tuple[int, ...]  # torch layout
    make_input: Callable = rectified_normal


BLOCKS = {
    "basic_k7": BlockCase(lambda: tmodel.Basic3DBlock(1, 4, 7),
                          lambda n, r: jmodel.Basic3DBlock(1, 4, 7, numerics=n, rngs=r), (2, 1, 8, 8, 8),
                          sparse_voxels),
    "basic_k3": BlockCase(lambda: tmodel.Basic3DBlock(3, 4, 3),
                          lambda n, r: jmodel.Basic3DBlock(3, 4, 3, numerics=n, rngs=r), (2, 3, 8, 8, 8)),
    "basic_k1": BlockCase(lambda: tmodel.Basic3DBlock(4, 4, 1),
                          lambda n, r: jmodel.Basic3DBlock(4, 4, 1, numerics=n, rngs=r), (2, 4, 8, 8, 8)),
    "res_conv_skip": BlockCase(lambda: tmodel.Res3DBlock(3, 4),
                               lambda n, r: jmodel.Res3DBlock(3, 4, numerics=n, rngs=r), (2, 3, 8, 8, 8)),
    "res_identity_skip": BlockCase(lambda: tmodel.Res3DBlock(4, 4),
                                   lambda n, r: jmodel.Res3DBlock(4, 4, numerics=n, rngs=r), (2, 4, 8, 8, 8)),
    "pool": BlockCase(lambda: tmodel.Pool3DBlock(2), lambda n, r: jmodel.Pool3DBlock(2), (2, 3, 8, 8, 8)),
    "upsample": BlockCase(lambda: tmodel.Upsample3DBlock(4, 3),
                          lambda n, r: jmodel.Upsample3DBlock(4, 3, numerics=n, rngs=r), (2, 4, 4, 4, 4)),
    "encoder_decoder": BlockCase(lambda: tmodel.EncoderDecoder(4),
                                 lambda n, r: jmodel.EncoderDecoder(4, numerics=n, rngs=r), (2, 4, 8, 8, 8)),
}


def block_pair(name: str, dtype: str = "float64", seed: int = 0, **numerics_fields):
    """(torch block with the authors' init, JAX twin, input in torch layout and the dtype's numpy type)."""
    case = BLOCKS[name]
    torch.manual_seed(seed)
    torch_block = case.make_torch()
    tmodel.initialize(torch_block, "original")
    torch_block = torch_block.to(tmodel.DTYPES[dtype])
    jax_block = case.make_jax(numerics(dtype, **numerics_fields), nnx.Rngs(seed))
    x = case.make_input(case.input_shape, seed=seed + 1).astype(np.dtype(dtype))
    return torch_block, jax_block, x


def model_pair(dtype: str = "float64", width: int = 8, joints: int = 4, seed: int = 0, **numerics_fields):
    """The whole V2V, small, in both frameworks (weights are copied from torch by the comparison)."""
    torch.manual_seed(seed)
    torch_model = tmodel.V2VModel(1, joints, width).to(tmodel.DTYPES[dtype])
    jax_model = jmodel.V2VModel(1, joints, width, numerics=numerics(dtype, **numerics_fields), rngs=nnx.Rngs(seed))
    return torch_model, jax_model
