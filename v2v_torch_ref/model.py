"""V2V-PoseNet in PyTorch, module for module as the public port (dragonbook/V2V-PoseNet-pytorch).

Module names and state_dict keys equal the port's, so its checkpoints load with ``strict=True``.
Layout is NCDHW; the volume axes (D, H, W) are the world axes (x, y, z).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INIT_SCHEMES = ("original", "framework")
# The product's precision names (v2v_jax/dtypes.py) -> torch dtypes.
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class Basic3DBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(in_planes, out_planes, kernel_size, stride=1, padding=(kernel_size - 1) // 2),
            nn.BatchNorm3d(out_planes),
            nn.ReLU(True),
        )

    def forward(self, x):
        return self.block(x)


class Res3DBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.res_branch = nn.Sequential(
            nn.Conv3d(in_planes, out_planes, 3, stride=1, padding=1),
            nn.BatchNorm3d(out_planes),
            nn.ReLU(True),
            nn.Conv3d(out_planes, out_planes, 3, stride=1, padding=1),
            nn.BatchNorm3d(out_planes),
        )
        if in_planes == out_planes:
            self.skip_con = nn.Sequential()
        else:
            self.skip_con = nn.Sequential(
                nn.Conv3d(in_planes, out_planes, 1, stride=1, padding=0),
                nn.BatchNorm3d(out_planes),
            )

    def forward(self, x):
        return F.relu(self.res_branch(x) + self.skip_con(x))


class Pool3DBlock(nn.Module):
    def __init__(self, pool_size: int):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x):
        return F.max_pool3d(x, kernel_size=self.pool_size, stride=self.pool_size)


class Upsample3DBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 2, stride: int = 2):
        super().__init__()
        assert kernel_size == 2 and stride == 2
        self.block = nn.Sequential(
            nn.ConvTranspose3d(in_planes, out_planes, kernel_size, stride=stride, padding=0, output_padding=0),
            nn.BatchNorm3d(out_planes),
            nn.ReLU(True),
        )

    def forward(self, x):
        return self.block(x)


class EncoderDecoder(nn.Module):  # the port spells the class EncoderDecorder; its state_dict key is `encoder_decoder`
    def __init__(self, width: int = 32):
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width
        self.encoder_pool1 = Pool3DBlock(2)
        self.encoder_res1 = Res3DBlock(w1, w2)
        self.encoder_pool2 = Pool3DBlock(2)
        self.encoder_res2 = Res3DBlock(w2, w4)

        self.mid_res = Res3DBlock(w4, w4)

        self.decoder_res2 = Res3DBlock(w4, w4)
        self.decoder_upsample2 = Upsample3DBlock(w4, w2, 2, 2)
        self.decoder_res1 = Res3DBlock(w2, w2)
        self.decoder_upsample1 = Upsample3DBlock(w2, w1, 2, 2)

        self.skip_res1 = Res3DBlock(w1, w1)
        self.skip_res2 = Res3DBlock(w2, w2)

    def forward(self, x):
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
        return x


class V2VModel(nn.Module):
    """Input (B, C_in, N, N, N) occupancy; output (B, J, N/2, N/2, N/2) heatmaps."""

    def __init__(self, input_channels: int = 1, output_channels: int = 21, width: int = 32,
                 init: str = "original"):
        super().__init__()
        self.front_layers = nn.Sequential(
            Basic3DBlock(input_channels, width // 2, 7),
            Pool3DBlock(2),
            Res3DBlock(width // 2, width),
            Res3DBlock(width, width),
            Res3DBlock(width, width),
        )
        self.encoder_decoder = EncoderDecoder(width)
        self.back_layers = nn.Sequential(
            Res3DBlock(width, width),
            Basic3DBlock(width, width, 1),
            Basic3DBlock(width, width, 1),
        )
        self.output_layer = nn.Conv3d(width, output_channels, kernel_size=1, stride=1, padding=0)
        initialize(self, init)

    def forward(self, x):
        x = self.front_layers(x)
        x = self.encoder_decoder(x)
        x = self.back_layers(x)
        x = self.output_layer(x)
        return x


def initialize(model: nn.Module, scheme: str = "original") -> None:
    """`original`: the authors' init (N(0, 1e-3^2) weights, zero bias, BN gamma ~ U(0,1)); `framework`: PyTorch's."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            if scheme == "original":
                nn.init.normal_(m.weight, 0.0, 0.001)
                nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()
        elif isinstance(m, nn.BatchNorm3d):
            m.reset_parameters()
            if scheme == "original":
                nn.init.uniform_(m.weight, 0.0, 1.0)


BLOCK_TYPES = (Basic3DBlock, Res3DBlock, Pool3DBlock, Upsample3DBlock, EncoderDecoder)


def forward_with_intermediates(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Runs the model and returns its output and every block's output keyed by block path."""
    taps: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, BLOCK_TYPES):
            handles.append(module.register_forward_hook(
                lambda _m, _inp, out, name=name: taps.__setitem__(name, out)))
    try:
        y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, taps


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

