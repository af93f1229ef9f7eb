"""Hermes training loss: per-channel BCE + adaptive Tversky (soft Dice) with channel masks, + modality CE.

Every queried task is an independent sigmoid channel. A channel whose mask is 0 (null-token padding,
or a task not annotated in that case) contributes exactly nothing: no loss, no gradient. The Tversky
weights adapt per sample and channel: ``alpha = FP / (FP + FN)`` clamped to [0.2, 0.8] and computed
without gradient, ``beta = 1 - alpha``, so the loss leans on whichever error the prediction makes more.

We write the Tversky term ourselves: MONAI's ``TverskyLoss`` takes one fixed scalar alpha/beta and
cannot weight (mask) channels per sample, which is what partial labels need.

>>> import torch
>>> logits = torch.full((1, 2, 4, 4, 4), -20.0); target = torch.zeros_like(logits)
>>> mask = torch.tensor([[1.0, 0.0]])
>>> out = HermesLoss()(logits, target, mask, torch.zeros(1, 3), torch.tensor([0]))
>>> float(out.segmentation) < 0.02  # a confident, correct empty prediction costs (almost) nothing
True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

ALPHA_RANGE = (0.2, 0.8)
SMOOTH = 1e-5


def adaptive_alpha(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``FP / (FP + FN)`` per sample and channel ([B, T]), clamped to :data:`ALPHA_RANGE`, without gradient."""
    with torch.no_grad():
        dims = tuple(range(2, prob.dim()))
        fp = (prob * (1 - target)).sum(dims)
        fn = ((1 - prob) * target).sum(dims)
        return (fp / (fp + fn).clamp_min(1e-8)).clamp(*ALPHA_RANGE)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Tversky index`` per sample and channel ([B, T]) with adaptive alpha/beta."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    dims = tuple(range(2, prob.dim()))
    tp = (prob * target).sum(dims)
    fp = (prob * (1 - target)).sum(dims)
    fn = ((1 - prob) * target).sum(dims)
    alpha = adaptive_alpha(prob, target)
    index = (tp + SMOOTH) / (tp + alpha * fp + (1 - alpha) * fn + SMOOTH)
    return 1 - index


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over voxels, per sample and channel ([B, T])."""
    per_voxel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return per_voxel.flatten(2).mean(-1)


class LossParts(NamedTuple):
    """``total = segmentation + modality_weight * modality``; ``bce`` and ``dice`` are the two parts of
    ``segmentation`` (means over unmasked channels)."""

    total: torch.Tensor
    segmentation: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    modality: torch.Tensor


class HermesLoss(torch.nn.Module):
    """``forward(logits [B,T,...], target [B,T,...], mask [B,T], modality_logits [B,M], modality [B])``.

    The segmentation part is the mean of (BCE + Tversky) over channels with mask 1; with no such
    channel it is 0 (and still differentiable). ``skip_empty_dice``: channels whose target is empty
    in the patch get no Tversky term, only BCE (the means keep the same denominator).
    """

    def __init__(self, modality_weight: float = 0.01, skip_empty_dice: bool = False) -> None:
        super().__init__()
        self.modality_weight = modality_weight
        self.skip_empty_dice = skip_empty_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                modality_logits: torch.Tensor, modality: torch.Tensor) -> LossParts:
        mask = mask.float()
        count = mask.sum().clamp_min(1.0)
        # Masked channels are removed with where(), not multiplied by 0, so NaN/inf there cannot leak.
        keep = mask > 0
        bce = torch.where(keep, bce_loss(logits, target), torch.zeros_like(mask)).sum() / count
        dice_keep = keep & (target.flatten(2).sum(-1) > 0) if self.skip_empty_dice else keep
        dice = torch.where(dice_keep, tversky_loss(logits, target), torch.zeros_like(mask)).sum() / count
        seg = bce + dice
        mod = F.cross_entropy(modality_logits.float(), modality) if self.modality_weight else seg.new_zeros(())
        total = seg + self.modality_weight * mod
        return LossParts(total, seg, bce, dice, mod)
