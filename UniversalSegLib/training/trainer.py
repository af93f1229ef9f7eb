"""The training loop: universal Hermes training (or the per-dataset baseline) from a :class:`TrainConfig`.

    from UniversalSegLib.training import load_config, train
    best = train(load_config("configs/default.yaml"))      # -> runs/default/best.pt

    universalseg train CONFIG.yaml [--resume | --no-resume] [--iterations N]   (via main_train)
    torchrun --nproc_per_node 2 -m UniversalSegLib.training CONFIG.yaml        (DDP)

One iteration: every process draws ``batch_size`` samples (dataset by weight, then case), cuts and
augments a patch per sample, runs one forward/backward per patch size (gradients accumulate),
averages gradients over processes, clips them, steps the optimiser (AdamW or LAMB) and the
warm-up + poly schedule, and updates the EMA weights. Every ``checkpoint_every`` iterations
``last.pt`` holds everything needed to resume; every ``val_every`` iterations the EMA weights are
validated and the best exported to ``best.pt``, the last step's to ``final.pt``.

Baseline mode (``mode: baseline``) trains, for each dataset alone, the same ResUNet backbone with
no fusion blocks and a single modality row: its task tokens never meet image features, so each
task head is a fixed learned 1x1x1 kernel on the decoder features -- a plain multi-label ResUNet.
Each dataset gets ``iterations`` iterations; the checkpoints go to ``<output_dir>/baseline/<dataset>/``
and ``<output_dir>/baseline.json`` lists them.

The parts, each importable from here as before: :mod:`.distributed` (ranks, gradient all-reduce),
:mod:`.run_data` (datasets prepared and drawn per iteration), :mod:`.checkpointing` (``last.pt``,
resume, ``init_from``), :mod:`.validation` (in-run Dice, ``best.pt`` / ``final.pt``), :mod:`.runlog`
(CSV, TensorBoard, curves, progress bar) and :mod:`.train_cli` (``universalseg train``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from UniversalSegLib.errors import InputError
from UniversalSegLib.training.checkpointing import BEST, FINAL, LAST, STATE_VERSION, save_state, start_from
from UniversalSegLib.training.checkpointing import resume as resume_state
from UniversalSegLib.training.config import TrainConfig, load_config
from UniversalSegLib.training.distributed import Dist, all_reduce_grads, broadcast_weights, setup_distributed
from UniversalSegLib.training.losses import HermesLoss
from UniversalSegLib.training.optim import EMA, build_optimizer, grad_norm, warmup_poly
from UniversalSegLib.training.run_data import DatasetRun, IterationSamples, iteration_loader, prepare_datasets
from UniversalSegLib.training.runlog import RunLog, attach_file_log, progress_bar
from UniversalSegLib.training.sampler import MixedSampler, Sample, TaskPool, collate, group_by_shape
from UniversalSegLib.training.train_cli import build_train_parser, main_train
from UniversalSegLib.training.validation import inference_settings, run_metadata, validate, validate_and_export

__all__ = ["BEST", "EMA", "FINAL", "LAST", "STATE_VERSION", "DatasetRun", "Dist", "IterationSamples", "RunLog",
           "baseline_iterations", "build_model", "build_train_parser", "inference_settings", "load_config",
           "main_train", "prepare_datasets", "setup_distributed", "train", "validate"]

log = logging.getLogger("UniversalSeg.training")


def train(config: TrainConfig, progress: bool = True, *, resume: bool = True, catalog: Any = None,
          stop_after: int | None = None, only: Sequence[str] | None = None) -> Path:
    """Run the training ``config`` describes and return the path of the best checkpoint.

    ``resume``: continue from ``<output_dir>/last.pt`` when it exists (False starts over and
    replaces it). ``catalog``: a :class:`~UniversalSegLib.catalog.Catalog` (default: the bundled one).
    ``stop_after``: leave after this iteration (``last.pt`` written; the schedule still assumes
    ``config.iterations``), to split a run into sessions; ``best.pt`` may then not exist yet.
    Baseline mode returns ``<output_dir>/baseline.json`` (one checkpoint per dataset). ``only``: in
    baseline mode, train just these datasets (their steps still computed from the whole config), so
    several processes or machines share one baseline run; the manifest lists every finished dataset.
    """
    if only and config.mode != "baseline":
        raise InputError("--only applies to baseline mode", "leave it out, or set mode: baseline")
    if catalog is None:
        from UniversalSegLib.catalog import Catalog

        catalog = Catalog.load()
    torch.set_num_threads(config.threads)
    dist = setup_distributed(config)
    if config.mode == "universal":
        return _train_one(config, catalog, dist, progress, resume, prior_free=False, stop_after=stop_after)
    results, steps = {}, baseline_iterations(config)
    unknown = sorted(set(only or ()) - set(steps))
    if unknown:
        raise InputError(f"--only names datasets {unknown} that the config does not train",
                          f"use some of: {', '.join(steps)}")
    for spec in config.datasets:
        if only and spec.name not in only:
            best = config.output_path / "baseline" / spec.name / "best.pt"
            if best.is_file():
                results[spec.name] = str(best)
            continue
        warmup = round(config.warmup_iterations * steps[spec.name] / config.iterations)
        sub = dataclasses.replace(config, datasets=[spec], output_dir=str(config.output_path / "baseline" / spec.name),
                                  iterations=steps[spec.name], warmup_iterations=warmup,
                                  generic_modality_prob=0.0, modality_loss_weight=0.0, inference_spacing=None,
                                  inference_patch_size=None)
        results[spec.name] = str(_train_one(sub, catalog, dist, progress, resume, prior_free=True,
                                            stop_after=stop_after))
    manifest = config.output_path / "baseline.json"
    if dist.main:
        manifest.write_text(json.dumps({"mode": "baseline", "iterations_per_dataset": steps,
                                        "checkpoints": results}, indent=1) + "\n")
    return manifest


def baseline_iterations(config: TrainConfig) -> dict[str, int]:
    """Steps each baseline gets: the universal run's expected share, ``iterations x weight / sum(weights)``.

    >>> baseline_iterations(load_config("configs/baseline.yaml"))  # doctest: +SKIP
    {'ct_headneck_openkbp': 923, 'mri_hippocampus_msd': 646, 'mri_cardiac_acdc': 738, ...}
    """
    total = sum(spec.weight for spec in config.datasets)
    return {spec.name: max(1, round(config.iterations * spec.weight / total)) for spec in config.datasets}


def build_model(config: TrainConfig, num_tasks: int, num_modalities: int, prior_free: bool = False) -> Any:
    """HermesNet of the configured preset with the overrides; ``prior_free`` removes every fusion block."""
    from UniversalSegLib.models import HermesNet, preset

    cfg = preset(config.preset, num_tasks, num_modalities)
    if config.widths is not None:
        cfg = dataclasses.replace(cfg, widths=cast(Any, tuple(config.widths)))  # HermesConfig checks the length
    if config.fusion_blocks is not None:
        cfg = dataclasses.replace(cfg, fusion_blocks=cast(Any, tuple(config.fusion_blocks)))
    if config.blocks_per_stage is not None:
        cfg = dataclasses.replace(cfg, blocks_per_stage=int(config.blocks_per_stage))
    cfg = dataclasses.replace(cfg, fused_kernels=config.fused_kernels)
    if prior_free:
        cfg = dataclasses.replace(cfg, fusion_blocks=(0, 0, 0, 0, 0))
    return HermesNet(cfg)


def _train_one(config: TrainConfig, catalog: Any, dist: Dist, progress: bool, resume: bool,
               prior_free: bool, stop_after: int | None = None) -> Path:
    out = config.output_path
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        attach_file_log(out / "train.log")
    dist.barrier()
    runs = prepare_datasets(config, catalog, dist, progress)
    if prior_free:  # baseline: one modality row, never swapped for a generic one
        pool = TaskPool.build({r.spec.name: r.tasks for r in runs}, {r.spec.name: r.modality for r in runs})
    else:
        pool = TaskPool.build({r.spec.name: r.tasks for r in runs}, {r.spec.name: r.modality for r in runs},
                              extra_modalities=[r.generic_modality for r in runs
                                                if r.generic_modality and config.generic_modality_prob > 0])
    torch.manual_seed(config.seed)
    model = build_model(config, len(pool.task_ids), len(pool.modality_ids), prior_free).to(dist.device)
    if dist.world > 1:
        broadcast_weights(model)
    elif dist.device.type == "cpu":  # same results; oneDNN convolutions, 1.2-1.4x faster steps on 2 threads
        model = model.to(memory_format=torch.channels_last_3d)
    ema = EMA(model, config.ema_decay)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_poly(config.iterations, config.warmup_iterations, config.poly_power))
    sampler = MixedSampler([r.spec.weight for r in runs], [len(r.train) for r in runs], config.seed,
                           config.one_dataset_per_step)
    loss_fn = HermesLoss(config.modality_loss_weight, config.skip_empty_dice)
    inference = inference_settings(config, runs, catalog)

    start, best, elapsed = 0, -math.inf, 0.0
    last_path, best_path, final_path = out / LAST, out / BEST, out / FINAL
    if resume and last_path.is_file():
        start, best, elapsed = resume_state(last_path, model, ema, optimizer, scheduler, pool)
    else:
        if dist.main and last_path.is_file():
            log.info("not resuming: %s will be replaced", last_path)
        if config.init_path is not None:
            start_from(config.init_path, model, ema, pool)

    data = IterationSamples(runs, pool, sampler, config.batch_size, dist.rank, config.augment,
                            0.0 if prior_free else config.generic_modality_prob, config.iterations)
    iterations = range(start, config.iterations)
    loader = iteration_loader(data, iterations, config.num_workers)

    runlog = RunLog(out, start, dist.main)
    bar = progress_bar(progress and dist.main, config.iterations, "train")
    bar.update(start)
    use_amp = config.amp and dist.device.type == "cuda"
    meta_common = run_metadata(config, runs, prior_free)
    sec_avg: float | None = None
    model.train()
    it = start
    try:
        for it, samples in zip(iterations, loader, strict=False):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums = _forward_backward(model, samples, pool, loss_fn, dist.device, use_amp)
            if dist.world > 1:
                all_reduce_grads(model, dist.world)
            gnorm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                     if config.grad_clip > 0 else grad_norm(model.parameters()))
            if math.isfinite(gnorm):
                optimizer.step()
            else:
                log.warning("iteration %d: gradient norm is %s; step skipped", it, gnorm)
            scheduler.step()
            ema.update(model)
            dt = time.perf_counter() - t0
            elapsed += dt
            sec_avg = dt if sec_avg is None else 0.9 * sec_avg + 0.1 * dt
            done = it + 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", s_it=f"{sec_avg:.2f}")
            if done % config.log_every == 0 or done == config.iterations:
                runlog.train({"iteration": done, "loss": sums[0], "segmentation": sums[1], "bce": sums[2],
                              "dice": sums[3], "modality": sums[4], "lr": scheduler.get_last_lr()[0],
                              "grad_norm": gnorm, "seconds_per_iteration": dt})
            if done % config.val_every == 0 or done == config.iterations:
                best = validate_and_export(config, runs, pool, ema.module, dist, runlog, done, best, elapsed,
                                           inference, meta_common, catalog, best_path,
                                           final_path if done == config.iterations else None)
                model.train()
            stopping = stop_after is not None and done >= stop_after
            if done % config.checkpoint_every == 0 or done == config.iterations or stopping:
                if dist.main:
                    save_state(last_path, iteration=done, model=model, ema=ema, optimizer=optimizer,
                               scheduler=scheduler, sampler=sampler, best=best, elapsed=elapsed, pool=pool,
                               config=config)
                dist.barrier()
            if stopping:
                break
    finally:
        bar.close()
        runlog.close()
    finished = stop_after is None or it + 1 >= config.iterations
    if finished and not (best_path.is_file() and final_path.is_file()):  # e.g. resumed after the last iteration
        best = validate_and_export(config, runs, pool, ema.module, dist, runlog, config.iterations, best,
                                   elapsed, inference, meta_common, catalog, best_path, final_path,
                                   force=not best_path.is_file())
    dist.barrier()
    return best_path


def _forward_backward(model: torch.nn.Module, samples: list[Sample], pool: TaskPool, loss_fn: HermesLoss,
                      device: torch.device, use_amp: bool) -> np.ndarray:
    """One forward/backward per patch size of the iteration's samples, gradients weighted by their share.

    Returns the loss parts (total, segmentation, BCE, Dice, modality), averaged over the samples."""
    sums = np.zeros(5)
    for group in group_by_shape(samples):
        batch = collate(group, pool.null_task)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            output = model(batch.image.to(device), batch.tasks.to(device), batch.modality_input.to(device))
        parts = loss_fn(output.logits, batch.target.to(device), batch.mask.to(device),
                        output.modality_logits, batch.modality.to(device))
        share = len(group) / len(samples)
        (parts.total * share).backward()
        sums += share * np.array([float(v.detach()) for v in parts])
    return sums
