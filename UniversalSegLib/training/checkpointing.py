"""The run folder's training state: ``last.pt`` written atomically, resumed exactly, or weights from ``init_from``.

``last.pt`` holds everything needed to resume (weights, EMA, optimiser, schedule, RNG states,
iteration, best Dice, training time); a rerun of the same config resumes from it and draws exactly
the samples an uninterrupted run would have. ``best.pt`` and ``final.pt`` are model checkpoints in
the self-describing format read by inference (written by :mod:`.validation`).

>>> LAST, BEST, FINAL
('last.pt', 'best.pt', 'final.pt')
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.training.config import TrainConfig
from UniversalSegLib.training.optim import EMA
from UniversalSegLib.training.sampler import MixedSampler, TaskPool

log = logging.getLogger("UniversalSeg.training")

LAST = "last.pt"
BEST = "best.pt"
FINAL = "final.pt"
STATE_VERSION = 1


def rng_state() -> dict:
    """The torch, Python, NumPy and CUDA random states, in a form ``torch.load(weights_only=True)`` reads."""
    np_state: Any = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: Path, *, iteration: int, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
               scheduler: Any, sampler: MixedSampler, best: float, elapsed: float, pool: TaskPool,
               config: TrainConfig) -> None:
    """Write the resumable state after ``iteration`` to ``path`` (``last.pt``)."""
    atomic_save({"version": STATE_VERSION, "iteration": iteration, "model": model.state_dict(),
                 "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "sampler": sampler.state_dict(), "best": best, "elapsed_seconds": elapsed,
                 "task_ids": pool.task_ids, "modality_ids": pool.modality_ids,
                 "config": config.to_dict()}, path)


def load_state(path: Path) -> dict:
    """Read a training state written by :func:`save_state`; CheckpointError when it is not one of this version."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read training state {path} ({type(err).__name__}: {err})",
                              "delete it or use --no-resume to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path} is not a training state of this version",
                              "use --no-resume to start over, or another output_dir")
    return state


def resume(path: Path, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, scheduler: Any,
           pool: TaskPool) -> tuple[int, float, float]:
    """Load ``path`` into the run's objects and RNGs; returns (iteration, best mean Dice, training seconds)."""
    state = load_state(path)
    if state.get("task_ids") != pool.task_ids or state.get("modality_ids") != pool.modality_ids:
        raise CheckpointError(f"{path} was written by a run with other tasks or modalities",
                              "use --no-resume to start over, or another output_dir")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resuming from %s at iteration %d", path, int(state["iteration"]))
    return int(state["iteration"]), float(state["best"]), float(state["elapsed_seconds"])


def start_from(path: Path, model: torch.nn.Module, ema: EMA, pool: TaskPool) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` and its EMA (``init_from``)."""
    from UniversalSegLib.models import load_checkpoint

    loaded = load_checkpoint(path)
    if loaded.source_format != "universalseg":
        raise CheckpointError(f"init_from {path} is not a UniversalSeg checkpoint",
                              "give a run's best.pt or a model written by 'universalseg export'")
    for what, theirs, ours in (("tasks", loaded.task_ids, pool.task_ids),
                               ("modalities", loaded.modality_ids, pool.modality_ids)):
        if list(theirs) != list(ours):
            raise CheckpointError(f"init_from {path} has {what} {list(theirs)}, this run needs {list(ours)}",
                                  "train with the same datasets (and task overrides) as the run that wrote it")
    their_net, our_net = loaded.model.config.to_dict(), cast(Any, model).config.to_dict()
    if their_net != our_net:
        differ = {k: (their_net.get(k), our_net.get(k)) for k in our_net if their_net.get(k) != our_net.get(k)}
        raise CheckpointError(f"init_from {path} has another architecture (theirs, ours: {differ})",
                              "use the preset, widths, fusion_blocks and fused_kernels it was trained with")
    model.load_state_dict(loaded.model.state_dict())
    ema.module.load_state_dict(model.state_dict())
    log.info("starting from the weights of %s", path)
