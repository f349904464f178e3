"""PyTorch state_dict <-> Flax NNX V2V model, BatchNorm running statistics included.

Both directions are pure transposes (no arithmetic), so a round trip is bit-exact when dtypes agree.
Conv3d weight (O, I, kD, kH, kW) <-> kernel (kD, kH, kW, I, O); ConvTranspose3d weight (I, O, 2, 2, 2) <->
kernel (2, 2, 2, I, O); BatchNorm weight/running_mean/running_var <-> scale/mean/var.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from v2v_jax.layers import BatchNorm3d, Conv3d, ConvTranspose3d

CONV_TO_TORCH = (4, 3, 0, 1, 2)
CONVT_TO_TORCH = (3, 4, 0, 1, 2)

# (NNX attribute, torch suffix, permutation to torch layout or None) for each kind of layer.
FIELDS = {
    Conv3d: (("kernel", "weight", CONV_TO_TORCH), ("bias", "bias", None)),
    ConvTranspose3d: (("kernel", "weight", CONVT_TO_TORCH), ("bias", "bias", None)),
    BatchNorm3d: (("scale", "weight", None), ("bias", "bias", None), ("mean", "running_mean", None),
                  ("var", "running_var", None), ("num_batches_tracked", "num_batches_tracked", None)),
}


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


def _fields(model: nnx.Module):
    """Yields (torch key, module, attribute, permutation to torch) for every array of the model."""
    for path, module in nnx.iter_graph(model):
        fields = FIELDS.get(type(module))
        if fields is None:
            continue
        prefix = ".".join(str(p) for p in path)
        for attr, suffix, perm in fields:
            yield f"{prefix}.{suffix}", module, attr, perm


def torch_state_dict(model: nnx.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and BN statistics as a state_dict for `v2v_torch_ref.model.V2VModel`."""
    out = {}
    for key, module, attr, perm in _fields(model):
        value = np.asarray(getattr(module, attr)[...])
        if attr == "num_batches_tracked":
            value = value.astype(np.int64)
        if perm is not None:
            value = value.transpose(perm)
        out[key] = torch.from_numpy(np.array(value, copy=True))
    return out


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict"):
    """Copies a torch state_dict into the model in place (strict: every key used, every shape equal).

    Values keep their own precision and are cast to the dtype of the model's array (float32 -> float64 is exact).
    """
    state_dict = dict(state_dict)
    missing, mismatched = [], []
    for key, module, attr, perm in _fields(model):
        if key not in state_dict:
            if attr != "num_batches_tracked":  # absent from state_dicts of very old PyTorch
                missing.append(key)
            continue
        # A copy: on CPU, jnp.asarray may alias the numpy buffer, which torch updates in place.
        value = np.array(state_dict.pop(key).detach().cpu().numpy(), copy=True)
        if perm is not None:
            value = value.transpose(_inverse(perm))
        variable = getattr(module, attr)
        if value.shape != variable[...].shape:
            mismatched.append(f"{key}: checkpoint {value.shape} vs model {variable[...].shape}")
            continue
        variable[...] = jnp.asarray(value, dtype=variable[...].dtype)
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
    if state_dict:
        extra = sorted(state_dict)
        problems.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)})")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:5]))
    if problems:
        raise ValueError(f"{source}: does not fit this V2V model: " + "; ".join(problems))
    return model


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth file: a bare state_dict, or one under 'model_state_dict'/'state_dict'/'model'.

    A 'module.' prefix (nn.DataParallel) is removed.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
