"""The layers V2V needs, with PyTorch semantics, in Flax NNX (NDHWC layout, DHWIO kernels).

Parameter names follow Flax (kernel, bias, scale, mean, var); `v2v_jax.convert` maps them to PyTorch keys.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from v2v_jax.formulations import CONV_IMPLS, UPSAMPLE_IMPLS, conv3d, upsample2x

INIT_SCHEMES = ("original", "framework")
BATCHNORM_FLAVOURS = ("torch", "flax")


@dataclasses.dataclass(frozen=True)
class Numerics:
    """How the network computes: dtypes, BatchNorm flavour, and the formulation of each convolution.

    dtype: compute dtype of activations; param_dtype: storage dtype of parameters and BN statistics.
    batchnorm: 'torch' (two-pass variance, unbiased running variance) or 'flax' (E[x^2]-E[x]^2, biased).
    precision: lax precision for convolutions (None = backend default, which is TF32 on Ampere+ GPUs).
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    batchnorm: str = "torch"
    upsample: str = "einsum"
    conv: str = "auto"
    precision: Any = None
    init: str = "original"

    def __post_init__(self):
        for name, value, allowed in (("batchnorm", self.batchnorm, BATCHNORM_FLAVOURS),
                                     ("upsample", self.upsample, UPSAMPLE_IMPLS),
                                     ("conv", self.conv, ("auto",) + CONV_IMPLS),
                                     ("init", self.init, INIT_SCHEMES)):
            if value not in allowed:
                raise ValueError(f"Numerics.{name}={value!r}; choose one of {allowed}")

    @property
    def stat_dtype(self):
        """BatchNorm statistics are computed in at least float32, whatever the compute dtype."""
        return jnp.promote_types(self.dtype, jnp.float32)


def kernel_init(numerics: Numerics) -> Callable:
    if numerics.init == "original":
        return nnx.initializers.normal(stddev=1e-3)
    return nnx.initializers.lecun_normal()


def add_bias(y: jax.Array, bias: jax.Array, numerics: Numerics) -> jax.Array:
    """y + bias, summed in at least float32: the bias gradient reduces over every voxel, and a bfloat16 sum of
    thousands of same-signed terms stalls (e.g. 1024 x 0.1 sums to 32)."""
    return (y.astype(numerics.stat_dtype) + bias.astype(numerics.stat_dtype)).astype(numerics.dtype)


def _windows(x: jax.Array, size: int) -> jax.Array:
    """(N, D, H, W, C) -> (N, D/s, s, H/s, s, W/s, s, C), cropped to whole windows as torch's floor mode does."""
    n, d, h, w, c = x.shape
    d, h, w = d // size, h // size, w // size
    return x[:, :d * size, :h * size, :w * size].reshape(n, d, size, h, size, w, size, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, size: int) -> jax.Array:
    """MaxPool3d(kernel=size, stride=size); its gradient goes to the first maximum of a window, as in torch.

    A reshape and a max rather than `lax.reduce_window`, whose forward and backward took 3.3x PyTorch's time on the
    CPU; the custom VJP keeps torch's tie rule, which `max`'s own gradient (shared among equal maxima) would not.
    """
    return _windows(x, size).max(axis=(2, 4, 6))


def _max_pool_fwd(x, size):
    y = max_pool(x, size)
    return y, (x, y)


