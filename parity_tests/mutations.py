"""Planted bugs that prove the anchored parity checker: each one is a bug of a kind users hit, planted in one
framework at a time, and the checker must catch it and name the block, the op and the framework where it lies.

    python -m parity_tests.mutations                         # width 32, 32^3, float32, CPU; 5 unmodified seeds
    python -m parity_tests.mutations --dtype float64 --json results.json
    python -m parity_tests.mutations --grid 16 --width 8 --seeds 1 --only bn_eps_1e-3 --only avg_pool_once

Prints a markdown table, one row per bug (caught? first divergence named, right block, op and framework?) and
per unmodified seed (false alarm?), and the totals.

A bug is planted by a zero-argument context-manager factory (`Mutation.patch`), which `run_anchored` enters
around everything one framework does: it monkeypatches a method, a module global or a class attribute of
`v2v_jax` or `v2v_torch_ref` (or of the loss the checker gives a framework), and undoes it on exit. A bug meant
for one layer marks that layer of every V2V model built inside the context (`MARK`), and the patched method
dispatches on the mark, so the bug follows the layer through copies, clones and jitted traces and stays out of
every other layer. JAX patches clear JAX's trace caches on entry and exit: a function traced before the patch
would otherwise run its unpatched trace (and one traced inside, its patched trace afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from parity_tests import anchored
from parity_tests import verdict as V
from parity_tests.compare import OUTPUT
from v2v_jax import convert, layers
from v2v_jax import model as jmodel
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.train import optim as joptim
from v2v_torch_ref import model as tmodel
from v2v_torch_ref import train as ttrain

MARK = "planted_bug"  # attribute naming the bug planted in a layer (its value: the mutation's name)

# The ops a first divergence can be localised to: the op kinds of the op-level localiser (parity_tests/ops.py), and
# the optimiser and the init, which the checker names where only the tensors after the first step disagree.
CONV, BN_NORMALISE, BN_STATISTICS, RELU, POOL, UPSAMPLE, RESIDUAL_ADD, LOSS, OPTIMIZER, INIT = (
    "conv", "BN normalise", "BN statistics", "ReLU", "pool", "upsample", "residual add", "loss", "optimizer",
    "init")


@dataclasses.dataclass(frozen=True)
class Mutation:
    """A planted bug and where it lies: `block` is the torch key of the innermost block holding it (OUTPUT for the
    output layer and the loss; None where no block is at fault, e.g. the optimiser), `op` the op inside it."""

    name: str
    framework: str  # V.JAX or V.TORCH
    block: str | None
    op: str
    what: str
    patch: Callable[[], ContextManager]
    rounding_only: bool = False  # the float64 runs are unchanged: only the rounding comparison can see it


# ---------------------------------------------------------------------------------------------------- planting


def _module_at(model, path: str):
    """The submodule at a torch key ('' = the model), in either framework (nnx.List and Sequential index alike)."""
    module = model
    for part in path.split(".") if path else ():
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _marking(model_cls, where, name: str, **attrs):
    """Patches `model_cls.__init__` so that every model built marks some of its modules with the bug's name (and
    sets `attrs` on them): those at the torch keys in `where`, or every instance of `where` if it is a class."""
    original = model_cls.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if isinstance(where, type):
            modules = [m for m in _submodules(self) if isinstance(m, where)]
        else:
            modules = [_module_at(self, path) for path in where]
        for module in modules:
            for attr, value in {MARK: name, **attrs}.items():
                setattr(module, attr, value)

    return mock.patch.object(model_cls, "__init__", init)


def _submodules(model):
    if isinstance(model, torch.nn.Module):
        return list(model.modules())
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)]


def _dispatch(cls, method: str, name: str, buggy: Callable):
    """Patches `cls.method` to run `buggy(self, original, *args)` on modules marked with `name`."""
    original = getattr(cls, method)

    @functools.wraps(original)
    def dispatched(self, *args, **kwargs):
        if getattr(self, MARK, None) == name:
            return buggy(self, original, *args, **kwargs)
        return original(self, *args, **kwargs)

    return mock.patch.object(cls, method, dispatched)


@contextlib.contextmanager
def _entered(patchers, *, clear_jax: bool) -> Iterator[None]:
    if clear_jax:
        jax.clear_caches()
    try:
        with contextlib.ExitStack() as stack:
            for p in patchers:
                stack.enter_context(p)
            yield
    finally:
        if clear_jax:
            jax.clear_caches()


def _jax(*patchers) -> Callable[[], ContextManager]:
    return lambda: _entered(patchers, clear_jax=True)


def _torch(*patchers) -> Callable[[], ContextManager]:
    return lambda: _entered(patchers, clear_jax=False)


def in_layer(framework: str, path: str, cls, method: str, buggy: Callable, name: str) -> list:
    """The patchers that plant `buggy` (see `_dispatch`) in the one module at `path` of each V2V model built."""
    model_cls = jmodel.V2VModel if framework == V.JAX else tmodel.V2VModel
    return [_marking(model_cls, [path], name), _dispatch(cls, method, name, buggy)]


def _with_global(module, attr: str, value) -> Callable:
    """A buggy method: the original run with `module.attr` replaced while it runs (traces, for JAX)."""
    def buggy(self, original, *args, **kwargs):
        with mock.patch.object(module, attr, value):
            return original(self, *args, **kwargs)

    return buggy


def _after(transform: Callable) -> Callable:
    """A buggy method: the original's output passed through `transform`."""
    return lambda self, original, *args, **kwargs: transform(original(self, *args, **kwargs))


