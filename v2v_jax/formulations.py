"""The formulations of V2V's two linear operators, each computing exactly the same function (NDHWC, DHWIO).

`conv3d`: the stride-1 3D convolution, as XLA's own (`xla`), k^3 shifted products (`shifted_matmul`), one GEMM
over the k^3 shifted copies (`im2col`), 2D convolutions over k depth-shifted copies (`depth_folded`), a product of
real FFTs (`fft`), or one of `im2col`, `depth_folded`, `fft` for the one-channel stem only, the backend's default
for every other convolution (`im2col_stem`, `folded_stem`, `fft_stem`).
`upsample2x`: ConvTranspose3d(kernel 2, stride 2) as an einsum, `lax.conv_transpose`, an explicitly padded
convolution, a 1^3 convolution with depth-to-space, or eight separate phase products.
Which one a backend uses by default, and the benchmark that chose it, is stated at each choice below.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NDHWC", "DHWIO", "NDHWC")
# Formulations of the stride-1 3D convolution (`conv3d`); 'auto' picks per backend from AUTO_CONV.
CONV_IMPLS = ("xla", "shifted_matmul", "im2col", "depth_folded", "fft", "im2col_stem", "folded_stem", "fft_stem")
# The hybrids: a formulation for convolutions of one input channel (V2V's 7^3 stem: the one block where XLA's GPU
# convolution lost to PyTorch's, 1.26x, on an H200, and 4.1x PyTorch's time on CPU: docs/benchmarks.md), the
# backend's BASE_CONV for every other.
STEM_IMPLS = {"im2col_stem": "im2col", "folded_stem": "depth_folded", "fft_stem": "fft"}
# Chosen by `python bench/conv.py` and `python bench/train_step.py --conv xla|depth_folded` (docs/benchmarks.md,
# "Training step and inference"): on CPU depth_folded took 0.29-2.9x torch's time per convolution where XLA's
# took 1.2-8x; GPUs keep XLA's (cuDNN) convolution until bench/conv.py on a GPU says otherwise. BASE_CONV is what a
# hybrid uses beside its stem: never a hybrid, whatever AUTO_CONV names.
BASE_CONV = {"cpu": "depth_folded"}
AUTO_CONV = dict(BASE_CONV)
# Formulations of ConvTranspose3d(k=2, s=2) (`upsample2x`); the default, einsum, was chosen by
# `python bench/upsample.py` (docs/benchmarks.md, "ConvTranspose3d formulation": conv_transpose 13-30x slower
# on CPU; on an H200 the einsum form ran at 0.43-0.50x cuDNN's transposed convolution inside the step profile).
UPSAMPLE_IMPLS = ("einsum", "conv_transpose", "pad_conv", "depth_to_space", "phases")


def resolve_conv(impl: str) -> str:
    """'auto' is the formulation measured fastest on the default backend (docs/benchmarks.md), else `impl`."""
    if impl != "auto":
        return impl
    return AUTO_CONV.get(jax.default_backend(), "xla")


def conv3d(x: jax.Array, kernel: jax.Array, padding: int, impl: str = "xla", precision=None) -> jax.Array:
    """Stride-1 3D convolution (cross-correlation, like torch) with symmetric zero padding."""
    impl = resolve_conv(impl)
    if impl in STEM_IMPLS:
        impl = STEM_IMPLS[impl] if kernel.shape[3] == 1 else BASE_CONV.get(jax.default_backend(), "xla")
    if impl == "fft":
        return _conv3d_fft(x, kernel, padding)
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


def _conv3d_fft(x, kernel, padding):
    """The correlation as the convolution with the flipped kernel, a product of real FFTs over (D, H, W), each
    axis zero-padded to a 5-smooth length >= size + k - 1 (no wrap-around reaches the output). Its rounding is
    norm-wise, like a sum's (relative Frobenius ~u log n); XLA's FFT takes float32 or float64, so bfloat16 inputs
    are transformed in float32. `precision` has no FFT counterpart."""
    k = kernel.shape[0]
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    lengths = [_smooth(s + k - 1) for s in x.shape[1:4]]
    spectrum = jnp.fft.rfftn(x.astype(dtype), s=lengths, axes=(1, 2, 3))
    kernel_spectrum = jnp.fft.rfftn(jnp.flip(kernel.astype(dtype), (0, 1, 2)), s=lengths, axes=(0, 1, 2))
    full = jnp.fft.irfftn(jnp.einsum("ndhwi,dhwio->ndhwo", spectrum, kernel_spectrum), s=lengths, axes=(1, 2, 3))
    start = k - 1 - padding
    d, h, w = _output_size(x, k, padding)
    y = full[:, start:start + d, start:start + h, start:start + w]
    # Where a window holds no nonzero input, a direct convolution gives exactly 0 and the FFT rounding noise:
    # zero it in the value (not the gradient, which is the same function's), so later ties stay exact.
    noise = jnp.where(_window_occupied(x, k, padding), 0, y)
    return (y - lax.stop_gradient(noise)).astype(x.dtype)


def _window_occupied(x, k, padding):
    """Whether each output's k^3 window (any channel) holds a nonzero input: separable counts of nonzeros."""
    occupied = jnp.any(x != 0, axis=-1, keepdims=True).astype(jnp.float32)
    for axis in (1, 2, 3):
        window, widths = [1] * 5, [(0, 0)] * 5
        window[axis], widths[axis] = k, (padding, padding)
        occupied = lax.reduce_window(occupied, 0.0, lax.add, window, (1,) * 5, widths)
    return occupied > 0