def _max_pool_bwd(size, residuals, g):
    x, y = residuals
    windows = _windows(x, size)
    a, b, c = (lax.broadcasted_iota(jnp.int32, (1, 1, size, 1, size, 1, size, 1), axis) for axis in (2, 4, 6))
    position = (a * size + b) * size + c  # scan order of a window, depth first: torch's "first"
    hits = windows == y[:, :, None, :, None, :, None, :]
    first = jnp.min(jnp.where(hits, position, size ** 3), axis=(2, 4, 6), keepdims=True)
    dx = jnp.where(position == first, g[:, :, None, :, None, :, None, :], 0).astype(x.dtype)
    dx = dx.reshape(windows.shape[0], *(n * size for n in y.shape[1:4]), x.shape[-1])
    return (jnp.pad(dx, [(0, 0)] + [(0, full - part) for full, part in zip(x.shape[1:4], dx.shape[1:4])] + [(0, 0)]),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv3d(nnx.Module):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, *, numerics: Numerics, rngs: nnx.Rngs):
        k = kernel_size
        self.kernel = nnx.Param(kernel_init(numerics)(rngs.params(), (k, k, k, in_planes, out_planes),
                                                      numerics.param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_planes,), numerics.param_dtype))
        self.padding = (k - 1) // 2
        self.numerics = numerics

    def __call__(self, x):
        n = self.numerics
        y = conv3d(x.astype(n.dtype), self.kernel[...].astype(n.dtype), self.padding, n.conv, n.precision)
        return add_bias(y, self.bias[...], n)


class ConvTranspose3d(nnx.Module):
    """Kernel 2, stride 2, padding 0: exactly doubles each spatial size."""

    def __init__(self, in_planes: int, out_planes: int, *, numerics: Numerics, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kernel_init(numerics)(rngs.params(), (2, 2, 2, in_planes, out_planes),
                                                      numerics.param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_planes,), numerics.param_dtype))
        self.numerics = numerics

    def __call__(self, x):
        n = self.numerics
        y = upsample2x(x.astype(n.dtype), self.kernel[...].astype(n.dtype), n.upsample, n.precision)
        return add_bias(y, self.bias[...], n)


class BatchNorm3d(nnx.Module):
    """BatchNorm over (N, D, H, W) per channel, PyTorch semantics by default.

    'torch': variance as mean((x - mean)^2) (two passes), running variance updated with the unbiased n/(n-1)
    estimate, rm <- (1 - 0.1) rm + 0.1 mean. 'flax': variance as E[x^2] - E[x]^2 and a biased running
    variance, as `nnx.BatchNorm(use_fast_variance=True)`. Under a sharded jit the means are over the global batch.
    """

    momentum = 0.1
    epsilon = 1e-5

    def __init__(self, num_features: int, *, numerics: Numerics, rngs: nnx.Rngs):
        pd = numerics.param_dtype
        if numerics.init == "original":
            scale = jax.random.uniform(rngs.params(), (num_features,), pd)
        else:
            scale = jnp.ones((num_features,), pd)
        self.scale = nnx.Param(scale)
        self.bias = nnx.Param(jnp.zeros((num_features,), pd))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), pd))
        self.var = nnx.BatchStat(jnp.ones((num_features,), pd))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.use_running_average = False
        self.numerics = numerics

    def __call__(self, x):
        n = self.numerics
        xs = x.astype(n.stat_dtype)
        if self.use_running_average:
            mean, var = self.mean[...].astype(n.stat_dtype), self.var[...].astype(n.stat_dtype)
        else:
            mean, var = batch_moments(xs, n.batchnorm)
            count = xs.size // xs.shape[-1]
            running_var = var * (count / max(count - 1, 1)) if n.batchnorm == "torch" else var
            m = self.momentum
            self.mean[...] = ((1 - m) * self.mean[...] + m * mean).astype(self.mean.dtype)
            self.var[...] = ((1 - m) * self.var[...] + m * running_var).astype(self.var.dtype)
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        inv = lax.rsqrt(var + self.epsilon) * self.scale[...].astype(n.stat_dtype)
        y = (xs - mean) * inv + self.bias[...].astype(n.stat_dtype)
        return y.astype(n.dtype)


def batch_moments(x: jax.Array, flavour: str) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    if flavour == "torch":
        var = jnp.mean(jnp.square(x - mean), axes)
    else:
        var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
    return mean, var


class ReLU(nnx.Module):
    """Stateless, so that block indices match torch's Sequential (conv, bn, relu)."""

    def __call__(self, x):
        return jax.nn.relu(x)


def sequential(layers, x):
    for layer in layers:
        x = layer(x)
    return x
