"""The training loop: universal Hermes training (or the per-dataset baseline) from a :class:`TrainConfig`.

    from UniversalSegLib.training import load_config, train
    best = train(load_config("configs/default.yaml"))      # -> runs/default/best.pt

    universalseg train CONFIG.yaml [--resume | --no-resume] [--iterations N]   (via main_train)
    torchrun --nproc_per_node 2 -m UniversalSegLib.training CONFIG.yaml        (DDP)

One iteration: every process draws ``batch_size`` samples (dataset by weight, then case), cuts and
augments a patch per sample, runs one forward/backward per patch size (gradients accumulate),
averages gradients over processes, clips them, steps the optimiser (AdamW or LAMB) and the
warm-up + poly schedule, and updates the EMA weights. Every ``checkpoint_every`` iterations
``last.pt`` holds everything needed to resume (weights, EMA, optimiser, schedule, RNG states,
iteration); a rerun of the same config resumes from it and draws exactly the samples an
uninterrupted run would have. Every ``val_every`` iterations the EMA weights are validated by
sliding window on the first ``val_cases_per_dataset`` validation cases of every dataset (Dice per
label over the cases where it is annotated); the best mean Dice is exported to ``best.pt`` in the
self-describing checkpoint format read by inference, and the last step's EMA weights to ``final.pt``
(the in-run validation holds only a few cases per dataset, so "best" can be picked by noise; both
files take the same ``universalseg evaluate`` and ``export``).

Baseline mode (``mode: baseline``) trains, for each dataset alone, the same ResUNet backbone with
no fusion blocks and a single modality row: its task tokens never meet image features, so each
task head is a fixed learned 1x1x1 kernel on the decoder features -- a plain multi-label ResUNet.
Each dataset gets ``iterations`` iterations; the checkpoints go to ``<output_dir>/baseline/<dataset>/``
and ``<output_dir>/baseline.json`` lists them.

Only rank 0 writes files; DDP uses gloo on CPU and NCCL on CUDA, initialised from the torchrun
environment when ``WORLD_SIZE > 1``. Gradients are averaged with one all-reduce per step (not the
DDP wrapper), because the number of forward passes per step differs between ranks.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from UniversalSegLib.errors import CatalogError, CheckpointError, InputError, UniversalSegError
from UniversalSegLib.training.augment import PatchAugmenter
from UniversalSegLib.training.config import DatasetSpec, TrainConfig, load_config
from UniversalSegLib.training.data import (
    CachedCase,
    CaseError,
    DatasetInfo,
    load_or_make_split,
    prepare_case,
    read_dataset,
)
from UniversalSegLib.training.losses import HermesLoss
from UniversalSegLib.training.optim import EMA, build_optimizer, grad_norm, warmup_poly
from UniversalSegLib.training.sampler import MixedSampler, Sample, TaskPool, collate, group_by_shape

log = logging.getLogger("UniversalSeg.training")

LAST = "last.pt"
BEST = "best.pt"
FINAL = "final.pt"
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------ distributed
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


def _all_reduce_grads(model: torch.nn.Module, world: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


# ------------------------------------------------------------------------------------------ data
@dataclass
class DatasetRun:
    """One dataset as the run uses it: spec, file info, task rows, cached train/val cases."""

    spec: DatasetSpec
    info: DatasetInfo
    tasks: dict[int, str]  # label value -> catalog task id
    modality: str  # catalog modality id
    kind: str
    generic_modality: str | None
    train: list[CachedCase]
    val: list[CachedCase]
    split_file: Path
    skipped: list[tuple[str, str]]
    license: str = ""


def _modality_root(catalog: Any, mid: str) -> str | None:
    """The last modality of ``mid``'s fallback chain (``MR-T1 -> MR``), or None when it has none."""
    current, seen = catalog.modality(mid), set()
    while current.fallback is not None and current.id not in seen:
        seen.add(current.id)
        current = catalog.modality(current.fallback)
    return None if current.id == mid else current.id


