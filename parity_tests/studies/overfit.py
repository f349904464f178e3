"""Overfitting a few synthetic samples under one numerical configuration (a `Variant`), in JAX or PyTorch.

Every variant of a study starts from the same weights (a PyTorch state_dict, converted with `v2v_jax.convert`),
sees the same voxels and joint targets (no augmentation) and records the loss before every step and after the last.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from v2v_jax import convert, geometry
from v2v_jax.data import synth
from v2v_jax.layers import Numerics
from v2v_jax.model import V2VModel
from v2v_jax.train import optim
from v2v_jax.train import step as jax_step
from v2v_torch_ref import model as torch_model_lib
from v2v_torch_ref import train as torch_train
from v2v_torch_ref.backends import torch_switches

CUBE_MM = 200.0  # MSRA's cube: the synthetic hands use MSRA's camera and joints
# Joint sets (MSRA order). The output heatmaps are a 1x1 convolution of `width` feature maps, so a net narrower
# than the number of joints cannot fit them (best rank-8 fit of 21 heatmaps at 12^3: 7 % of the zero-output loss).
JOINT_SETS = {"all": tuple(range(21)), "tips": (0, 4, 8, 12, 16, 20)}  # tips: the wrist and the five fingertips
INITS = ("original", "framework-torch", "framework-flax")
TORCH_DTYPES = ("float32", "float64")  # what the PyTorch reference runs


@dataclasses.dataclass(frozen=True)
class Variant:
    """One numerical configuration of a training run.

    JAX: dtype (bfloat16 = bf16 compute on float32 parameters), batchnorm ('torch' two-pass | 'flax' one-pass),
    precision (None = backend default, TF32 convolutions on Ampere+ GPUs | 'highest'). PyTorch: dtype, and on
    CUDA cudnn (torch.backends.cudnn.enabled), tf32 (cuDNN convolutions and cuBLAS matmuls) and channels_last
    (channels_last_3d model and input, which makes cuDNN use its persistent BatchNorm in training).
    """

    name: str
    framework: str = "jax"
    dtype: str = "float32"
    batchnorm: str = "torch"
    precision: str | None = None
    cudnn: bool = True
    tf32: bool = False
    channels_last: bool = False
    init: str = "original"
    optimizer: str = "rmsprop"
    lr: float | None = None  # None: the study's learning rate
    final_relu: bool = False
    needs_cuda: bool = False  # a torch configuration that only means something on a CUDA device

    def __post_init__(self):
        if self.framework not in ("jax", "torch"):
            raise ValueError(f"{self.name}: framework {self.framework!r} is not 'jax' or 'torch'")
        if self.framework == "torch" and self.dtype not in TORCH_DTYPES:
            raise ValueError(f"{self.name}: the PyTorch reference runs {sorted(TORCH_DTYPES)}, not {self.dtype}")
        if self.init not in INITS:
            raise ValueError(f"{self.name}: init {self.init!r}; choose one of {INITS}")
        if self.final_relu and self.framework != "jax":
            raise ValueError(f"{self.name}: the final-ReLU variant is built in JAX only")


@dataclasses.dataclass(frozen=True)
class Problem:
    """The samples to fit: voxels (B, N, N, N, 1) 0/1, joint grid coordinates (B, J, 3) and their heatmaps."""

    voxels: np.ndarray    # float32
    coords: np.ndarray    # float64: c' of every joint on the N^3 input grid
    heatmaps: np.ndarray  # float64 (B, M, M, M, J), M = N / 2

    @property
    def zero_loss(self) -> float:
        """The MSE of an all-zero output (`geometry.zero_output_loss`)."""
        return float(geometry.zero_output_loss(self.coords, self.grid // 2, dtype=jnp.float64))

    @property
    def grid(self) -> int:
        return self.voxels.shape[1]

    @property
    def num_joints(self) -> int:
        return self.coords.shape[1]


def make_problem(num_samples: int, grid: int, joints: str = "all", seed: int = 0) -> Problem:
    """The first `num_samples` synthetic frames of one hand (one per gesture), voxelised without augmentation;
    `joints` names one of JOINT_SETS."""
    if grid % 4:
        raise ValueError(f"grid {grid}: must be a multiple of 4 (two 2x poolings)")
    frames = synth.generate(max(num_samples, len(synth.cameras.MSRA_GESTURES)), seed=seed, subjects=1)
    voxels, coords = geometry.encode_batch(
        jnp.asarray(frames.depth[:num_samples]), jnp.asarray(frames.centers[:num_samples], jnp.float32),
        jnp.asarray(frames.joints[:num_samples], jnp.float32), None, synth.SPEC, grid, CUBE_MM)
    coords = np.array(coords, np.float64)[:, list(JOINT_SETS[joints])]
    heatmaps = jax.vmap(lambda c: geometry.gaussian_heatmaps(c, grid // 2, dtype=jnp.float64))(coords)
    return Problem(np.array(voxels, np.float32), coords, np.array(heatmaps, np.float64))  # writable copies


def initial_state_dict(init: str, width: int, num_joints: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 weights every variant starts from, in PyTorch's layout (drawn by PyTorch, except Flax's init).

    'original': the authors' N(0, 1e-3^2) weights and U(0, 1) BN scales; 'framework-torch':
    PyTorch's defaults (kaiming-uniform weights and biases, BN scale 1); 'framework-flax': Flax's (truncated
    LeCun-normal weights, zero biases, BN scale 1).
    """
    if init == "framework-flax":
        model = V2VModel(1, num_joints, width, numerics=Numerics(init="framework"), rngs=nnx.Rngs(seed))
        return convert.torch_state_dict(model)
    torch.manual_seed(seed)
    scheme = "framework" if init == "framework-torch" else "original"
    return torch_model_lib.V2VModel(1, num_joints, width, init=scheme).state_dict()


