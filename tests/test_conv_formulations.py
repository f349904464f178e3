"""Every convolution formulation in CONV_IMPLS against lax.conv_general_dilated, in float64: output, input gradient
and kernel gradient; every upsampling formulation in UPSAMPLE_IMPLS against the definition of ConvTranspose3d(2, 2)
and lax.conv_transpose's gradients, in float64 and float32; then the whole network with the CPU default against XLA's
convolution.

Tolerance (derived): each output or gradient entry is a sum of at most K products, K = k^3 * I for the forward and
the input gradient (7^3 * 1 = 343 or 3^3 * 3 = 81 here) and K = batch * output positions (at most 2 * 9 * 10 * 11
= 1,980) for the kernel gradient. Summation in another order differs by at most about K * eps * sum|terms|; with
eps = 1.1e-16 and inputs of unit scale that is below 2e-13 of the largest entry, so 1e-12 relative to the largest
entry of the reference leaves a margin of 5x while a wrong tap, shift or transpose shows up as an O(1) error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from v2v_jax.formulations import (AUTO_CONV, BASE_CONV, CONV_IMPLS, STEM_IMPLS, UPSAMPLE_IMPLS, conv3d, resolve_conv,
                                  upsample2x)
from v2v_jax.layers import Numerics
from v2v_jax.model import V2VModel

TOL = 1e-12
# (batch, D, H, W, in channels, out channels, kernel, padding): V2V's k7 stem with one input channel, its k3 and
# k1 convolutions, and paddings other than (k - 1) / 2, on non-cubic volumes so that a swapped axis cannot pass.
CASES = [
    (1, 9, 8, 10, 1, 3, 7, 3),
    (2, 6, 7, 5, 3, 4, 3, 1),
    (2, 5, 6, 4, 3, 2, 1, 0),
    (1, 6, 5, 7, 2, 3, 3, 0),
    (1, 4, 5, 6, 2, 2, 3, 2),
]


def relative_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def conv_with_grads(impl, x, kernel, padding, cotangent):
    y, vjp = jax.vjp(lambda x, w: conv3d(x, w, padding, impl), x, kernel)
    return (y, *vjp(cotangent))


def _params():
    """Every formulation on every case; shifted_matmul's 343 products of the k7 case take ~45 s to compile: slow."""
    for impl in CONV_IMPLS[1:]:
        for case in CASES:
            slow = impl == "shifted_matmul" and case[6] == 7
            yield pytest.param(impl, case, marks=[pytest.mark.slow] if slow else [],
                               id=f"{impl}-" + "b{}_{}x{}x{}_i{}_o{}_k{}_p{}".format(*case))


@pytest.mark.x64
@pytest.mark.parametrize("impl,case", list(_params()))
def test_formulation_matches_xla_convolution(impl, case):
    n, d, h, w, cin, cout, k, padding = case
    rng = np.random.default_rng(sum(case))
    x = jnp.asarray(rng.standard_normal((n, d, h, w, cin)), jnp.float64)
    kernel = jnp.asarray(rng.standard_normal((k, k, k, cin, cout)), jnp.float64)
    out_shape = (n, *(s + 2 * padding - k + 1 for s in (d, h, w)), cout)
    cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float64)
    expected = conv_with_grads("xla", x, kernel, padding, cotangent)
    got = jax.jit(conv_with_grads, static_argnums=(0, 3))(impl, x, kernel, padding, cotangent)
    for name, g, e in zip(("output", "input gradient", "kernel gradient"), got, expected):
        assert g.shape == e.shape and g.dtype == jnp.float64, name
        assert relative_error(g, e) <= TOL, f"{impl} {name}: {relative_error(g, e):.2e}"


THREE_D_CONVOLUTION = "dim_numbers = [b, 0, 1, 2, f]"  # how StableHLO prints an NDHWC convolution


@pytest.mark.parametrize("impl", sorted(STEM_IMPLS))
def test_stem_hybrids_apply_their_formulation_to_one_channel_inputs_only(impl):
    """The one-channel stem becomes a dot (im2col), a 2D convolution (depth_folded) or FFTs (fft); other inputs
    keep the backend's default formulation. (Their values are checked with every formulation above.)"""
    def hlo(cin, formulation):
        x, kernel = jnp.zeros((1, 8, 8, 8, cin)), jnp.zeros((3, 3, 3, cin, 2))
        return jax.jit(conv3d, static_argnums=(2, 3)).lower(x, kernel, 1, formulation).as_text()

    assert hlo(1, impl).count(THREE_D_CONVOLUTION) == 0
    assert hlo(1, impl) == hlo(1, STEM_IMPLS[impl])
    assert hlo(2, impl) == hlo(2, BASE_CONV.get(jax.default_backend(), "xla"))


def test_auto_resolves_per_backend_to_a_known_formulation():
    assert resolve_conv("auto") == AUTO_CONV.get(jax.default_backend(), "xla")
    assert resolve_conv("auto") in CONV_IMPLS
    assert resolve_conv("im2col") == "im2col"
    assert Numerics().conv == "auto"
    with pytest.raises(ValueError, match="Numerics.conv"):
        Numerics(conv="winograd")


def upsample_definition(x, kernel):
    """ConvTranspose3d(2, 2) from its definition, y[n, 2d+a, 2h+b, 2w+c] = x[n, d, h, w] @ W[a, b, c], in NumPy."""
    y = np.einsum("ndhwi,abcio->ndahbwco", np.asarray(x), np.asarray(kernel))
    n, d, _, h, _, w, _, o = y.shape
    return y.reshape(n, 2 * d, 2 * h, 2 * w, o)


