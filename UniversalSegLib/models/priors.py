"""Context priors: learnable task/modality token pools and their bidirectional fusion with features.

At each fusion point a :class:`PriorFusion` owns a task pool (one token per task plus a null token)
and a modality pool (``modality_tokens`` tokens per modality). For every sample it gathers
``[task tokens of the queried tasks | tokens of the sample's modality]`` and runs ``fusion_blocks``
:class:`FusionLayer` s: the priors first cross-attend to the voxel tokens, then the voxels
cross-attend to the priors (no self-attention among priors). Attribute names follow the original
Hermes-R module tree so its checkpoints load by name.

>>> import torch
>>> fuse = PriorFusion(width=64, num_tasks=5, num_modalities=2, modality_tokens=3, num_layers=1)
>>> tasks, modality = torch.tensor([[0, 1], [4, 5]]), torch.tensor([0, 1])   # 5 = null token
>>> feats, tasks, mods = fuse(torch.zeros(2, 64, 4, 4, 4), tasks, modality)
>>> tuple(feats.shape), tuple(tasks.shape), tuple(mods.shape)
((2, 64, 4, 4, 4), (2, 2, 64), (2, 3, 64))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FFN_NORM_EPS = 1e-4  # the original's LayerNorm epsilon before its feed-forward layers


class MLP(nn.Module):
    """``fc1`` -> GELU -> ``fc2``; the hidden width defaults to the input width."""

    def __init__(self, in_dim: int, out_dim: int | None = None, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries`` [B, N, C] over ``context`` [B, M, C]; returns [B, N, C]."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # [B, heads, N, head_dim]

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._split(self.to_q(queries)), self._split(k), self._split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


class PreNormCrossAttention(nn.Module):
    """``fn(norm1(queries), norm2(context))``: LayerNorm on both sides before cross-attention."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fn = CrossAttention(dim, head_dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm1(queries), self.norm2(context))


class PreNormMLP(nn.Module):
    """``fn(norm(x))`` with a ``mlp_ratio``-times wider hidden layer."""

    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=FFN_NORM_EPS)
        self.fn = MLP(dim, dim, hidden_dim=mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FusionLayer(nn.Module):
    """One bidirectional step: priors gather from voxels, then voxels gather from priors (all residual)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.prior_aggregate_block = PreNormCrossAttention(dim, head_dim)
        self.prior_ffn = PreNormMLP(dim, mlp_ratio)
        self.feat_aggregate_block = PreNormCrossAttention(dim, head_dim)
        self.feat_ffn = PreNormMLP(dim, mlp_ratio)

    def forward(self, voxels: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        priors = priors + self.prior_aggregate_block(priors, voxels)
        priors = priors + self.prior_ffn(priors)
        voxels = voxels + self.feat_aggregate_block(voxels, priors)
        voxels = voxels + self.feat_ffn(voxels)
        return voxels, priors


class PriorFusion(nn.Module):
    """Task and modality pools of one scale plus ``num_layers`` fusion layers.

    ``forward(features [B, C, D, H, W], task_idx [B, T], modality_idx [B])`` returns the updated
    features and the fused task tokens [B, T, C] and modality tokens [B, modality_tokens, C].
    """

    def __init__(self, width: int, num_tasks: int, num_modalities: int, modality_tokens: int = 10,
                 num_layers: int = 2, head_dim: int = 32, mlp_ratio: int = 4) -> None:
        super().__init__()
        # Row num_tasks is the null token used to pad task lists of different lengths.
        self.task_prior = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tasks + 1, width)))
        self.modality_prior = nn.Parameter(
            nn.init.xavier_uniform_(torch.empty(num_modalities, modality_tokens, width)))
        self.attn_layers = nn.ModuleList(FusionLayer(width, head_dim, mlp_ratio) for _ in range(num_layers))

    def forward(self, features: torch.Tensor, task_idx: torch.Tensor,
                modality_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, d, h, w = features.shape
        num_queried = task_idx.shape[1]
        priors = torch.cat([self.task_prior[task_idx], self.modality_prior[modality_idx]], dim=1)
        voxels = features.flatten(2).transpose(1, 2)  # [B, D*H*W, C]
        for layer in self.attn_layers:
            voxels, priors = layer(voxels, priors)
        features = voxels.transpose(1, 2).reshape(b, c, d, h, w).contiguous()
        return features, priors[:, :num_queried], priors[:, num_queried:]