def _smooth(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFT lengths that pocketfft and cuFFT transform without a prime factor > 5."""
    def rough_part(m: int) -> int:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m

    while rough_part(n) != 1:
        n += 1
    return n


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

    With k = s = 2 the output windows do not overlap, so y[n, 2d+a, 2h+b, 2w+c] = x[n, d, h, w] @ W[a, b, c]:
    eight phases, each an (I, O) product. The formulations differ in what XLA is asked to run:
    einsum: one product to the eight phases, written interleaved; conv_transpose: `lax.conv_transpose` (a
    convolution with lhs_dilation, whose 3D gradient cuDNN ran 25-32x slower than PyTorch's: jax-ml/jax #31662);
    pad_conv: the input interleaved with zeros by an explicit `lax.pad`, then a plain 2^3 convolution (the form
    equinox adopted for ConvTranspose, patrick-kidger/equinox #1259: no lhs_dilation, but 8x the multiplications);
    depth_to_space: one 1^3 convolution to 8 O features, then the phases moved into space; phases: the eight
    products separately, then interleaved.
    """
    n, d, h, w, _ = x.shape
    cout = kernel.shape[-1]
    if impl == "einsum":
        y = jnp.einsum("ndhwi,abcio->ndahbwco", x, kernel, precision=precision)
        return y.reshape(n, 2 * d, 2 * h, 2 * w, cout)
    # Both convolution forms correlate with the kernel as given, so they flip it spatially.
    flipped = kernel[::-1, ::-1, ::-1]
    if impl == "conv_transpose":
        return lax.conv_transpose(x, flipped, strides=(2, 2, 2), padding="VALID",
                                  dimension_numbers=DIMENSION_NUMBERS, precision=precision)
    if impl == "pad_conv":
        dilated = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(1, 1, 1)] * 3 + [(0, 0, 0)])
        return lax.conv_general_dilated(dilated, flipped, window_strides=(1, 1, 1), padding="VALID",
                                        dimension_numbers=DIMENSION_NUMBERS, precision=precision)
    if impl == "depth_to_space":
        wide = kernel.transpose(3, 0, 1, 2, 4).reshape(1, 1, 1, -1, 8 * cout)  # features (a, b, c, o)
        z = lax.conv_general_dilated(x, wide, window_strides=(1, 1, 1), padding="VALID",
                                     dimension_numbers=DIMENSION_NUMBERS, precision=precision)
    else:
        z = jnp.stack([jnp.einsum("ndhwi,io->ndhwo", x, kernel[a, b, c], precision=precision)
                       for a in range(2) for b in range(2) for c in range(2)], axis=4)
    z = z.reshape(n, d, h, w, 2, 2, 2, cout).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return z.reshape(n, 2 * d, 2 * h, 2 * w, cout)