def upsample_with_grads(impl, x, kernel, cotangent):
    y, vjp = jax.vjp(lambda x, w: upsample2x(x, w, impl, jax.lax.Precision.HIGHEST), x, kernel)
    return (y, *vjp(cotangent))


@pytest.mark.x64  # the reference is computed in float64
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("impl", UPSAMPLE_IMPLS)
def test_upsample_formulation_matches_the_definition(impl, dtype):
    """Output against the definition, input and kernel gradients against lax.conv_transpose's, both in float64.

    Tolerance (derived): an output entry is a sum of I products, an input-gradient entry of 8 O and a
    kernel-gradient entry of B d h w (here 3, 16 and 60). Summed in any order in precision u the error is at most
    K u sum|terms|, and sum|terms| is the same operation on |x|, |W|, |g| (computed in float64), so each entry must
    lie within 2 K u of that bound's scale: u = 2^-53 (float64) or 2^-24 (float32); a wrong phase or flip is O(1).
    """
    rng = np.random.default_rng(7)
    x, kernel = rng.standard_normal((2, 3, 2, 5, 3)), rng.standard_normal((2, 2, 2, 3, 2))  # non-cubic: no axis swap
    cotangent = rng.standard_normal((2, 6, 4, 10, 2))
    as64 = lambda *a: [jnp.asarray(v, jnp.float64) for v in a]  # noqa: E731
    expected = [upsample_definition(x, kernel),
                *upsample_with_grads("conv_transpose", *as64(x, kernel, cotangent))[1:]]
    scale = upsample_with_grads("conv_transpose", *as64(np.abs(x), np.abs(kernel), np.abs(cotangent)))
    u = {"float64": 2.0 ** -53, "float32": 2.0 ** -24}[dtype]
    got = jax.jit(upsample_with_grads, static_argnums=0)(impl, *(jnp.asarray(v, dtype) for v in (x, kernel, cotangent)))
    for name, g, e, s, terms in zip(("output", "input gradient", "kernel gradient"), got, expected, scale,
                                    (3, 16, 60)):
        assert g.shape == e.shape and g.dtype == jnp.dtype(dtype), name
        excess = np.max(np.abs(np.asarray(g, np.float64) - np.asarray(e)) - 2 * terms * u * np.asarray(s))
        assert excess <= 0, f"{impl} {dtype} {name}: beyond the bound by {excess:.2e}"


@pytest.mark.x64
@pytest.mark.slow  # ~80 s here: two float64 V2V gradients, XLA's float64 3D convolutions are slow on CPU
def test_network_with_cpu_default_matches_xla_convolutions():
    """V2V forward and parameter gradients, train-mode BN, float64: the CPU formulation vs XLA's convolution.

    Tolerance 1e-10, the parity suite's model-wide float64 tolerance (parity_tests/test_blocks.py derives it). A
    convolution followed by train-mode BatchNorm has a bias gradient of exactly 0 (BN subtracts the batch mean), so
    both sides hold rounding noise there: those are only required to be negligible against the other gradients."""
    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 16, 1)) < 0.2, jnp.float64)

    def output_and_grads(conv):
        numerics = Numerics(dtype=jnp.float64, param_dtype=jnp.float64, conv=conv)
        model = V2VModel(1, 3, width=4, numerics=numerics, rngs=nnx.Rngs(0))
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            y = nnx.merge(graphdef, params, rest, copy=True)(x)
            return jnp.mean(jnp.square(y - 0.5)), y

        grads, y = jax.jit(jax.grad(loss, has_aux=True))(params)
        return y, {jax.tree_util.keystr(path): g for path, g in jax.tree_util.tree_leaves_with_path(grads)}

    y_ref, grads_ref = output_and_grads("xla")
    y, grads = output_and_grads(AUTO_CONV["cpu"])
    assert relative_error(y, y_ref) <= 1e-10
    assert grads.keys() == grads_ref.keys() and len(grads) == 2 * 31 + 2 * 30  # every conv's and BN's two params
    scale = max(float(jnp.max(jnp.abs(g))) for g in grads_ref.values())
    for path, g in grads.items():
        if _is_conv_bias(path, grads) and "output_layer" not in path:  # every other convolution feeds a BN
            assert float(jnp.max(jnp.abs(g))) <= 1e-12 * scale, path
        else:
            assert relative_error(g, grads_ref[path]) <= 1e-10, path


def _is_conv_bias(path: str, grads: dict) -> bool:
    """A bias beside a 'kernel' belongs to a convolution (BatchNorm has 'scale' and 'bias')."""
    return "['bias']" in path and path.replace("['bias']", "['kernel']") in grads


def test_fft_gives_exact_zeros_where_a_window_is_empty():
    """A direct convolution's output is exactly 0 where a k^3 window holds no input (the max pool after V2V's stem
    then sees exact ties, as in PyTorch); the FFT's rounding noise there is removed, elsewhere it matches XLA's."""
    x = np.zeros((1, 12, 12, 12, 1), np.float32)
    x[0, 2, 3, 4, 0] = 1.0
    kernel = jnp.asarray(np.random.default_rng(0).standard_normal((7, 7, 7, 1, 4)), jnp.float32)
    fft, direct = (np.asarray(conv3d(jnp.asarray(x), kernel, 3, impl)) for impl in ("fft", "xla"))
    empty = np.all(direct == 0, axis=-1)
    assert empty.sum() > 1000 and np.all(fft[empty] == 0)
    assert relative_error(fft, direct) <= 1e-6
