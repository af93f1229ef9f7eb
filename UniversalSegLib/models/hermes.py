"""HermesNet: a ResUNet whose features exchange information with task and modality priors.

Each sample queries a list of tasks (rows of the task pool, padded with the null token) and names
its modality. Priors are fused at five scales; the fused task tokens of all scales become one
kernel per task, applied to the full-resolution decoder features. An auxiliary head predicts the
modality from the fused modality tokens.

>>> import torch
>>> from UniversalSegLib.models import HermesConfig, HermesNet
>>> net = HermesNet(HermesConfig(3, 2, widths=(8, 8, 32, 32, 32), fusion_blocks=(1, 1, 1, 1, 1))).eval()
>>> tasks = torch.tensor([[0, 2], [1, net.null_task]])        # 2 tasks; 1 task + padding
>>> out = net(torch.zeros(2, 1, 32, 16, 16), tasks, torch.tensor([0, 1]))
>>> tuple(out.logits.shape), tuple(out.modality_logits.shape)
((2, 2, 32, 16, 16), (2, 2))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from UniversalSegLib.models.backbones import DownStage, Stem, UpStage
from UniversalSegLib.models.config import HermesConfig
from UniversalSegLib.models.priors import MLP, PriorFusion


class HermesOutput(NamedTuple):
    """``logits`` [B, T, D, H, W] (one independent sigmoid channel per queried task) and
    ``modality_logits`` [B, num_modalities]."""

    logits: torch.Tensor
    modality_logits: torch.Tensor


class PriorClassifier(nn.Module):
    """Concatenated multi-scale task tokens [B, T, sum(widths)] -> kernels [B, T, w0] -> logits."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.classifier_pred = nn.Sequential(MLP(in_dim, out_dim), MLP(out_dim, out_dim))
        for m in self.classifier_pred.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, task_tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        kernels = self.classifier_pred(self.norm(task_tokens))
        return torch.einsum("btc,bcdhw->btdhw", kernels, features)


class ModalityHead(nn.Module):
    """Concatenated multi-scale modality tokens [B, L, sum(widths)] -> LayerNorm -> mean over L -> MLP."""

    def __init__(self, in_dim: int, num_modalities: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.classifier = MLP(in_dim, num_modalities)

    def forward(self, modality_tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(modality_tokens).mean(dim=1))


class HermesNet(nn.Module):
    """Hermes-R style network; module names match the original so its checkpoints load by name.

    ``forward(image [B, in_channels, D, H, W], task_idx [B, T], modality_idx [B])`` with D, H, W
    divisible by 16; ``task_idx`` values in ``0..num_tasks`` (``num_tasks`` = null/padding token).
    """

    def __init__(self, config: HermesConfig) -> None:
        super().__init__()
        self.config = config
        w, n = config.widths, config.blocks_per_stage
        self.inc = Stem(config.in_channels, w[0])
        self.down1 = DownStage(w[0], w[1], n)
        self.down2 = DownStage(w[1], w[2], n)
        self.down3 = DownStage(w[2], w[3], n)
        self.down4 = DownStage(w[3], w[4], n)
        self.up1 = UpStage(w[4], w[3], n)
        self.up2 = UpStage(w[3], w[2], n)
        self.up3 = UpStage(w[2], w[1], n)
        self.up4 = UpStage(w[1], w[0], n)

        def fusion(i: int) -> PriorFusion:
            return PriorFusion(config.fusion_widths[i], config.num_tasks, config.num_modalities,
                               config.modality_tokens, config.fusion_blocks[i], config.head_dim,
                               config.mlp_ratio)

        # Attribute names follow the original (encoder 1/4, 1/8, 1/16; decoder 1/8, 1/4).
        self.prior_init_fuse_2 = fusion(0)
        self.prior_init_fuse_3 = fusion(1)
        self.prior_init_fuse_4 = fusion(2)
        self.prior_fuse_5 = fusion(3)
        self.prior_fuse_6 = fusion(4)
        token_dim = sum(config.fusion_widths)
        self.out = PriorClassifier(token_dim, w[0])
        self.mod_out = ModalityHead(token_dim, config.num_modalities)

    @property
    def null_task(self) -> int:
        """Task index that pads task lists (the null token)."""
        return self.config.num_tasks

    @property
    def fusions(self) -> tuple[PriorFusion, ...]:
        """The five fusion points in order: encoder 1/4, 1/8, 1/16, decoder 1/8, 1/4."""
        return (self.prior_init_fuse_2, self.prior_init_fuse_3, self.prior_init_fuse_4,
                self.prior_fuse_5, self.prior_fuse_6)

    def _check_inputs(self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor) -> None:
        cfg = self.config
        if image.dim() != 5 or image.shape[1] != cfg.in_channels:
            raise ValueError(f"image must be [B, {cfg.in_channels}, D, H, W], got {list(image.shape)}")
        size = list(image.shape[2:])
        if any(s % 16 for s in size) or math.prod(s // 16 for s in size) < 2:
            raise ValueError(f"image size {size} must be divisible by 16 on every axis and at least 32 on "
                             "one (instance norm needs 2 voxels at 1/16 scale); pad it")
        b = image.shape[0]
        if task_idx.dim() != 2 or task_idx.shape[0] != b or task_idx.shape[1] < 1:
            raise ValueError(f"task_idx must be [B={b}, T>=1], got {list(task_idx.shape)}")
        if modality_idx.shape != (b,):
            raise ValueError(f"modality_idx must be [B={b}], got {list(modality_idx.shape)}")
        if task_idx.dtype.is_floating_point or modality_idx.dtype.is_floating_point:
            raise ValueError("task_idx and modality_idx must be integer tensors")
        if bool((task_idx < 0).any() | (task_idx > cfg.num_tasks).any()):
            raise ValueError(f"task_idx values must lie in 0..{cfg.num_tasks} ({cfg.num_tasks} = null token)")
        if bool((modality_idx < 0).any() | (modality_idx >= cfg.num_modalities).any()):
            raise ValueError(f"modality_idx values must lie in 0..{cfg.num_modalities - 1}")

    def forward(self, image: torch.Tensor, task_idx: torch.Tensor,
                modality_idx: torch.Tensor) -> HermesOutput:
        self._check_inputs(image, task_idx, modality_idx)
        task_tokens, modality_tokens = [], []

        def fuse(fusion: PriorFusion, x: torch.Tensor) -> torch.Tensor:
            x, tasks, mods = fusion(x, task_idx, modality_idx)
            task_tokens.append(tasks)
            modality_tokens.append(mods)
            return x

        x1 = self.inc(image)
        x2 = self.down1(x1)
        x3 = fuse(self.prior_init_fuse_2, self.down2(x2))
        x4 = fuse(self.prior_init_fuse_3, self.down3(x3))
        x5 = fuse(self.prior_init_fuse_4, self.down4(x4))
        y = fuse(self.prior_fuse_5, self.up1(x5, x4))
        y = fuse(self.prior_fuse_6, self.up2(y, x3))
        y = self.up4(self.up3(y, x2), x1)
        if not self.config.fused_kernels:  # kernels from the pool rows; the fusion still shaped y
            task_tokens = [fusion.task_prior[task_idx] for fusion in self.fusions]
        logits = self.out(torch.cat(task_tokens, dim=-1), y)
        return HermesOutput(logits, self.mod_out(torch.cat(modality_tokens, dim=-1)))