def prepare_datasets(config: TrainConfig, catalog: Any, dist: Dist | None = None,
                     progress: bool = False) -> list[DatasetRun]:
    """Read, check, split and cache every dataset of ``config``; bad cases are logged and left out."""
    dist = dist or Dist()
    runs = []
    for spec in config.datasets:
        folder = config.dataset_folder(spec)
        info = read_dataset(folder)
        entry = catalog.datasets.get(spec.name) if hasattr(catalog, "datasets") else None
        tasks = spec.tasks or (dict(entry.labels) if entry is not None else None)
        modality = spec.modality or (entry.modality if entry is not None else None)
        if tasks is None or modality is None:
            raise CatalogError(f"dataset '{spec.name}' is not in the catalog and its config entry lacks "
                               f"{'tasks' if tasks is None else 'modality'}",
                               "add 'tasks: {label value: task id}' and 'modality: ID' to its datasets entry")
        tasks = {int(v): catalog.task(t).id for v, t in tasks.items()}
        unknown = sorted(set(info.labels) - set(tasks))
        if unknown:
            log.warning("%s: label values %s have no catalog task and are not trained", spec.name, unknown)
        mod = catalog.modality(modality)
        if info.spacing_unknown and spec.spacing is not None:
            raise InputError(f"dataset '{spec.name}' has unknown voxel spacing (spacing_unknown in its "
                             f"dataset.json) but the config resamples it to {list(spec.spacing)} mm",
                             "set 'spacing: null' for it so the voxel grid is kept as stored")
        if dist.main:
            split = load_or_make_split(info, config.splits_path, config.val_fraction, write=True)
        dist.barrier()
        if not dist.main:
            split = load_or_make_split(info, config.splits_path, config.val_fraction, write=False)
        train_ids, val_ids = split
        skipped = list(info.skipped)
        for cid, problem in info.skipped:
            log.warning("skipping case %s/%s: %s", spec.name, cid, problem)
        by_id = {c.id: c for c in info.cases}
        ordered = [by_id[i] for i in train_ids + val_ids]
        # Ranks fill the cache in parallel (case i on rank i % world), then everyone reads it.
        for phase in ("fill", "read"):
            cached: dict[str, CachedCase] = {}
            todo = [c for i, c in enumerate(ordered) if phase == "read" or i % dist.world == dist.rank]
            bar = _bar(progress and dist.main and phase == "fill", len(todo), f"cache {spec.name}")
            for case in todo:
                try:
                    cached[case.id] = prepare_case(case, spec.spacing, mod.kind, config.cache_path,
                                                   labels=info.labels)
                except CaseError as err:
                    if phase == "read":
                        log.warning("skipping case: %s", err)
                        skipped.append((case.id, str(err)))
                bar.update(1)
            bar.close()
            if phase == "fill":
                dist.barrier()
        license_text = str(json.loads((folder / "dataset.json").read_text()).get("license", ""))
        runs.append(DatasetRun(
            spec, info, tasks, mod.id, mod.kind, _modality_root(catalog, mod.id),
            [cached[i] for i in train_ids if i in cached], [cached[i] for i in val_ids if i in cached],
            config.splits_path / f"{spec.name}.json", skipped, license_text))
        log.info("%s: %d train / %d validation cases (%d skipped), modality %s, spacing %s",
                 spec.name, len(runs[-1].train), len(runs[-1].val), len(skipped), mod.id, spec.spacing)
    if not any(r.train for r in runs):
        raise InputError("no usable training case in any dataset", "check the warnings above and the data paths")
    return runs


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    class _Null:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

        def set_postfix(self, **kw: Any) -> None:
            pass

    return _Null()