class _Proxy:
    """A module seen with some attributes replaced (to change what one function of the product calls)."""

    def __init__(self, target, **overrides):
        self._target, self._overrides = target, overrides

    def __getattr__(self, name):
        return self._overrides[name] if name in self._overrides else getattr(self._target, name)


def _forcing(function: Callable, **forced) -> Callable:
    """`function` called with `forced` keyword arguments whatever its caller passes."""
    return lambda *args, **kwargs: function(*args, **{**kwargs, **forced})


def _optax_rmsprop(**forced) -> Callable[[], ContextManager]:
    """The product's optimiser factory (v2v_jax/train/optim.py) calling optax.rmsprop with `forced` arguments."""
    return _jax(mock.patch.object(joptim, "optax", _Proxy(optax, rmsprop=_forcing(optax.rmsprop, **forced))))


def _converted(edit: Callable[[str, torch.Tensor], torch.Tensor]) -> Callable[[], ContextManager]:
    """The torch -> JAX converter passing each (key, tensor) of the state_dict through `edit` first."""
    original = convert.load_torch_state_dict

    def load(model, state_dict, source="state_dict"):
        return original(model, {k: edit(k, v) for k, v in state_dict.items()}, source=source)

    return _jax(mock.patch.object(convert, "load_torch_state_dict", load))


# ------------------------------------------------------------------------------------------------ the bugs


def _torch_batchnorm(bn, x, *, normalise_unbiased: bool, running_unbiased: bool):
    """A hand-written BatchNorm3d in train mode (as a port writes it), with either variance in either place."""
    dims, n = (0, 2, 3, 4), x.numel() // x.shape[1]
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    with torch.no_grad():
        m = bn.momentum
        bn.running_mean.mul_(1 - m).add_(m * mean)
        bn.running_var.mul_(1 - m).add_(m * (var * n / (n - 1) if running_unbiased else var))
        bn.num_batches_tracked.add_(1)
    used = var * n / (n - 1) if normalise_unbiased else var
    shape = (1, -1, 1, 1, 1)
    return ((x - mean.view(shape)) / torch.sqrt(used.view(shape) + bn.eps) * bn.weight.view(shape)
            + bn.bias.view(shape))


def _shift_depth(y: jax.Array) -> jax.Array:
    """y'[d] = y[d + 1], zero past the end: an output aligned one voxel off along D."""
    return jnp.pad(y[:, 1:], [(0, 0), (0, 1), (0, 0), (0, 0), (0, 0)])


