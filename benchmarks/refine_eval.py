"""Refinement on the validation split of the shared data: Dice per dataset and label, and speed.

Reproduce with (CPU, 2 threads, about 2-3 s per slice for the encoder here):

    .venv/bin/python benchmarks/refine_eval.py [--coarse-model PATH | --simulate-coarse] [--cases 6 2]
                                               [--weights finetuned original] [--modes slices propagate]

Rows, per dataset and label, as mean 3D Dice over the cases holding the label (OpenKBP's partial
labels: only annotated organs count):

* ``coarse``: the coarse masks alone - from a Hermes checkpoint (``--coarse-model``), or, while no
  trained one exists, ground truth perturbed the way a coarse model errs (``--simulate-coarse``: each
  structure grown or shrunk by a voxel, shifted by up to a voxel in plane, one end slice added or lost);
* ``coarse + refine (<mode>, <weights>)``: automatic prompts from those masks, through
  :func:`UniversalSegLib.refine.pipeline.refine_labelmap`;
* ``GT boxes (<weights>)``: every slice prompted with its ground-truth box (the upper bound).

It also times the encoder (torch and ONNX Runtime) and the decoder per slice. Cases are the
validation cases the fine-tune embedded (most annotated labels first), so its embedding cache
(``cache/refine_embeddings``) makes reruns cheap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.refine.litemedsam import EmbeddingCache, LiteMedSAM
from UniversalSegLib.refine.pipeline import refine_labelmap
from UniversalSegLib.refine.refiner import LiteMedSAMRefiner
from UniversalSegLib.refine.slices import SIZE
from UniversalSegLib.training.finetune import DATASETS, dice, embeddings_dir, split_cases

REPO = Path(__file__).resolve().parents[1]


def simulate_coarse(truth: np.ndarray, present: tuple[int, ...], seed: int) -> np.ndarray:
    """Ground truth degraded like a coarse model's output (see the module docstring); deterministic per seed."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(truth)
    ball = ndimage.generate_binary_structure(3, 1)
    for label in present:
        mask = truth == label
        if not mask.any():
            continue
        changed = (ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion)(mask, ball)
        mask = changed if changed.any() else mask
        mask = np.roll(mask, tuple(rng.integers(-1, 2, 2)), axis=(1, 2))
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(zs) > 2:
            end = zs[0] if rng.random() < 0.5 else zs[-1]
            if rng.random() < 0.5:
                mask[end] = False
            else:
                extra = end - 1 if end == zs[0] else end + 1
                if 0 <= extra < len(mask):
                    mask[extra] = mask[end]
        out[mask & (out == 0)] = label
    return out


def coarse_from_model(image: sitk.Image, model: str, dataset: str, catalog: Catalog) -> np.ndarray:
    """The Hermes model's label map, renumbered to the dataset's label values."""
    from UniversalSegLib.api import segment

    entry = catalog.datasets[dataset]
    result = segment(image, tasks=list(entry.labels.values()), modality=entry.modality, model=model)
    array = sitk.GetArrayFromImage(result.labels)
    out = np.zeros_like(array)
    for value, task_id in entry.labels.items():
        out[array == result.label_of(task_id)] = value
    return out


def per_label(pred: np.ndarray, truth: np.ndarray, present: tuple[int, ...]) -> dict[int, float]:
    return {v: dice(pred == v, truth == v) for v in present if (truth == v).any()}