class IterationSamples(torch.utils.data.Dataset):
    """``dataset[i]`` -> the samples of iteration ``i`` for one rank (a pure function of i; worker-safe)."""

    def __init__(self, runs: list[DatasetRun], pool: TaskPool, sampler: MixedSampler, batch_size: int,
                 rank: int, augment: bool, generic_prob: float, length: int) -> None:
        self.runs, self.pool, self.sampler = runs, pool, sampler
        self.batch_size, self.rank, self.length = batch_size, rank, length
        self.generic_prob = generic_prob
        self.augmenters = [
            PatchAugmenter(tuple(r.spec.patch_size)[::-1], r.spec.flip_axes, r.spec.foreground_prob, augment,
                           r.spec.affine_prob, r.spec.scale_range, r.spec.rotate_deg, r.spec.invert_prob)
            for r in runs]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, iteration: int) -> list[Sample]:
        out = []
        for d, c, seed in self.sampler.draw(iteration, self.batch_size, self.rank):
            run = self.runs[d]
            case = run.train[c]
            image, label = self.augmenters[d](case, seed)
            mod_row = self.pool.dataset_modality[run.spec.name]
            mod_input = None
            if run.generic_modality in self.pool.modality_ids and self.generic_prob > 0:
                if np.random.default_rng([seed, 1]).random() < self.generic_prob:
                    mod_input = self.pool.modality_ids.index(run.generic_modality)
            out.append(Sample(image, label, self.pool.rows(run.spec.name, case.present_labels), mod_row,
                              run.spec.name, mod_input))
        return out


def _identity(item: Any) -> Any:
    """DataLoader collate that hands the iteration's sample list over unchanged (picklable)."""
    return item


# ------------------------------------------------------------------------------------------ model
def build_model(config: TrainConfig, num_tasks: int, num_modalities: int, prior_free: bool = False) -> Any:
    """HermesNet of the configured preset with the overrides; ``prior_free`` removes every fusion block."""
    from UniversalSegLib.models import HermesNet, preset

    cfg = preset(config.preset, num_tasks, num_modalities)
    if config.widths is not None:
        cfg = dataclasses.replace(cfg, widths=tuple(config.widths))
    if config.fusion_blocks is not None:
        cfg = dataclasses.replace(cfg, fusion_blocks=tuple(config.fusion_blocks))
    if config.blocks_per_stage is not None:
        cfg = dataclasses.replace(cfg, blocks_per_stage=int(config.blocks_per_stage))
    cfg = dataclasses.replace(cfg, fused_kernels=config.fused_kernels)
    if prior_free:
        cfg = dataclasses.replace(cfg, fusion_blocks=(0, 0, 0, 0, 0))
    return HermesNet(cfg)


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


# ------------------------------------------------------------------------------------------ validation
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