def _through_bfloat16(y: jax.Array) -> jax.Array:
    """A float32 result rounded to bfloat16 (a mixed-precision setting leaking into one layer); float64 untouched,
    so only the rounding comparison can see it."""
    return y.astype(jnp.bfloat16).astype(y.dtype) if y.dtype == jnp.float32 else y


def _skip_free_encoder_decoder(self, original, x):
    """EncoderDecoder.forward with its second skip join (x + skip_x2) left out."""
    del original
    skip_x1 = self.skip_res1(x)
    x = self.encoder_res1(self.encoder_pool1(x))
    self.skip_res2(x)  # still computed (and recorded), never added
    x = self.mid_res(self.encoder_res2(self.encoder_pool2(x)))
    x = self.decoder_upsample2(self.decoder_res2(x))
    x = self.decoder_upsample1(self.decoder_res1(x))
    return x + skip_x1


def _running_average_in_training(bn, original, x):
    """nnx.BatchNorm(use_running_average=True) left on in training: running statistics normalise, none update."""
    object.__setattr__(bn, "use_running_average", True)
    try:
        return original(bn, x)
    finally:
        object.__setattr__(bn, "use_running_average", False)


def _statistics_not_written(bn, original, x):
    """The updated batch statistics dropped (a functional step that does not return its BatchStat state)."""
    saved = bn.mean[...], bn.var[...], bn.num_batches_tracked[...]
    y = original(bn, x)
    bn.mean[...], bn.var[...], bn.num_batches_tracked[...] = saved
    return y


def _moments_without_mean_gradient(x, flavour):
    mean, var = _ORIGINAL_BATCH_MOMENTS(x, flavour)
    return jax.lax.stop_gradient(mean), var


def _torch_init_std(model, scheme="original"):
    """The authors' init with conv weights drawn at std 1e-2 instead of 1e-3."""
    _ORIGINAL_TORCH_INIT(model, scheme)
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, 0.01)


_ORIGINAL_TORCH_INIT = tmodel.initialize
_ORIGINAL_BATCH_MOMENTS = layers.batch_moments  # the patch replaces layers.batch_moments with a caller of this
_ORIGINAL_TORCH_LOSS = anchored.torch_loss
_ED = "encoder_decoder."


def _perturbed(key: str, seed: int = 0) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """The converter scaling one tensor by (1 + 1e-3 N(0, 1)) elementwise."""
    def edit(k, v):
        if k != key:
            return v
        noise = np.random.default_rng(seed).standard_normal(tuple(v.shape))
        return v * torch.as_tensor(1 + 1e-3 * noise, dtype=v.dtype)
    return edit


def _jax_layer(path, cls, method, buggy, name):
    return _jax(*in_layer(V.JAX, path, cls, method, buggy, name))


def _torch_layer(path, cls, method, buggy, name):
    return _torch(*in_layer(V.TORCH, path, cls, method, buggy, name))


