"""Optimisers, learning-rate schedule and EMA weights for training.

* :class:`Lamb`: layer-wise adaptive moments (You et al. 2020), as Hermes uses; torch ships none.
* :func:`warmup_poly`: linear warm-up from ``lr / 100`` to ``lr``, then polynomial decay to 0.
* :class:`EMA`: exponential moving average of the weights (the copy used for validation and export).

>>> import torch
>>> net = torch.nn.Linear(2, 1)
>>> opt = build_optimizer("lamb", net.parameters(), lr=1e-3, weight_decay=1e-5)
>>> sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_poly(total=100, warmup=10, power=0.9))
>>> round(sched.get_last_lr()[0], 7)
1e-05
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with decoupled weight decay, each tensor's step scaled by ``||w|| / ||update||``."""

    def __init__(self, params: Iterable, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError("invalid LAMB hyper-parameters")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p.float(), alpha=group["weight_decay"])
                w_norm, u_norm = p.float().norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"adamw"`` (torch) or ``"lamb"`` (:class:`Lamb`)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_poly(total: int, warmup: int, power: float) -> Callable[[int], float]:
    """LR factor at step ``i``: ``0.01 -> 1`` linearly over ``warmup`` steps, then ``(1 - t)^power``."""

    def factor(i: int) -> float:
        if warmup > 0 and i < warmup:
            return 0.01 + 0.99 * i / warmup
        span = max(1, total - warmup)
        return max(0.0, 1.0 - (i - warmup) / span) ** power

    return factor


class EMA:
    """A frozen copy of ``model`` whose parameters follow ``decay * ema + (1 - decay) * model``.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early
    validations are not dominated by the random initialisation. Buffers are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.99) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.decay > 0 else 0.0
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"state": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state"])
        self.updates = int(state["updates"])


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (for logging)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
