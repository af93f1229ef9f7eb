"""Data-parallel training across processes: rank, world size and device, and the gradient all-reduce.

Only rank 0 writes files; DDP uses gloo on CPU and NCCL on CUDA, initialised from the torchrun
environment when ``WORLD_SIZE > 1``. Gradients are averaged with one all-reduce per step (not the
DDP wrapper), because the number of forward passes per step differs between ranks.

>>> Dist().main, Dist().world
(True, 1)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch

from UniversalSegLib.errors import InputError
from UniversalSegLib.training.config import TrainConfig


@dataclass
class Dist:
    """Process rank, world size and device of this process."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup_distributed(config: TrainConfig) -> Dist:
    """Initialise torch.distributed from torchrun's variables when ``WORLD_SIZE > 1``; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("training config asks for device: cuda but no CUDA GPU is available",
                         "use device: auto or cpu")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                             timeout=datetime.timedelta(minutes=60))
    return Dist(rank, world, device)


def all_reduce_grads(model: torch.nn.Module, world: int) -> None:
    """Average the gradients of ``model``'s trainable parameters over ``world`` processes (one all-reduce)."""
    grads = []
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_weights(model: torch.nn.Module) -> None:
    """Give every rank rank 0's initial weights."""
    for p in model.state_dict().values():
        torch.distributed.broadcast(p, 0)
