"""V2V-PoseNet in Flax NNX, block for block and name for name as `v2v_torch_ref.model`.

Input (B, N, N, N, C_in) occupancy in NDHWC with (D, H, W) = world (x, y, z); output (B, N/2, N/2, N/2, J).
`nnx.List` indices equal the torch Sequential indices, so a parameter's path is its torch key.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
from flax import nnx

from v2v_jax.layers import BatchNorm3d, Conv3d, ConvTranspose3d, Numerics, ReLU, max_pool, sequential

_TAPS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("v2v_taps", default=None)


class Block(nnx.Module):
    """A parity unit: its output can be recorded under its path (see `record_intermediates`)."""

    path: str = ""

    def _record(self, y):
        taps = _TAPS.get()
        if taps is not None:
            taps[self.path] = y
        return y


class Basic3DBlock(Block):
    def __init__(self, in_planes, out_planes, kernel_size, *, numerics: Numerics, rngs: nnx.Rngs):
        self.block = nnx.List([
            Conv3d(in_planes, out_planes, kernel_size, numerics=numerics, rngs=rngs),
            BatchNorm3d(out_planes, numerics=numerics, rngs=rngs),
            ReLU(),
        ])

    def __call__(self, x):
        return self._record(sequential(self.block, x))


class Res3DBlock(Block):
    def __init__(self, in_planes, out_planes, *, numerics: Numerics, rngs: nnx.Rngs):
        self.res_branch = nnx.List([
            Conv3d(in_planes, out_planes, 3, numerics=numerics, rngs=rngs),
            BatchNorm3d(out_planes, numerics=numerics, rngs=rngs),
            ReLU(),
            Conv3d(out_planes, out_planes, 3, numerics=numerics, rngs=rngs),
            BatchNorm3d(out_planes, numerics=numerics, rngs=rngs),
        ])
        if in_planes == out_planes:
            self.skip_con = nnx.List([])
        else:
            self.skip_con = nnx.List([
                Conv3d(in_planes, out_planes, 1, numerics=numerics, rngs=rngs),
                BatchNorm3d(out_planes, numerics=numerics, rngs=rngs),
            ])

    def __call__(self, x):
        return self._record(jax.nn.relu(sequential(self.res_branch, x) + sequential(self.skip_con, x)))


class Pool3DBlock(Block):
    def __init__(self, pool_size: int):
        self.pool_size = pool_size

    def __call__(self, x):
        return self._record(max_pool(x, self.pool_size))


class Upsample3DBlock(Block):
    def __init__(self, in_planes, out_planes, *, numerics: Numerics, rngs: nnx.Rngs):
        self.block = nnx.List([
            ConvTranspose3d(in_planes, out_planes, numerics=numerics, rngs=rngs),
            BatchNorm3d(out_planes, numerics=numerics, rngs=rngs),
            ReLU(),
        ])

    def __call__(self, x):
        return self._record(sequential(self.block, x))


class EncoderDecoder(Block):
    def __init__(self, width: int, *, numerics: Numerics, rngs: nnx.Rngs):
        w1, w2, w4 = width, 2 * width, 4 * width
        kw = dict(numerics=numerics, rngs=rngs)
        self.encoder_pool1 = Pool3DBlock(2)
        self.encoder_res1 = Res3DBlock(w1, w2, **kw)
        self.encoder_pool2 = Pool3DBlock(2)
        self.encoder_res2 = Res3DBlock(w2, w4, **kw)

        self.mid_res = Res3DBlock(w4, w4, **kw)

        self.decoder_res2 = Res3DBlock(w4, w4, **kw)
        self.decoder_upsample2 = Upsample3DBlock(w4, w2, **kw)
        self.decoder_res1 = Res3DBlock(w2, w2, **kw)
        self.decoder_upsample1 = Upsample3DBlock(w2, w1, **kw)

        self.skip_res1 = Res3DBlock(w1, w1, **kw)
        self.skip_res2 = Res3DBlock(w2, w2, **kw)

    def __call__(self, x):
        skip_x1 = self.skip_res1(x)
        x = self.encoder_pool1(x)
        x = self.encoder_res1(x)
        skip_x2 = self.skip_res2(x)
        x = self.encoder_pool2(x)
        x = self.encoder_res2(x)

        x = self.mid_res(x)

        x = self.decoder_res2(x)
        x = self.decoder_upsample2(x)
        x = x + skip_x2
        x = self.decoder_res1(x)
        x = self.decoder_upsample1(x)
        x = x + skip_x1
        return self._record(x)


class V2VModel(nnx.Module):
    def __init__(self, input_channels: int = 1, output_channels: int = 21, width: int = 32, *,
                 numerics: Numerics = Numerics(), rngs: nnx.Rngs):
        kw = dict(numerics=numerics, rngs=rngs)
        self.front_layers = nnx.List([
            Basic3DBlock(input_channels, width // 2, 7, **kw),
            Pool3DBlock(2),
            Res3DBlock(width // 2, width, **kw),
            Res3DBlock(width, width, **kw),
            Res3DBlock(width, width, **kw),
        ])
        self.encoder_decoder = EncoderDecoder(width, **kw)
        self.back_layers = nnx.List([
            Res3DBlock(width, width, **kw),
            Basic3DBlock(width, width, 1, **kw),
            Basic3DBlock(width, width, 1, **kw),
        ])
        self.output_layer = Conv3d(width, output_channels, 1, **kw)
        self.numerics = numerics
        for path, module in nnx.iter_graph(self):
            if isinstance(module, Block):
                module.path = ".".join(str(p) for p in path)

    def __call__(self, x):
        x = sequential(self.front_layers, x)
        x = self.encoder_decoder(x)
        x = sequential(self.back_layers, x)
        return self.output_layer(x)


@contextlib.contextmanager
def record_intermediates():
    """Within the context, every block's output is stored in the yielded dict under its path (torch's key)."""
    taps: dict = {}
    token = _TAPS.set(taps)
    try:
        yield taps
    finally:
        _TAPS.reset(token)


def count_parameters(model: nnx.Module | nnx.State) -> int:
    """Number of trainable parameters of a model, or of its `nnx.Param` state."""
    params = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    return sum(x.size for x in jax.tree.leaves(params))