def _mutations() -> tuple[Mutation, ...]:
    J, T = V.JAX, V.TORCH
    m = []

    def add(name, framework, block, op, what, patch_for_name, rounding_only=False):
        m.append(Mutation(name, framework, block, op, what, patch_for_name(name), rounding_only))

    # BatchNorm
    add("bn_unbiased_var_in_normalisation", T, _ED + "mid_res", BN_NORMALISE,
        "a hand-written BN normalises with the unbiased variance (x.var() default)",
        lambda n: _torch_layer(_ED + "mid_res.res_branch.1", nn.BatchNorm3d, "forward",
                               lambda bn, _o, x: _torch_batchnorm(bn, x, normalise_unbiased=True,
                                                                  running_unbiased=True), n))
    add("bn_biased_running_var", T, _ED + "decoder_res2", BN_STATISTICS,
        "a hand-written BN updates the running variance with the biased variance",
        lambda n: _torch_layer(_ED + "decoder_res2.res_branch.4", nn.BatchNorm3d, "forward",
                               lambda bn, _o, x: _torch_batchnorm(bn, x, normalise_unbiased=False,
                                                                  running_unbiased=False), n))
    add("bn_eps_1e-3", J, "front_layers.0", BN_NORMALISE, "BatchNorm epsilon 1e-3 instead of 1e-5 (every BN)",
        lambda n: _jax(mock.patch.object(layers.BatchNorm3d, "epsilon", 1e-3)))
    add("bn_eps_1e-3_one_layer", T, "back_layers.0", BN_NORMALISE, "BatchNorm3d(eps=1e-3) in one layer",
        lambda n: _torch(_marking(tmodel.V2VModel, ["back_layers.0.res_branch.1"], n, eps=1e-3)))
    add("bn_momentum_0.9", T, "front_layers.0", BN_STATISTICS,
        "BatchNorm3d(momentum=0.9): the Keras/Flax convention (weight of the old value) given to torch",
        lambda n: _torch(_marking(tmodel.V2VModel, nn.BatchNorm3d, n, momentum=0.9)))
    add("bn_momentum_0.9_one_layer", J, _ED + "skip_res2", BN_STATISTICS,
        "momentum 0.9 where the torch convention wants 0.1, in one layer",
        lambda n: _jax(_marking(jmodel.V2VModel, [_ED + "skip_res2.res_branch.1"], n, momentum=0.9)))
    add("bn_running_average_in_training", J, "front_layers.3", BN_NORMALISE,
        "eval-mode BN (running statistics) used in a training step, one layer",
        lambda n: _jax_layer("front_layers.3.res_branch.4", layers.BatchNorm3d, "__call__",
                             _running_average_in_training, n))
    add("bn_statistics_not_updated", J, "front_layers.0", BN_STATISTICS,
        "the step drops the updated batch statistics (every BN)",
        lambda n: _jax(mock.patch.object(layers.BatchNorm3d, "__call__",
                                         _bound(_statistics_not_written, layers.BatchNorm3d.__call__))))
    add("bn_mean_without_gradient", J, _ED + "skip_res1", BN_NORMALISE,
        "stop_gradient on the batch mean in one BN (forward unchanged, backward wrong)",
        lambda n: _jax_layer(_ED + "skip_res1.res_branch.1", layers.BatchNorm3d, "__call__",
                             _with_global(layers, "batch_moments", _moments_without_mean_gradient), n))
    add("bn_gamma_beta_swapped", T, _ED + "encoder_res2", BN_NORMALISE,
        "F.batch_norm given (bias, weight) for (weight, bias), one layer",
        lambda n: _torch_layer(_ED + "encoder_res2.res_branch.4", nn.BatchNorm3d, "forward",
                               lambda bn, _o, x: F.batch_norm(x, bn.running_mean, bn.running_var, bn.bias,
                                                              bn.weight, bn.training, bn.momentum, bn.eps), n))
    # convolutions
    add("conv_kernel_flipped", T, _ED + "encoder_res1", CONV,
        "one 3x3x3 kernel spatially flipped (a true convolution for torch's cross-correlation)",
        lambda n: _torch_layer(_ED + "encoder_res1.res_branch.3", nn.Conv3d, "forward",
                               lambda c, _o, x: c._conv_forward(x, c.weight.flip((2, 3, 4)), c.bias), n))
    add("conv_padding_shifted", T, "front_layers.2", CONV,
        "one conv padded (2, 0) instead of (1, 1) along depth: its output one voxel off",
        lambda n: _torch_layer("front_layers.2.res_branch.0", nn.Conv3d, "forward",
                               lambda c, _o, x: F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), c.weight, c.bias), n))
    add("conv_bias_dropped", J, OUTPUT, CONV, "the output layer never adds its bias",
        lambda n: _jax_layer("output_layer", layers.Conv3d, "__call__",
                             _with_global(layers, "add_bias", lambda y, _b, _n: y), n))
    add("convert_kernel_axes_swapped", J, "front_layers.0", CONV,
        "the converter swaps the H and W axes of every Conv3d kernel",
        lambda n: _converted(lambda k, v: v.transpose(3, 4) if v.ndim == 5 and "upsample" not in k else v))
    add("convert_weight_perturbed_1e-3", J, _ED + "decoder_res1", CONV,
        "the converter changes one conv weight by a relative 1e-3 (elementwise, random)",
        lambda n: _converted(_perturbed(_ED + "decoder_res1.res_branch.0.weight")))
    add("convert_through_float16", J, "front_layers.0", CONV,
        "the converter rounds every tensor through float16",
        lambda n: _converted(lambda k, v: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v))
    add("convert_transposed_conv_axes_swapped", J, _ED + "decoder_upsample2", UPSAMPLE,
        "the converter swaps the H and W axes of every ConvTranspose3d kernel",
        lambda n: _converted(lambda k, v: v.transpose(3, 4) if v.ndim == 5 and "upsample" in k else v))
    add("conv_output_through_bfloat16", J, "front_layers.2", CONV,
        "one conv's float32 output rounded to bfloat16 (float64 unchanged: a rounding bug only)",
        lambda n: _jax_layer("front_layers.2.res_branch.0", layers.Conv3d, "__call__", _after(_through_bfloat16), n),
        rounding_only=True)
    # upsampling
    add("upsample_shifted_one_voxel", J, _ED + "decoder_upsample2", UPSAMPLE,
        "a transposed conv's output aligned one voxel off along depth",
        lambda n: _jax_layer(_ED + "decoder_upsample2.block.0", layers.ConvTranspose3d, "__call__",
                             _after(_shift_depth), n))
    add("upsample_kernel_flipped", T, _ED + "decoder_upsample1", UPSAMPLE,
        "a ConvTranspose3d kernel spatially flipped",
        lambda n: _torch_layer(_ED + "decoder_upsample1.block.0", nn.ConvTranspose3d, "forward",
                               lambda c, _o, x: F.conv_transpose3d(x, c.weight.flip((2, 3, 4)), c.bias,
                                                                   stride=2), n))
    # pooling
    add("avg_pool_once", T, _ED + "encoder_pool2", POOL, "average instead of max pooling in one pool",
        lambda n: _torch_layer(_ED + "encoder_pool2", tmodel.Pool3DBlock, "forward",
                               lambda p, _o, x: F.avg_pool3d(x, p.pool_size, p.pool_size), n))
    add("pool_window_3_stride_2", T, "front_layers.1", POOL,
        "MaxPool3d(3, stride 2, padding 1) (a ResNet stem) instead of (2, 2): same shape, wider windows",
        lambda n: _torch_layer("front_layers.1", tmodel.Pool3DBlock, "forward",
                               lambda p, _o, x: F.max_pool3d(x, 3, 2, 1), n))
    add("pool_as_strided_slice", J, _ED + "encoder_pool1", POOL,
        "x[:, ::2, ::2, ::2] (the first voxel of each window) for a max pool",
        lambda n: _jax_layer(_ED + "encoder_pool1", jmodel.Pool3DBlock, "__call__",
                             lambda p, _o, x: p._record(x[:, ::2, ::2, ::2]), n))
    # ReLU
    add("final_relu_added", T, OUTPUT, RELU, "a ReLU after the output conv (the original author's plateau bug)",
        lambda n: _torch_layer("output_layer", nn.Conv3d, "forward", _after(F.relu), n))
    add("block_relu_dropped", T, "back_layers.1", RELU, "a Basic3DBlock without its ReLU",
        lambda n: _torch_layer("back_layers.1", tmodel.Basic3DBlock, "forward",
                               lambda b, _o, x: b.block[1](b.block[0](x)), n))
    add("res_relu_dropped", T, _ED + "decoder_res1", RELU, "a Res3DBlock returns res + skip without the ReLU",
        lambda n: _torch_layer(_ED + "decoder_res1", tmodel.Res3DBlock, "forward",
                               lambda b, _o, x: b.res_branch(x) + b.skip_con(x), n))
    # skips
    add("missing_skip", J, "front_layers.4", RESIDUAL_ADD, "a Res3DBlock without its identity skip",
        lambda n: _jax_layer("front_layers.4", jmodel.Res3DBlock, "__call__",
                             lambda b, _o, x: b._record(jax.nn.relu(layers.sequential(b.res_branch, x))), n))
    add("skip_join_dropped", T, "encoder_decoder", RESIDUAL_ADD,
        "the encoder-decoder never adds its second skip (x + skip_x2)",
        lambda n: _torch_layer("encoder_decoder", tmodel.EncoderDecoder, "forward", _skip_free_encoder_decoder, n))
    # loss and optimiser
    add("loss_sum_over_joints", T, OUTPUT, LOSS, "MSE summed over the joint axis, mean over the others",
        lambda n: _torch(mock.patch.object(anchored, "torch_loss", lambda y, t: F.mse_loss(
            y, t.to(y.dtype), reduction="none").sum(1).mean())))
    add("rmsprop_eps_inside_sqrt", J, None, OPTIMIZER, "RMSprop eps inside the square root (TF's placement)",
        lambda n: _optax_rmsprop(eps_in_sqrt=True))
    add("rmsprop_initial_scale_1", J, None, OPTIMIZER, "RMSprop's square average starting at 1 (TF1's) not 0",
        lambda n: _optax_rmsprop(initial_scale=1.0))
    add("rmsprop_alpha_0.9", T, None, OPTIMIZER, "RMSprop alpha 0.9 (Keras's rho) instead of the authors' 0.99",
        lambda n: _torch(mock.patch.object(ttrain, "torch", _Proxy(torch, optim=_Proxy(
            torch.optim, RMSprop=_forcing(torch.optim.RMSprop, alpha=0.9))))))
    add("init_std_1e-2", T, "front_layers.0", INIT, "conv weights initialised at std 1e-2 instead of 1e-3",
        lambda n: _torch(mock.patch.object(tmodel, "initialize", _torch_init_std)))
    return tuple(m)