@dataclasses.dataclass
class Result:
    """What one variant did: losses[k] is the loss before step k + 1 (losses[0] the initial loss, losses[-1]
    the loss after the last step); error_voxels the mean joint error of the final output's argmax."""

    variant: Variant
    losses: np.ndarray
    error_voxels: float
    state_dict: dict[str, torch.Tensor]  # trained weights and BN statistics (float64 copies)
    seconds_per_step: float
    batchnorm_ops: str = ""  # PyTorch on CUDA: the BatchNorm operators and kernels a training step launches

    def steps_to(self, factor: float) -> int | None:
        """The first step after which the loss is at most initial / factor (None: never)."""
        hit = np.flatnonzero(self.losses <= self.losses[0] / factor)
        return int(hit[0]) if hit.size else None

    @property
    def diverged_at(self) -> int | None:
        bad = np.flatnonzero(~np.isfinite(self.losses))
        return int(bad[0]) if bad.size else None


def mean_error_voxels(heatmaps: np.ndarray, coords: np.ndarray) -> float:
    """Mean Euclidean distance, in input-grid voxels, between argmax-decoded joints and their targets.

    Argmax decoding alone leaves about 0.96 voxels: a 2-voxel heatmap cell makes the error uniform on [-1, 1) per
    axis, and the mean length of such a 3-D error is 0.96.
    """
    decoded = np.asarray(geometry.decode_grid_coords(jnp.asarray(heatmaps, jnp.float32), dtype=jnp.float64))
    return float(np.linalg.norm(decoded - coords, axis=-1).mean())


# ---------------------------------------------------------------------------------------------------------- JAX


class FinalReLU(nnx.Module):
    """V2V with a ReLU after its output convolution: the bug that held the port author's loss at the all-zero
    output's 3e-4 (dragonbook/V2V-PoseNet-pytorch, doc/some-notes.txt, removed in fa1603b)."""

    def __init__(self, net: V2VModel):
        self.net = net

    def __call__(self, x):
        return jax.nn.relu(self.net(x))


def jax_numerics(variant: Variant, conv: str) -> Numerics:
    numerics = jax_step.numerics_for(variant.dtype, variant.batchnorm, conv=conv)
    precision = None if variant.precision is None else jax.lax.Precision[variant.precision.upper()]
    return dataclasses.replace(numerics, precision=precision)


def shape_of(state_dict) -> tuple[int, int]:
    """(width, joints) of V2V weights."""
    joints, width = state_dict["output_layer.weight"].shape[:2]
    return width, joints


def jax_model(variant: Variant, state_dict, conv: str) -> V2VModel:
    """The JAX V2V of the variant's numerics holding the given weights and statistics."""
    numerics = jax_numerics(variant, conv)
    width, joints = shape_of(state_dict)
    abstract = nnx.eval_shape(lambda: V2VModel(1, joints, width, numerics=numerics, rngs=nnx.Rngs(0)))
    graphdef, shapes = nnx.split(abstract)  # no initialisers run: eager, they compile for tens of seconds on CPU
    model = nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    return convert.load_torch_state_dict(model, state_dict, source=variant.name)


def jax_device(device: str):
    try:
        return jax.devices(device)[0]
    except RuntimeError as e:
        raise RuntimeError(f"JAX sees no {device} device ({e})") from e


def jax_has(device: str) -> bool:
    try:
        return bool(jax.devices(device))
    except RuntimeError:
        return False


