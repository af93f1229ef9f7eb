"""The datasets as one run uses them: read, checked, split and cached, then drawn per iteration.

:func:`prepare_datasets` turns every ``datasets`` entry of a :class:`TrainConfig` into a
:class:`DatasetRun` (catalog tasks and modality, cached train and validation cases, skipped cases);
:class:`IterationSamples` gives the samples of iteration ``i`` for one rank as a pure function of
``i``, so a resumed run draws what an uninterrupted one would have and DataLoader workers agree.

>>> iteration_loader([["a"], ["b"], ["c"]], range(1, 3), num_workers=0).__next__()
['b']
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from UniversalSegLib.errors import CatalogError, InputError
from UniversalSegLib.training.augment import PatchAugmenter
from UniversalSegLib.training.config import DatasetSpec, TrainConfig
from UniversalSegLib.training.data import (
    CachedCase,
    CaseError,
    DatasetInfo,
    load_or_make_split,
    prepare_case,
    read_dataset,
)
from UniversalSegLib.training.distributed import Dist
from UniversalSegLib.training.runlog import progress_bar
from UniversalSegLib.training.sampler import MixedSampler, Sample, TaskPool

log = logging.getLogger("UniversalSeg.training")


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


def modality_root(catalog: Any, mid: str) -> str | None:
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
            bar = progress_bar(progress and dist.main and phase == "fill", len(todo), f"cache {spec.name}")
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
        license_text = str(json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("license", ""))
        runs.append(DatasetRun(
            spec, info, tasks, mod.id, mod.kind, modality_root(catalog, mod.id),
            [cached[i] for i in train_ids if i in cached], [cached[i] for i in val_ids if i in cached],
            config.splits_path / f"{spec.name}.json", skipped, license_text))
        log.info("%s: %d train / %d validation cases (%d skipped), modality %s, spacing %s",
                 spec.name, len(runs[-1].train), len(runs[-1].val), len(skipped), mod.id, spec.spacing)
    if not any(r.train for r in runs):
        raise InputError("no usable training case in any dataset", "check the warnings above and the data paths")
    return runs


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


def iteration_loader(data: Any, iterations: range, num_workers: int) -> Iterator[Any]:
    """The samples of each of ``iterations`` in order (``data[i]``, e.g. :class:`IterationSamples`): from
    ``num_workers`` DataLoader processes, or inline."""
    if num_workers > 0:
        return iter(torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, list(iterations)), batch_size=None, shuffle=False,
            num_workers=num_workers, persistent_workers=False, prefetch_factor=2, collate_fn=_identity))
    return (data[i] for i in iterations)
