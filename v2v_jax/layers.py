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

DIMENSION_NUMBERS = ("NDHWC", "DHWIO", "NDHWC")
INIT_SCHEMES = ("original", "framework")
BATCHNORM_FLAVOURS = ("torch", "flax")
UPSAMPLE_IMPLS = ("einsum", "conv_transpose")
# Formulations of the stride-1 3D convolution (`conv3d`); 'auto' picks per backend from AUTO_CONV.
CONV_IMPLS = ("xla", "shifted_matmul", "im2col", "depth_folded")
AUTO_CONV = {"cpu": "depth_folded"}


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


def resolve_conv(impl: str) -> str:
    """'auto' is the formulation measured fastest on the default backend (docs/benchmarks.md), else `impl`."""
    if impl != "auto":
        return impl
    return AUTO_CONV.get(jax.default_backend(), "xla")


def conv3d(x: jax.Array, kernel: jax.Array, padding: int, impl: str = "xla", precision=None) -> jax.Array:
    """Stride-1 3D convolution (cross-correlation, like torch) with symmetric zero padding."""
    impl = resolve_conv(impl)
    if impl == "xla":
        return lax.conv_general_dilated(x, kernel, window_strides=(1, 1, 1), padding=[(padding, padding)] * 3,
                                        dimension_numbers=DIMENSION_NUMBERS, precision=precision)
    if kernel.shape[:3] == (1, 1, 1) and padding == 0:
        return jnp.einsum("ndhwi,io->ndhwo", x, kernel[0, 0, 0], precision=precision)
    if impl == "shifted_matmul":
        return _conv3d_shifted_matmul(x, kernel, padding, precision)
    if impl == "im2col":
        return _conv3d_im2col(x, kernel, padding, precision)
    return _conv3d_depth_folded(x, kernel, padding, precision)


def _conv3d_shifted_matmul(x, kernel, padding, precision):
    """The same convolution as a sum over k^3 shifted (B*D*H*W, I) @ (I, O) products."""
    k = kernel.shape[0]
    d, h, w = _output_size(x, k, padding)
    xp = _pad_spatial(x, padding)
    out = None
    for a in range(k):
        for b in range(k):
            for c in range(k):
                term = jnp.einsum("ndhwi,io->ndhwo", xp[:, a:a + d, b:b + h, c:c + w, :], kernel[a, b, c],
                                  precision=precision)
                out = term if out is None else out + term
    return out


def _conv3d_im2col(x, kernel, padding, precision):
    """One (B*D*H*W, k^3 I) @ (k^3 I, O) product over the k^3 shifted copies of x side by side."""
    k = kernel.shape[0]
    d, h, w = _output_size(x, k, padding)
    xp = _pad_spatial(x, padding)
    cols = jnp.concatenate([xp[:, a:a + d, b:b + h, c:c + w] for a in range(k) for b in range(k) for c in range(k)],
                           axis=-1)
    return jnp.einsum("ndhwt,to->ndhwo", cols, kernel.reshape(-1, kernel.shape[-1]), precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv3d_depth_folded(x, kernel, padding, precision):
    """2D convolutions over (H, W) of k depth-shifted copies of x side by side as k*I input features.

    XLA's CPU backend runs 2D convolutions on a packed GEMM kernel far faster than 3D ones. The gradients are
    written out (see `_depth_folded_bwd`) because autodiff would lower the kernel gradient to a slow 2D convolution.
    """
    k = kernel.shape[0]
    n, _, h, w, cin = x.shape
    xp = jnp.pad(x, [(0, 0), (padding, padding), (0, 0), (0, 0), (0, 0)])
    depth_out = xp.shape[1] - k + 1
    stacked = jnp.concatenate([xp[:, a:a + depth_out] for a in range(k)], axis=-1)  # features (a, i)
    folded = kernel.transpose(1, 2, 0, 3, 4).reshape(k, k, k * cin, kernel.shape[-1])
    y = lax.conv_general_dilated(stacked.reshape(-1, h, w, k * cin), folded, window_strides=(1, 1),
                                 padding=[(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=precision)
    return y.reshape(n, depth_out, *y.shape[1:])


def _depth_folded_fwd(x, kernel, padding, precision):
    return _conv3d_depth_folded(x, kernel, padding, precision), (x, kernel)


def _depth_folded_bwd(padding, precision, residuals, g):
    """Input gradient: the same convolution of g with the flipped, transposed kernel and padding k - 1 - p.
    Kernel gradient: one GEMM over every (padded) position (see `_depth_folded_kernel_grad`)."""
    x, kernel = residuals
    k = kernel.shape[0]
    flipped = jnp.flip(kernel, (0, 1, 2)).swapaxes(3, 4)
    dx = _conv3d_depth_folded(g, flipped, k - 1 - padding, precision)
    return dx, _depth_folded_kernel_grad(x, g, k, padding, precision)


def _depth_folded_kernel_grad(x, g, k, padding, precision):
    """dK[a, b, c, i, o] = sum over n, d', h, w of xp[n, d', h + b, w + c, i] * g[n, d' - a, h, w, o]: products of
    the k^2 in-plane shifts of x (k^2 I rows) with the k depth shifts of g side by side (k O columns)."""
    cin, cout = x.shape[-1], g.shape[-1]
    h, w = g.shape[2:4]
    xp = _pad_spatial(x, padding)
    shifts = [xp[:, :, b:b + h, c:c + w] for b in range(k) for c in range(k)]
    cols = jnp.concatenate([jnp.pad(g, [(0, 0), (a, k - 1 - a), (0, 0), (0, 0), (0, 0)]) for a in range(k)], axis=-1)
    # The shifts stacked in front: XLA's CPU backend concatenates them along the channels much more slowly.
    dk = jnp.einsum("tndhwi,ndhws->tis", jnp.stack(shifts), cols, precision=precision)
    return dk.reshape(k, k, cin, k, cout).transpose(3, 0, 1, 2, 4)


_conv3d_depth_folded.defvjp(_depth_folded_fwd, _depth_folded_bwd)


def _pad_spatial(x, padding):
    return jnp.pad(x, [(0, 0)] + [(padding, padding)] * 3 + [(0, 0)])


def _output_size(x, k, padding):
    return tuple(s + 2 * padding - k + 1 for s in x.shape[1:4])


def upsample2x(x: jax.Array, kernel: jax.Array, impl: str = "einsum", precision=None) -> jax.Array:
    """ConvTranspose3d(kernel 2, stride 2, padding 0) with kernel (2, 2, 2, I, O) = torch (I, O, 2, 2, 2).

    With k = s = 2 the output windows do not overlap, so y[n, 2d+a, 2h+b, 2w+c] = x[n, d, h, w] @ W[a, b, c].
    """
    if impl == "einsum":
        n, d, h, w, _ = x.shape
        y = jnp.einsum("ndhwi,abcio->ndahbwco", x, kernel, precision=precision)
        return y.reshape(n, 2 * d, 2 * h, 2 * w, kernel.shape[-1])
    # lax.conv_transpose without transpose_kernel correlates with the kernel as given, so flip it spatially.
    return lax.conv_transpose(x, kernel[::-1, ::-1, ::-1], strides=(2, 2, 2), padding="VALID",
                              dimension_numbers=DIMENSION_NUMBERS, precision=precision)


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