# ------------------------------------------------------------------------------------------ state
def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------ logging
class RunLog:
    """CSV logs (``train_log.csv``, ``val_log.csv``), optional TensorBoard, and ``curves.png``; rank 0 only."""

    TRAIN_FIELDS = ("iteration", "loss", "segmentation", "bce", "dice", "modality", "lr", "grad_norm",
                    "seconds_per_iteration")

    def __init__(self, folder: Path, start: int, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.writer = None
        if not enabled:
            return
        for name in ("train_log.csv", "val_log.csv"):  # drop rows written after the checkpoint resumed from
            path = folder / name
            if path.is_file():
                rows = list(csv.reader(path.open()))
                kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start]
                with path.open("w", newline="") as f:
                    csv.writer(f).writerows(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start + 1 if start else None)
        except Exception:  # tensorboard is optional
            self.writer = None

    def train(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append("train_log.csv", self.TRAIN_FIELDS, row)
        if self.writer:
            for k, v in row.items():
                if k != "iteration":
                    self.writer.add_scalar(f"train/{k}", v, row["iteration"])

    def val(self, iteration: int, scores: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append("val_log.csv", ("iteration", "mean_dice", "dice_per_label"),
                     {"iteration": iteration, "mean_dice": scores.get("mean", float("nan")),
                      "dice_per_label": json.dumps({k: round(v, 4) for k, v in scores.items() if k != "mean"})})
        if self.writer:
            for k, v in scores.items():
                self.writer.add_scalar(f"val/{k}", v, iteration)
            self.writer.flush()
        self.plot()

    def _append(self, name: str, fields: Sequence[str], row: dict) -> None:
        path = self.folder / name
        new = not path.is_file()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields))
            if new:
                w.writeheader()
            w.writerow(row)

    def plot(self) -> None:
        """``curves.png``: training loss (raw and smoothed) and validation Dice per dataset and mean."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            return
        train = list(csv.DictReader((self.folder / "train_log.csv").open())) \
            if (self.folder / "train_log.csv").is_file() else []
        val = list(csv.DictReader((self.folder / "val_log.csv").open())) \
            if (self.folder / "val_log.csv").is_file() else []
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        if train:
            it = np.array([int(r["iteration"]) for r in train])
            loss = np.array([float(r["loss"]) for r in train])
            a.plot(it, loss, alpha=0.3, label="loss")
            k = max(1, len(loss) // 50)
            a.plot(it[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
            a.set_xlabel("iteration")
            a.set_title("training loss")
            a.legend()
        if val:
            it = [int(r["iteration"]) for r in val]
            per = [json.loads(r["dice_per_label"]) for r in val]
            datasets = sorted({k.split("/")[0] for p in per for k in p})
            for d in datasets:
                b.plot(it, [np.mean([v for k, v in p.items() if k.startswith(d + "/")] or [np.nan]) for p in per],
                       marker=".", label=d)
            b.plot(it, [float(r["mean_dice"]) for r in val], "k-", marker="o", label="mean")
            b.set_ylim(0, 1)
            b.set_xlabel("iteration")
            b.set_title("validation Dice (EMA weights)")
            b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.folder / "curves.png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


# ------------------------------------------------------------------------------------------ training
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


def _train_one(config: TrainConfig, catalog: Any, dist: Dist, progress: bool, resume: bool,
               prior_free: bool, stop_after: int | None = None) -> Path:
    out = config.output_path
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _attach_file_log(out / "train.log")
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
        for p in model.state_dict().values():
            torch.distributed.broadcast(p, 0)
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
        state = _load_state(last_path)
        if state.get("task_ids") != pool.task_ids or state.get("modality_ids") != pool.modality_ids:
            raise CheckpointError(f"{last_path} was written by a run with other tasks or modalities",
                                  "use --no-resume to start over, or another output_dir")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, best, elapsed = int(state["iteration"]), float(state["best"]), float(state["elapsed_seconds"])
        log.info("resuming from %s at iteration %d", last_path, start)
    else:
        if dist.main and last_path.is_file():
            log.info("not resuming: %s will be replaced", last_path)
        if config.init_path is not None:
            _start_from(config.init_path, model, ema, pool)

    data = IterationSamples(runs, pool, sampler, config.batch_size, dist.rank, config.augment,
                            0.0 if prior_free else config.generic_modality_prob, config.iterations)
    iterations = range(start, config.iterations)
    if config.num_workers > 0:
        loader: Any = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, list(iterations)), batch_size=None, shuffle=False,
            num_workers=config.num_workers, persistent_workers=False, prefetch_factor=2, collate_fn=_identity)
    else:
        loader = (data[i] for i in iterations)

    runlog = RunLog(out, start, dist.main)
    bar = _bar(progress and dist.main, config.iterations, "train")
    bar.update(start)
    use_amp = config.amp and dist.device.type == "cuda"
    meta_common = _metadata(config, runs, prior_free)
    sec_avg = None
    model.train()
    it = start
    try:
        for it, samples in zip(iterations, loader, strict=False):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums = np.zeros(5)
            for group in group_by_shape(samples):
                batch = collate(group, pool.null_task)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    output = model(batch.image.to(dist.device), batch.tasks.to(dist.device),
                                   batch.modality_input.to(dist.device))
                parts = loss_fn(output.logits, batch.target.to(dist.device), batch.mask.to(dist.device),
                                output.modality_logits, batch.modality.to(dist.device))
                share = len(group) / len(samples)
                (parts.total * share).backward()
                sums += share * np.array([float(v.detach()) for v in parts])
            if dist.world > 1:
                _all_reduce_grads(model, dist.world)
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
                best = _validate_and_export(config, runs, pool, ema.module, dist, runlog, done, best, elapsed,
                                            inference, meta_common, catalog, best_path,
                                            final_path if done == config.iterations else None)
                model.train()
            stopping = stop_after is not None and done >= stop_after
            if done % config.checkpoint_every == 0 or done == config.iterations or stopping:
                if dist.main:
                    _atomic_save({"version": STATE_VERSION, "iteration": done, "model": model.state_dict(),
                                  "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                                  "sampler": sampler.state_dict(), "best": best, "elapsed_seconds": elapsed,
                                  "task_ids": pool.task_ids, "modality_ids": pool.modality_ids,
                                  "config": config.to_dict()}, last_path)
                dist.barrier()
            if stopping:
                break
    finally:
        bar.close()
        runlog.close()
    finished = stop_after is None or it + 1 >= config.iterations
    if finished and not (best_path.is_file() and final_path.is_file()):  # e.g. resumed after the last iteration
        best = _validate_and_export(config, runs, pool, ema.module, dist, runlog, config.iterations, best,
                                    elapsed, inference, meta_common, catalog, best_path, final_path,
                                    force=not best_path.is_file())
    dist.barrier()
    return best_path


def _start_from(path: Path, model: torch.nn.Module, ema: EMA, pool: TaskPool) -> None:
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
    theirs, ours = loaded.model.config.to_dict(), model.config.to_dict()
    if theirs != ours:
        differ = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
        raise CheckpointError(f"init_from {path} has another architecture (theirs, ours: {differ})",
                              "use the preset, widths, fusion_blocks and fused_kernels it was trained with")
    model.load_state_dict(loaded.model.state_dict())
    ema.module.load_state_dict(model.state_dict())
    log.info("starting from the weights of %s", path)


def _validate_and_export(config: TrainConfig, runs: list[DatasetRun], pool: TaskPool, model: torch.nn.Module,
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

        metadata = _jsonable(dict(meta_common, iterations=iteration, val_dice_per_label=
                                  {k: v for k, v in scores.items() if k != "mean"}, val_mean_dice=mean,
                                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                  training_seconds=round(elapsed, 1), weights="ema"))
        is_best = force or score > best or not best_path.is_file()
        for path, wanted in ((best_path, is_best), (final_path, final_path is not None)):
            if wanted:
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


def _metadata(config: TrainConfig, runs: list[DatasetRun], prior_free: bool) -> dict:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read training state {path} ({type(err).__name__}: {err})",
                              "delete it or use --no-resume to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path} is not a training state of this version",
                              "use --no-resume to start over, or another output_dir")
    return state


def _attach_file_log(path: Path) -> None:
    root = logging.getLogger("UniversalSeg")
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


# ------------------------------------------------------------------------------------------ command line
def build_train_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``universalseg train`` (added to ``parser`` when given, e.g. a sub-command parser)."""
    parser = parser or argparse.ArgumentParser(prog="universalseg train", description="Train a Hermes model.")
    parser.add_argument("config", help="training config YAML (see configs/default.yaml)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUTPUT_DIR/last.pt when present (default: yes)")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--threads", type=int, help="override the config's torch CPU threads per process")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="leave after iteration N (last.pt written); rerun to continue")
    parser.add_argument("--only", nargs="+", metavar="DATASET",
                        help="baseline mode: train only these datasets' baselines (to run several at once)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main_train(argv: Sequence[str] | None = None) -> int:
    """``universalseg train CONFIG.yaml [--resume/--no-resume] [--iterations N] [--threads N] [--stop-after N]``.

    Returns the exit code.

    Prints the best checkpoint's path; a :class:`UniversalSegError` prints ``error: ...`` and gives 2.
    """
    args = build_train_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = load_config(args.config, iterations=args.iterations, threads=args.threads)
        best = train(config, progress=not args.quiet, resume=args.resume, stop_after=args.stop_after,
                     only=args.only)
    except UniversalSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(best)
    return 0
