"""The TinyViT image encoder of LiteMedSAM: a (B, 3, 256, 256) image in [0, 1] -> a (B, 256, 64, 64) embedding.

LiteMedSAM's variant keeps the full resolution in the stem (two 1x1 convolutions, no stride), so the
four stages run at 256, 128, 64 and 64 pixels: MBConv blocks first, then windowed self-attention
blocks, and a neck that maps 320 channels to the 256 the mask decoder expects.

>>> encoder = TinyViT()
>>> encoder(torch.zeros(1, 3, 256, 256)).shape
torch.Size([1, 256, 64, 64])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d

EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOWS = (7, 7, 14, 7)


class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch norm (keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class MBConv(nn.Module):
    """Inverted residual block: expand x4, depthwise 3x3, project back, add the input."""

    def __init__(self, dim: int, expand: int = 4) -> None:
        super().__init__()
        hidden = dim * expand
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change and (stride 2, or 1 into the last stage) downsampling; returns tokens (B, H*W, C)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        _, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2), h, w


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a square window, with a learned bias per relative offset."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        y, x = yy.flatten(), xx.flatten()
        offsets = (y[:, None] - y[None]).abs() * window + (x[:, None] - x[None]).abs()
        self.register_buffer("attention_bias_idxs", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.heads, 3 * self.key_dim).transpose(1, 2).chunk(3, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Pre-norm feed-forward block (x4 hidden, GELU)."""

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * ratio)
        self.fc2 = nn.Linear(dim * ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise 3x3 convolution, then the MLP; tokens (B, H*W, C) in and out."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = Mlp(dim)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        s = self.window
        grid = x.view(b, h, w, c)
        pad_h, pad_w = (s - h % s) % s, (s - w % s) % s
        grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = grid.view(b, hp // s, s, wp // s, s, c).transpose(2, 3).reshape(-1, s * s, c)
        attended = self.attn(windows).view(b, hp // s, wp // s, s, s, c).transpose(2, 3).reshape(b, hp, wp, c)
        x = x + attended[:, :h, :w].reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 1: MBConv blocks on the (B, C, H, W) map, then patch merging."""

    def __init__(self, dim: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 2-4: attention blocks on tokens, then patch merging (none after the last stage)."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, heads, window) for _ in range(depth))
        stride = 1 if out_dim == EMBED_DIMS[-1] else 2
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, int, int]:
        for block in self.blocks:
            x = block(x, h, w)
        if self.downsample is None:
            return x, h, w
        b, n, c = x.shape
        return self.downsample(x.transpose(1, 2).reshape(b, c, h, w))


class PatchEmbed(nn.Module):
    """Stem: two 1x1 convolutions, 3 -> 32 -> 64 channels, full resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class TinyViT(nn.Module):
    """The encoder; parameter names follow the LiteMedSAM checkpoint (prefix ``image_encoder.``)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(EMBED_DIMS[0])
        self.layers = nn.ModuleList([ConvLayer(EMBED_DIMS[0], DEPTHS[0], EMBED_DIMS[1])])
        for i in range(1, 4):
            out_dim = EMBED_DIMS[i + 1] if i < 3 else None
            self.layers.append(BasicLayer(EMBED_DIMS[i], DEPTHS[i], NUM_HEADS[i], WINDOWS[i], out_dim))
        self.neck = nn.Sequential(
            nn.Conv2d(EMBED_DIMS[-1], 256, 1, bias=False), LayerNorm2d(256),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.layers[0](self.patch_embed(x))
        for layer in self.layers[1:]:
            x, h, w = layer(x, h, w)
        b, _, c = x.shape
        return self.neck(x.transpose(1, 2).reshape(b, c, h, w))