def _bound(buggy, original):
    """`buggy` in place of a method for every instance."""
    return lambda self, *args, **kwargs: buggy(self, original, *args, **kwargs)


MUTATIONS = _mutations()
BY_NAME = {m.name: m for m in MUTATIONS}


# ------------------------------------------------------------------------------------------------- the table


def op_kind(named: str | None) -> str | None:
    """The kind of a named op: 'res_branch.1 (BN normalise)' -> 'BN normalise'; 'optimizer' -> itself."""
    if named is None:
        return None
    return named[named.rindex("(") + 1:-1] if named.endswith(")") else named


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the checker said about one planted bug (`framework` None: an unmodified run)."""

    bug: str
    framework: str | None  # where the bug was planted
    block: str | None
    op: str | None
    overall: str
    named_block: str | None
    named_op: str | None
    named_framework: str | None
    seconds: float

    @property
    def caught(self) -> bool:
        return self.overall != V.WITHIN

    @property
    def block_ok(self) -> bool:
        return self.caught and (self.block is None or self.named_block == self.block)

    @property
    def op_ok(self) -> bool:
        return self.caught and op_kind(self.named_op) == self.op

    @property
    def framework_ok(self) -> bool:
        return self.caught and self.named_framework == self.framework

    @property
    def localised(self) -> bool:
        return self.block_ok and self.op_ok and self.framework_ok


def run(mutation: Mutation | None, config: anchored.Config) -> Outcome:
    """The anchored checker on `config` with the bug planted (None: on unmodified code)."""
    start = time.perf_counter()
    patch = {} if mutation is None else {
        "jax_patch" if mutation.framework == V.JAX else "torch_patch": mutation.patch}
    report = anchored.run_anchored(config, **patch)
    d = report.first_divergence
    named = (d.block, d.op, d.framework) if d else (None, None, None)
    planted = ((mutation.name, mutation.framework, mutation.block, mutation.op) if mutation
               else (f"(none), seed {config.seed}", None, None, None))
    return Outcome(*planted, report.overall, *named, time.perf_counter() - start)


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


HEADER = ("| bug | planted in | planted at (block / op) | caught? | verdict | first divergence named "
          "(block / op / framework) | block | op | framework | localised? | s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(o: Outcome) -> str:
    named = " / ".join(str(v) if v is not None else "-" for v in (o.named_block, o.named_op, o.named_framework))
    if o.framework is None:  # an unmodified run: the only right answer is no divergence
        return (f"| {o.bug} | - | - | {'**FALSE ALARM**' if o.caught else 'no (right)'} | {o.overall} | "
                f"{named} | | | | | {o.seconds:.0f} |")
    planted = f"{o.block or '(any block)'} / {o.op}"
    return (f"| {o.bug} | {o.framework} | {planted} | {_mark(o.caught)} | {o.overall} | {named} | "
            f"{_mark(o.block_ok)} | {_mark(o.op_ok)} | {_mark(o.framework_ok)} | {_mark(o.localised)} | "
            f"{o.seconds:.0f} |")


def totals(outcomes: list[Outcome]) -> str:
    bugs = [o for o in outcomes if o.framework is not None]
    clean = [o for o in outcomes if o.framework is None]

    def frac(k, n):
        return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "-"

    return (f"caught {frac(sum(o.caught for o in bugs), len(bugs))}; localised to the right block, op and "
            f"framework {frac(sum(o.localised for o in bugs), len(bugs))} (block {sum(o.block_ok for o in bugs)}, "
            f"op {sum(o.op_ok for o in bugs)}, framework {sum(o.framework_ok for o in bugs)}); false alarms on "
            f"unmodified code {sum(o.caught for o in clean)}/{len(clean)}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="float32",
                   help="the low precision checked against the float64 truth (float64: the float64 runs only, "
                        "bounded by perturbed float64 runs)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--tf32", choices=("on", "off"), default="off", help="TF32 convolutions on a GPU")
    p.add_argument("--grid", type=int, default=32, help="input grid N (a multiple of 4)")
    p.add_argument("--width", type=int, default=32, help="network width (V2V: 32)")
    p.add_argument("--seeds", type=int, default=5, help="unmodified runs, seeds 0 .. SEEDS-1 (the bugs: seed 0)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this bug (repeatable)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the outcomes as JSON")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(BY_NAME))
    if unknown:
        p.error(f"--only {', '.join(unknown)}: no such bug; choose from {', '.join(BY_NAME)}")
    if args.seeds < 0:
        p.error(f"--seeds {args.seeds}: must be >= 0")
    try:
        args.config = anchored.Config(width=args.width, grid=args.grid, dtype=args.dtype, device=args.device,
                                      tf32=args.tf32 == "on")
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start, cpu = time.perf_counter(), time.process_time()
    config = args.config
    print(f"Planted bugs, `python -m parity_tests.mutations {' '.join(sys.argv[1:] if argv is None else argv)}`; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, jax {jax.__version__} "
          f"({jax.devices(config.device)[0].device_kind}, {platform.processor() or platform.machine()})\n\n"
          f"width {config.width}, grid {config.grid}^3, batch {config.batch}, {config.dtype}, TF32 "
          f"{'on' if config.tf32 else 'off'}, {config.steps} RMSprop steps\n\n{HEADER}", flush=True)
    outcomes = []
    for mutation in [BY_NAME[n] for n in args.only] if args.only else MUTATIONS:
        outcomes.append(run(mutation, config))
        print(format_row(outcomes[-1]), flush=True)
    for seed in range(args.seeds):
        outcomes.append(run(None, dataclasses.replace(config, seed=seed)))
        print(format_row(outcomes[-1]), flush=True)
    print(f"\n{totals(outcomes)}\n\nrun time {time.perf_counter() - start:.0f} s wall, "
          f"{time.process_time() - cpu:.0f} s CPU (this process)")
    if args.json:
        rows = [{**dataclasses.asdict(o), "caught": o.caught, "localised": o.localised} for o in outcomes]
        args.json.write_text(json.dumps({"config": dataclasses.asdict(config), "outcomes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
