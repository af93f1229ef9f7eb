"""ResUNet building blocks: pre-activation residual blocks and the encoder/decoder stages.

Attribute names follow the original Hermes-R module tree (``conv1.conv``, ``shortcut.conv``,
``conv.<i>``) so its checkpoints load by name. Normalisation is InstanceNorm without affine
parameters, so only convolutions carry weights (all without bias).

>>> import torch
>>> stem, down = Stem(1, 8), DownStage(8, 16, num_blocks=2)
>>> up = UpStage(16, 8, num_blocks=2)
>>> x1 = stem(torch.zeros(1, 1, 8, 8, 8))
>>> x2 = down(x1)
>>> tuple(x2.shape), tuple(up(x2, x1).shape)
((1, 16, 4, 4, 4), (1, 8, 8, 8, 8))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-4  # the original's InstanceNorm epsilon


class PreActConv(nn.Module):
    """InstanceNorm -> ReLU -> 3x3x3 convolution (no bias)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(in_channels, eps=NORM_EPS)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class ResidualBlock(nn.Module):
    """Two pre-activated convolutions plus a shortcut (a pre-activated conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = PreActConv(in_channels, out_channels)
        self.conv2 = PreActConv(out_channels, out_channels)
        same = in_channels == out_channels
        self.shortcut = nn.Identity() if same else PreActConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class Stem(nn.Module):
    """Full-resolution entry: a plain 3x3x3 convolution, then one residual block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = ResidualBlock(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class DownStage(nn.Module):
    """Halve the resolution (2x max-pool), then ``num_blocks`` residual blocks (``conv.1`` ... ``conv.n``)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        blocks = [ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
                  for i in range(num_blocks)]
        self.conv = nn.Sequential(nn.MaxPool3d(2), *blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpStage(nn.Module):
    """Trilinear 2x upsampling, concatenation ``[skip, upsampled]``, then ``num_blocks`` residual blocks.

    ``in_channels`` is the width of the coarse input, ``out_channels`` that of the skip and the output.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        blocks = [ResidualBlock(in_channels + out_channels if i == 0 else out_channels, out_channels)
                  for i in range(num_blocks)]
        self.conv = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Interpolation runs in float32 (trilinear lacks bfloat16 kernels on some devices).
        up = F.interpolate(x.float(), size=skip.shape[2:], mode="trilinear", align_corners=True).to(x.dtype)
        return self.conv(torch.cat([skip, up], dim=1))
