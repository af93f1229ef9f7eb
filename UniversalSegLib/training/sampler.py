"""Mixed batches over datasets with partial labels.

* :class:`TaskPool` maps each dataset's label values to rows of the network's task and modality pools
  (a catalog task shared by two datasets gets one row).
* :class:`MixedSampler` picks (dataset, case, augmentation seed) for every sample of an iteration:
  dataset by weighted random choice, then a case uniformly. The draw is a pure function of
  (seed, rank, iteration), so resuming at iteration ``i`` repeats exactly what an uninterrupted run
  would draw, and every DDP rank draws different samples.
* :func:`collate` stacks samples of one patch size: each sample queries only the tasks annotated
  in its case (``present_labels``), padded with the null token to the longest list; padded channels
  get mask 0, so an unannotated task is never trained towards background.

Samples of different patch sizes go through separate forward passes whose gradients add up (InstanceNorm
makes that numerically equivalent to one batch). On CPU a batch of one is the slow case: PyTorch then
picks its naive 3D convolution for thin inputs (ACDC's 16 slices: 0.97 s per sample alone, 0.26 s in a
pair), so ``one_dataset_per_step`` draws every sample of a step from one dataset and the step is one
forward pass; the datasets still mix across steps in proportion to their weights.

>>> pool = TaskPool.build({"a": {1: "liver", 2: "spleen"}, "b": {1: "spleen"}}, {"a": "CT", "b": "MR-T1"})
>>> pool.task_ids, pool.rows("b", present=[1])
(['liver', 'spleen'], [(1, 1)])
>>> MixedSampler([3.0, 1.0], [10, 5], seed=0).draw(iteration=0, batch_size=2)  # doctest: +SKIP
[(0, 7, 1882...), (1, 2, 9...)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TaskPool:
    """Pool rows: ``task_ids[row]`` and ``modality_ids[row]``; per dataset, label value -> task row."""

    task_ids: list[str]
    modality_ids: list[str]
    label_rows: dict[str, dict[int, int]]  # dataset -> {label value: task row}
    dataset_modality: dict[str, int]  # dataset -> modality row

    @classmethod
    def build(cls, dataset_tasks: Mapping[str, Mapping[int, str]], dataset_modality: Mapping[str, str],
              extra_modalities: Sequence[str] = ()) -> TaskPool:
        """Rows in order of first appearance (datasets in the given order, labels by value)."""
        task_ids: list[str] = []
        label_rows: dict[str, dict[int, int]] = {}
        for name, labels in dataset_tasks.items():
            rows = {}
            for value in sorted(labels):
                tid = labels[value]
                if tid not in task_ids:
                    task_ids.append(tid)
                rows[int(value)] = task_ids.index(tid)
            label_rows[name] = rows
        modality_ids = list(dict.fromkeys([*dataset_modality.values(), *extra_modalities]))
        return cls(task_ids, modality_ids, label_rows,
                   {name: modality_ids.index(m) for name, m in dataset_modality.items()})

    @property
    def null_task(self) -> int:
        return len(self.task_ids)

    def rows(self, dataset: str, present: Sequence[int]) -> list[tuple[int, int]]:
        """``[(task row, label value)]`` queried for a case: its annotated labels that have a task."""
        table = self.label_rows[dataset]
        return [(table[v], int(v)) for v in sorted(present) if v in table]


class MixedSampler:
    """Weighted choice of dataset, then uniform choice of case, per sample; stateless given the iteration.

    With ``one_dataset_per_step`` the dataset is drawn once per iteration (and rank) for all its samples.
    """

    def __init__(self, weights: Sequence[float], case_counts: Sequence[int], seed: int = 0,
                 one_dataset_per_step: bool = False) -> None:
        if len(weights) != len(case_counts) or not weights:
            raise ValueError("one weight and one case count per dataset are needed")
        w = np.asarray(weights, dtype=np.float64) * (np.asarray(case_counts) > 0)
        if w.sum() <= 0:
            raise ValueError("no dataset has both a positive weight and training cases")
        self.probabilities = w / w.sum()
        self.case_counts = [int(c) for c in case_counts]
        self.seed = int(seed)
        self.one_dataset_per_step = bool(one_dataset_per_step)

    def draw(self, iteration: int, batch_size: int, rank: int = 0) -> list[tuple[int, int, int]]:
        """``batch_size`` tuples ``(dataset index, case index, augmentation seed)`` for this iteration and rank."""
        rng = np.random.default_rng([self.seed, int(rank), int(iteration)])
        datasets = rng.choice(len(self.probabilities), size=1 if self.one_dataset_per_step else batch_size,
                              p=self.probabilities)
        if self.one_dataset_per_step:
            datasets = np.repeat(datasets, batch_size)
        out = []
        for d in datasets:
            case = int(rng.integers(self.case_counts[d]))
            out.append((int(d), case, int(rng.integers(2**31 - 1))))
        return out

    def state_dict(self) -> dict:
        """What defines the draws (they depend on nothing else but the iteration)."""
        return {"seed": self.seed, "probabilities": self.probabilities.tolist(), "case_counts": self.case_counts,
                "one_dataset_per_step": self.one_dataset_per_step}


@dataclass
class Sample:
    """One patch: image (z, y, x) float32, label (z, y, x) uint8, queried (task row, label value) pairs."""

    image: np.ndarray
    label: np.ndarray
    queries: list[tuple[int, int]]
    modality: int  # the case's own modality row (target of the modality loss)
    dataset: str
    modality_input: int | None = None  # row fed to the network when not ``modality`` (generic prior)


@dataclass
class Batch:
    """Tensors for one forward pass (all samples share the patch size)."""

    image: torch.Tensor  # [B, 1, D, H, W]
    tasks: torch.Tensor  # [B, T] long, null-padded
    target: torch.Tensor  # [B, T, D, H, W] float (0 in padded channels)
    mask: torch.Tensor  # [B, T] float, 1 = supervised channel
    modality: torch.Tensor  # [B] long, modality-loss target
    modality_input: torch.Tensor  # [B] long, modality row fed to the network


def collate(samples: Sequence[Sample], null_task: int) -> Batch:
    """Stack samples of one patch size; pad task lists with ``null_task`` (mask 0)."""
    if len({s.image.shape for s in samples}) != 1:
        raise ValueError("collate needs samples of one patch size")
    t = max(1, max(len(s.queries) for s in samples))
    b = len(samples)
    shape = samples[0].image.shape
    tasks = torch.full((b, t), null_task, dtype=torch.long)
    target = torch.zeros((b, t, *shape), dtype=torch.float32)
    mask = torch.zeros((b, t), dtype=torch.float32)
    for i, s in enumerate(samples):
        label = torch.from_numpy(np.ascontiguousarray(s.label))
        for j, (row, value) in enumerate(s.queries):
            tasks[i, j] = row
            target[i, j] = (label == value).float()
            mask[i, j] = 1.0
    image = torch.from_numpy(np.stack([s.image for s in samples]))[:, None].float()
    modality = torch.tensor([s.modality for s in samples], dtype=torch.long)
    modality_input = torch.tensor([s.modality if s.modality_input is None else s.modality_input
                                   for s in samples], dtype=torch.long)
    return Batch(image, tasks, target, mask, modality, modality_input)


def group_by_shape(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by patch shape, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.image.shape), []).append(s)
    return list(groups.values())
