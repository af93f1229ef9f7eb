"""In-run validation of the EMA weights, and the ``best.pt`` / ``final.pt`` model checkpoints it writes.

Every ``val_every`` iterations the EMA weights are validated by sliding window on the first
``val_cases_per_dataset`` validation cases of every dataset (Dice per label over the cases where it
is annotated); the best mean Dice is exported to ``best.pt`` in the self-describing checkpoint
format read by inference, and the last step's EMA weights to ``final.pt`` (the in-run validation
holds only a few cases per dataset, so "best" can be picked by noise; both files take the same
``universalseg evaluate`` and ``export``).

>>> jsonable({"dice": float("nan"), 1: (np.float32(0.5),)})
{'dice': None, '1': [0.5]}
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from UniversalSegLib.training.config import TrainConfig
from UniversalSegLib.training.distributed import Dist
from UniversalSegLib.training.run_data import DatasetRun
from UniversalSegLib.training.runlog import RunLog
from UniversalSegLib.training.sampler import TaskPool

log = logging.getLogger("UniversalSeg.training")


@torch.no_grad()
def validate(model: torch.nn.Module, runs: list[DatasetRun], pool: TaskPool, cases_per_dataset: int,
             overlap: float, device: torch.device) -> dict[str, float]:
    """Dice per ``"<dataset>/<label name>"`` (mean over the validation cases annotating it) and ``"mean"``.

    Each case is segmented whole by sliding window (its dataset's patch size) for its annotated tasks,
    thresholded at probability 0.5. A label absent from both prediction and truth scores 1.
    """
    from monai.inferers import sliding_window_inference

    model.eval()
    scores: dict[str, list[float]] = {}
    for run in runs:
        roi = tuple(run.spec.patch_size)[::-1]
        for case in run.val[:cases_per_dataset]:
            queries = pool.rows(run.spec.name, case.present_labels)
            if not queries:
                continue
            image = torch.from_numpy(case.image(mmap=False).astype(np.float32))[None, None].to(device)
            label = torch.from_numpy(case.label(mmap=False).astype(np.int64)).to(device)
            tasks = torch.tensor([[r for r, _ in queries]], device=device)
            mod = torch.tensor([pool.dataset_modality[run.spec.name]], device=device)

            def predictor(x: torch.Tensor, tasks: torch.Tensor = tasks, mod: torch.Tensor = mod) -> torch.Tensor:
                n = x.shape[0]
                return model(x, tasks.expand(n, -1), mod.expand(n)).logits.float()

            # windows in pairs: a batch of one takes PyTorch's slow CPU convolution (training.sampler)
            logits = sliding_window_inference(image, roi, 2, predictor, overlap=overlap, mode="gaussian",
                                              padding_mode="constant", cval=case.pad_value)  # as the crops
            pred = torch.as_tensor(logits)[0] > 0
            for j, (_, value) in enumerate(queries):
                truth = label == value
                inter = (pred[j] & truth).sum().item()
                total = pred[j].sum().item() + truth.sum().item()
                name = f"{run.spec.name}/{run.info.labels.get(value, value)}"
                scores.setdefault(name, []).append(1.0 if total == 0 else 2.0 * inter / total)
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result["mean"] = float(np.mean(list(result.values()))) if result else float("nan")
    return result


def validate_and_export(config: TrainConfig, runs: list[DatasetRun], pool: TaskPool, model: Any,
                        dist: Dist, runlog: RunLog, iteration: int, best: float, elapsed: float, inference: dict,
                        meta_common: dict, catalog: Any, best_path: Path, final_path: Path | None = None,
                        force: bool = False) -> float:
    """Validate ``model``; write it to ``best_path`` when its mean Dice is the best yet (or ``force``) and
    to ``final_path`` when given (the last step). Returns the best mean Dice so far."""
    if dist.main:
        t0 = time.perf_counter()
        scores = validate(model, runs, pool, config.val_cases_per_dataset, config.val_overlap, dist.device)
        runlog.val(iteration, scores)
        mean = scores["mean"]
        log.info("iteration %d: validation mean Dice %.4f (%.0f s) %s", iteration, mean,
                 time.perf_counter() - t0, {k: round(v, 3) for k, v in scores.items() if k != "mean"})
        score = mean if math.isfinite(mean) else -1.0
        from UniversalSegLib.models import save_checkpoint

        metadata = jsonable(dict(meta_common, iterations=iteration, val_dice_per_label=
                                  {k: v for k, v in scores.items() if k != "mean"}, val_mean_dice=mean,
                                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                  training_seconds=round(elapsed, 1), weights="ema"))
        is_best = force or score > best or not best_path.is_file()
        for path in [best_path] * is_best + [final_path] * (final_path is not None):
            if path is not None:
                save_checkpoint(path, model, task_ids=pool.task_ids, modality_ids=pool.modality_ids,
                                catalog_version=catalog.version, inference=inference, metadata=metadata)
        if is_best:
            best = max(best, score)
            log.info("best checkpoint %s (mean Dice %.4f at iteration %d)", best_path, mean, iteration)
    if dist.world > 1:  # every rank keeps the same "best"
        value = torch.tensor([best], dtype=torch.float64)
        torch.distributed.broadcast(value, 0)
        best = float(value.item())
    return best


def inference_settings(config: TrainConfig, runs: list[DatasetRun], catalog: Any) -> dict:
    """The checkpoint's ``inference`` dict: default spacing and window size (x, y, z), and per catalog group
    the spacing and patch size it was trained at."""
    group_spacing: dict[str, list[float] | None] = {}
    group_patch: dict[str, list[int]] = {}
    for run in runs:
        value = None if run.spec.spacing is None else [float(s) for s in run.spec.spacing]
        for tid in run.tasks.values():
            group = catalog.task(tid).group
            group_patch.setdefault(group, [int(s) for s in run.spec.patch_size])
            if group in group_spacing and group_spacing[group] != value:
                log.warning("group %s is trained at two spacings (%s and %s); exporting the first",
                            group, group_spacing[group], value)
                continue
            group_spacing[group] = value
    first = config.datasets[0]
    spacing = config.inference_spacing if config.inference_spacing is not None else first.spacing
    patch = config.inference_patch_size or first.patch_size
    return {"spacing": None if spacing is None else [float(s) for s in spacing],
            "group_spacing": group_spacing, "patch_size": [int(s) for s in patch], "group_patch_size": group_patch}


def run_metadata(config: TrainConfig, runs: list[DatasetRun], prior_free: bool) -> dict:
    """The checkpoint metadata every validation of the run shares: mode, datasets, splits, licences, config."""
    return {
        "mode": "baseline" if prior_free else "universal",
        "datasets": [{"name": r.spec.name, "weight": r.spec.weight, "modality": r.modality,
                      "spacing": None if r.spec.spacing is None else list(r.spec.spacing),
                      "patch_size": list(r.spec.patch_size), "train_cases": len(r.train), "val_cases": len(r.val),
                      "skipped_cases": [cid for cid, _ in r.skipped], "split_file": str(r.split_file),
                      "license": r.license} for r in runs],
        "split_files": [str(r.split_file) for r in runs],
        "licenses": {r.spec.name: r.license for r in runs},
        "config": config.to_dict(),
    }


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers, tuples as lists and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
