"""The prompt encoder: boxes and points -> sparse tokens, an optional mask -> a dense embedding.

Coordinates are pixels of the 256 x 256 model input, ``(x, y)``; a box is ``(x0, y0, x1, y1)``.

>>> encoder = PromptEncoder()
>>> sparse, dense = encoder(boxes=torch.tensor([[10.0, 20.0, 90.0, 120.0]]))
>>> sparse.shape, dense.shape
(torch.Size([1, 2, 256]), torch.Size([1, 256, 64, 64]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

EMBED_DIM = 256
EMBED_SIZE = 64
INPUT_SIZE = 256
POSITIVE, NEGATIVE, PADDING = 1, 0, -1


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] with a fixed random frequency matrix (part of the checkpoint)."""

    def __init__(self, features: int = EMBED_DIM // 2) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, features))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * features)."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of every cell centre of a size x size grid, (C, size, size)."""
        centres = (torch.arange(size, device=self.positional_encoding_gaussian_matrix.device) + 0.5) / size
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder at LiteMedSAM's sizes (256 input, 64 x 64 embedding)."""

    def __init__(self, mask_channels: int = 16) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom()
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, EMBED_DIM) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, EMBED_DIM)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_channels // 4, 2, stride=2), LayerNorm2d(mask_channels // 4), nn.GELU(),
            nn.Conv2d(mask_channels // 4, mask_channels, 2, stride=2), LayerNorm2d(mask_channels), nn.GELU(),
            nn.Conv2d(mask_channels, EMBED_DIM, 1),
        )
        self.no_mask_embed = nn.Embedding(1, EMBED_DIM)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding's grid, (1, 256, 64, 64)."""
        return self.pe_layer.grid(EMBED_SIZE)[None]

    def _embed_coords(self, coords: torch.Tensor) -> torch.Tensor:
        return self.pe_layer.encode((coords + 0.5) / INPUT_SIZE)

    def forward(self, boxes: torch.Tensor | None = None,
                points: tuple[torch.Tensor, torch.Tensor] | None = None,
                masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of prompts; each argument is optional but one must be given.

        ``boxes`` (B, 4); ``points`` = (coords (B, N, 2), labels (B, N) with 1 positive, 0 negative,
        -1 padding); ``masks`` (B, 1, 256, 256) logits. Returns sparse (B, T, 256) and dense (B, 256, 64, 64).
        """
        given = next(t for t in (boxes, points[0] if points else None, masks) if t is not None)
        batch = given.shape[0]
        tokens = []
        if points is not None:
            coords, labels = points
            if boxes is None:  # SAM appends one padding point when no box follows
                coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
                labels = torch.cat([labels, labels.new_full((batch, 1), PADDING)], dim=1)
            emb = self._embed_coords(coords.float())
            pad = (labels == PADDING)[..., None]
            emb = torch.where(pad, self.not_a_point_embed.weight, emb)
            emb = emb + (labels == NEGATIVE)[..., None] * self.point_embeddings[0].weight
            emb = emb + (labels == POSITIVE)[..., None] * self.point_embeddings[1].weight
            tokens.append(emb)
        if boxes is not None:
            corners = self._embed_coords(boxes.float().reshape(batch, 2, 2))
            corners = corners + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
            tokens.append(corners)
        sparse = torch.cat(tokens, dim=1) if tokens else given.new_zeros(batch, 0, EMBED_DIM)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, EMBED_SIZE, EMBED_SIZE)
        return sparse, dense