def train_jax(variant: Variant, problem: Problem, init: dict, *, steps: int, lr: float, conv: str,
              device: str = "cpu") -> Result:
    with jax.default_device(jax_device(device)):
        model = jax_model(variant, init, conv)
        net = FinalReLU(model) if variant.final_relu else model
        tx = optim.make_optimizer(variant.optimizer, lr)
        train_def, _, state = jax_step.init_state(net, tx, seed=0)
        update = jax.jit(jax_step.make_update(train_def, tx))
        dtype = model.numerics.dtype
        voxels = jnp.asarray(problem.voxels, dtype)
        coords = jnp.asarray(problem.coords, model.numerics.stat_dtype)
        losses, start = [], None
        for k in range(steps):
            state, metrics = update(state, voxels, coords)
            losses.append(metrics["loss"])
            if k == 0:
                jax.block_until_ready(metrics)
                start = time.perf_counter()
        jax.block_until_ready(state)
        per_step = (time.perf_counter() - start) / max(steps - 1, 1) if start is not None else math.nan
        trained = nnx.merge(train_def, state.params, state.batch_stats)
        weights = convert.torch_state_dict(trained.net if variant.final_relu else trained)
        forward = jax.jit(lambda params, stats, x: nnx.merge(train_def, params, stats, copy=True)(x))
        final = forward(state.params, state.batch_stats, voxels)  # train mode, as the steps; statistics dropped
        losses.append(geometry.heatmap_mse(final, coords))
        losses = np.asarray(jax.device_get(losses), np.float64)
        error = mean_error_voxels(np.asarray(final, np.float32), problem.coords)
    return Result(variant, losses, error, _float64(weights), per_step)


# ------------------------------------------------------------------------------------------------------ PyTorch


def torch_backend(variant: Variant):
    """The variant's cuDNN and TF32 switches for the duration of the block."""
    return torch_switches(cudnn=variant.cudnn, tf32=variant.tf32)


def memory_format(variant: Variant) -> torch.memory_format:
    return torch.channels_last_3d if variant.channels_last else torch.contiguous_format


def torch_model(variant: Variant, state_dict, device: str) -> torch.nn.Module:
    width, joints = shape_of(state_dict)
    model = torch_model_lib.V2VModel(1, joints, width).to(device=device, dtype=torch_model_lib.DTYPES[variant.dtype])
    model.load_state_dict(state_dict)  # after the cast: loading float64 weights into float32 would round them
    return model.to(memory_format=memory_format(variant))


def to_torch(array: np.ndarray, variant: Variant, device: str) -> torch.Tensor:
    """(B, D, H, W, C) NumPy -> (B, C, D, H, W) tensor in the variant's dtype and memory format."""
    tensor = torch.from_numpy(np.moveaxis(array, -1, 1).copy())
    dtype = torch_model_lib.DTYPES[variant.dtype]
    return tensor.to(device=device, dtype=dtype).contiguous(memory_format=memory_format(variant))


def train_torch(variant: Variant, problem: Problem, init: dict, *, steps: int, lr: float,
                device: str = "cpu") -> Result:
    with torch_backend(variant):
        model = torch_model(variant, init, device)
        optimizer = torch_train.make_optimizer(model.parameters(), variant.optimizer, lr)
        voxels, heatmaps = to_torch(problem.voxels, variant, device), to_torch(problem.heatmaps, variant, device)
        losses, start = [], None
        for k in range(steps):
            losses.append(torch_train.train_step(model, optimizer, voxels, heatmaps))
            if k == 0:
                losses[0] = losses[0].item()
                start = time.perf_counter()
        weights = _float64(model.state_dict())  # synchronises with the device
        per_step = (time.perf_counter() - start) / max(steps - 1, 1) if start is not None else math.nan
        with torch.no_grad():
            final = model(voxels)  # train mode, as the steps ran; the statistics it updates are not kept
            losses.append(torch.nn.functional.mse_loss(final, heatmaps))
        losses = np.array([float(x) for x in losses], np.float64)
        final = np.moveaxis(final.float().cpu().numpy(), 1, -1)
        ops = batchnorm_ops(model, voxels, heatmaps) if device == "cuda" else ""
    return Result(variant, losses, mean_error_voxels(final, problem.coords), weights, per_step, ops)


def batchnorm_ops(model: torch.nn.Module, voxels: torch.Tensor, heatmaps: torch.Tensor) -> str:
    """The distinct BatchNorm operators (aten::cudnn_batch_norm or aten::native_batch_norm, ...) and CUDA kernels
    of one training forward and backward pass, which tell cuDNN's persistent mode from its plain one."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    try:
        with torch.profiler.profile(activities=activities) as prof:
            torch.nn.functional.mse_loss(model(voxels), heatmaps).backward()
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
    except Exception as e:  # noqa: BLE001 - a missing profiler must not lose the study's results
        return f"profiler failed ({type(e).__name__}: {e})"
    finally:
        model.zero_grad(set_to_none=True)
    return "; ".join(sorted({n[:80] for n in names if re.search(r"batch_?norm|\bbn_", n, re.IGNORECASE)}))


def _float64(state_dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().to(torch.float64) if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in state_dict.items()}


def train(variant: Variant, problem: Problem, init: dict, *, steps: int, lr: float, conv: str,
          device: str) -> Result:
    """Runs the variant; `device` is 'cpu' or 'gpu' (PyTorch: 'cuda'), `variant.lr` overrides `lr`."""
    lr = variant.lr if variant.lr is not None else lr
    if variant.framework == "jax":
        return train_jax(variant, problem, init, steps=steps, lr=lr, conv=conv, device=device)
    return train_torch(variant, problem, init, steps=steps, lr=lr, device="cuda" if device == "gpu" else "cpu")