def timing(slices: int = 4) -> dict:
    """Seconds per slice: encoder with torch and ONNX Runtime, decoder for one box (2 threads)."""
    torch.set_num_threads(2)
    x = torch.rand(1, 3, SIZE, SIZE)
    out = {}
    for encoder in ("torch", "onnx"):
        model = LiteMedSAM.load("original", encoder=encoder)
        with torch.inference_mode():
            model.embed(x)
            start = time.perf_counter()
            for _ in range(slices):
                embedding = model.embed(x)
            out[f"encoder_{encoder}_s"] = (time.perf_counter() - start) / slices
    box = torch.tensor([[40.0, 50.0, 120.0, 140.0]])
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(slices * 5):
            model.decode(embedding, box)
    out["decoder_s"] = (time.perf_counter() - start) / (slices * 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse-model", help="Hermes checkpoint giving the coarse masks")
    parser.add_argument("--simulate-coarse", action="store_true", help="perturbed ground truth as coarse masks")
    parser.add_argument("--cases", type=int, nargs=2, default=[6, 2], metavar=("HIPPO", "KBP"),
                        help="validation cases per dataset (default 6 2)")
    parser.add_argument("--weights", nargs="+", default=["finetuned", "original"])
    parser.add_argument("--modes", nargs="+", default=["slices", "propagate"])
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the Dice part (timing uses 2)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalog = Catalog.load()
    cache = EmbeddingCache(max_items=512, folder=embeddings_dir())
    refiners = {w: LiteMedSAMRefiner(w, cache=cache) for w in args.weights}
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(row: str, dataset: str, scores: dict[int, float]) -> None:
        for value, score in scores.items():
            task = catalog.datasets[dataset].labels[value]
            rows.setdefault(row, {}).setdefault(dataset, {}).setdefault(task, []).append(score)

    for dataset, count in zip(DATASETS, args.cases, strict=True):
        cases = sorted(split_cases(dataset, "val"), key=lambda c: (-len(c.present_labels), c.id))[:count]
        kind = catalog.modality(catalog.datasets[dataset].modality).kind
        tasks = dict(catalog.datasets[dataset].labels)
        for n, case in enumerate(cases):
            image = sitk.ReadImage(str(case.image))
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
            truth = np.where(np.isin(truth, case.present_labels), truth, 0).astype(np.uint8)
            truth_image = sitk.GetImageFromArray(truth)
            truth_image.CopyInformation(image)
            for weights, refiner in refiners.items():
                result = refine_labelmap(image, truth_image, tasks, refiner=refiner, kind=kind, margin=0.0)
                add(f"GT boxes ({weights})", dataset, per_label(sitk.GetArrayFromImage(result.labels), truth,
                                                                case.present_labels))
            if args.coarse_model or args.simulate_coarse:
                if args.coarse_model:
                    coarse = coarse_from_model(image, args.coarse_model, dataset, catalog)
                    coarse = np.where(np.isin(coarse, case.present_labels), coarse, 0).astype(np.uint8)
                else:
                    coarse = simulate_coarse(truth, case.present_labels, seed=n)
                add("coarse", dataset, per_label(coarse, truth, case.present_labels))
                coarse_image = sitk.GetImageFromArray(coarse)
                coarse_image.CopyInformation(image)
                for mode in args.modes:
                    for weights, refiner in refiners.items():
                        result = refine_labelmap(image, coarse_image, tasks, refiner=refiner, kind=kind, mode=mode)
                        add(f"coarse + refine ({mode}, {weights})", dataset,
                            per_label(sitk.GetArrayFromImage(result.labels), truth, case.present_labels))
            print(f"{dataset} {case.id} done ({cache.misses} slices encoded so far)", flush=True)

    summary = {row: {d: {"mean": float(np.mean([np.mean(v) for v in per.values()])),
                         "labels": {t: round(float(np.mean(v)), 3) for t, v in per.items()}}
                     for d, per in by_dataset.items()} for row, by_dataset in rows.items()}
    source = "Hermes model" if args.coarse_model else "simulated (perturbed ground truth)"
    print(f"\ncoarse masks: {source}; cases per dataset: {dict(zip(DATASETS, args.cases, strict=True))}\n")
    for dataset in DATASETS:
        labels = list(catalog.datasets[dataset].labels.values())
        print(f"| {dataset} | mean | " + " | ".join(labels) + " |")
        print("|---" * (len(labels) + 2) + "|")
        for row, by_dataset in summary.items():
            if dataset in by_dataset:
                cells = [f"{by_dataset[dataset]['labels'].get(t, float('nan')):.3f}" for t in labels]
                print(f"| {row} | {by_dataset[dataset]['mean']:.3f} | " + " | ".join(cells) + " |")
        print()
    if not args.no_timing:
        summary["seconds_per_slice"] = timing()
        print("seconds per slice (2 threads):", json.dumps({k: round(v, 3) for k, v in
                                                          summary["seconds_per_slice"].items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
