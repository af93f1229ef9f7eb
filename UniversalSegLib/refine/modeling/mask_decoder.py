"""The mask decoder: image embedding + prompt tokens -> low-resolution mask logits and a predicted IoU.

>>> decoder = MaskDecoder()
>>> logits, iou = decoder(torch.zeros(2, 256, 64, 64), torch.zeros(1, 256, 64, 64), torch.zeros(2, 2, 256),
...                       torch.zeros(2, 256, 64, 64))
>>> logits.shape, iou.shape
(torch.Size([2, 1, 256, 256]), torch.Size([2, 1]))
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """SAM's decoder with 4 mask tokens; LiteMedSAM uses the first (single-mask) output."""

    def __init__(self, dim: int = 256, multimask_outputs: int = 3) -> None:
        super().__init__()
        self.num_mask_tokens = multimask_outputs + 1
        self.transformer = TwoWayTransformer(dim=dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt: ``image_embeddings`` (B, 256, 64, 64) holds one row per prompt (or a single row
        shared by all); returns logits (B, 1 or 3, 256, 256) and IoU predictions (B, 1 or 3)."""
        batch = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(batch, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image_embeddings.expand(batch, -1, -1, -1) + dense
        b, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe.expand(batch, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        mask_tokens = hs[:, 1:1 + self.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hs[:, 0])
        chosen = slice(1, None) if multimask else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]
