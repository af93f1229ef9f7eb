"""``universalseg evaluate``: the ``segment`` path run over a dataset, scored per label.

Dice and HD95 (MONAI metrics) are computed per case for every label in the case's
``present_labels`` (a label missing there is unknown, so it is not scored), then averaged per label;
the dataset mean is the mean over labels. Distances are in mm, or in voxels for a dataset marked
``spacing_unknown``. A case that cannot be read is reported as failed and the run goes on.

>>> report = evaluate_dataset("../shared/data/mri_hippocampus_msd", limit=5)  # doctest: +SKIP
>>> print(markdown_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Catalog, Task
from ..errors import CatalogError, InputError, UniversalSegError
from ..inference import InferenceOptions
from ..paths import splits_root
from .data import Case, DatasetInfo, load_or_make_split, read_dataset


def dataset_tasks(info: DatasetInfo, catalog: Catalog) -> tuple[dict[int, Task], str]:
    """Label value -> catalog task, and the modality id, for a dataset folder.

    Known shared datasets come from the catalog's ``datasets`` section; any other dataset's label
    names and modality are looked up by name or alias.
    """
    entry = catalog.datasets.get(info.name)
    if entry is not None:
        return {value: catalog.task(task_id) for value, task_id in entry.labels.items()}, entry.modality
    try:
        tasks = {value: catalog.task(name) for value, name in info.labels.items()}
        guessed = catalog.guess_modality(description=info.modality)
        modality = guessed.id if guessed is not None else catalog.modality(info.modality).id
    except CatalogError as err:
        raise CatalogError(f"dataset '{info.name}': {err.problem}",
                           "name its labels and modality as the catalog does (universalseg tasks)") from None
    return tasks, modality


def select_cases(info: DatasetInfo, split: str = "all", limit: int | None = None,
                 splits_dir: str | Path | None = None) -> list[Case]:
    """The cases to score: a split's (from ``splits_dir``, default :func:`~UniversalSegLib.paths.splits_root`),
    sorted by id, the first ``limit``."""
    cases = sorted(info.cases, key=lambda c: c.id)
    if split != "all":
        train, val = load_or_make_split(info, splits_root(splits_dir), write=False)
        keep = set(val if split == "val" else train)
        cases = [c for c in cases if c.id in keep]
    return cases[:limit] if limit else cases


def score_case(predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None) -> tuple[float, float]:
    """Dice and HD95 of two boolean (z, y, x) masks; HD95 is NaN when either mask is empty."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    if not truth.any() and not predicted.any():
        return 1.0, 0.0
    p = torch.from_numpy(predicted[None, None].astype(np.float32))
    t = torch.from_numpy(truth[None, None].astype(np.float32))
    dice = float(compute_dice(p, t, include_background=True).item())
    if not truth.any() or not predicted.any():
        return dice, float("nan")
    zyx = None if spacing is None else list(spacing)[::-1]
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=zyx).item())
    return dice, hd95


def evaluate_dataset(
    folder: str | Path,
    *,
    model: str | Path | None = None,
    limit: int | None = None,
    split: str = "all",
    device: str = "cpu",
    segment_fn: Callable | None = None,
    refine_fn: Callable | None = None,
    options: InferenceOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    splits_dir: str | Path | None = None,
) -> dict:
    """Segment each selected case with the ``segment`` API and score it against its label map.

    ``segment_fn`` defaults to :func:`UniversalSegLib.api.segment`. ``refine_fn`` (image path, result) -> result,
    the refinement step (``evaluate --refine``), is applied after it; each label is then scored before and
    after it (``coarse_dice`` / ``coarse_hd95`` beside ``dice`` / ``hd95``) and marked ``refined`` when the
    step changed its voxels or was asked to refine it (the task's ``refine`` flag in the refined result).
    ``options`` are its inference options (default: the defaults of ``segment``). ``split`` ``train`` or
    ``val`` reads ``<splits_dir>/<dataset>.json`` (default folder: :func:`~UniversalSegLib.paths.splits_root`).
    """
    from ..api import segment

    segment_fn = segment_fn or segment
    catalog = Catalog.load()
    info = read_dataset(folder)
    tasks, modality = dataset_tasks(info, catalog)
    cases = select_cases(info, split, limit, splits_dir)
    if not cases:
        raise InputError(f"dataset '{info.name}' has no case to evaluate (split {split}, limit {limit})",
                         "check the folder, --split and --limit")
    ordered = sorted(tasks)
    per_label: dict[str, dict[str, list[float]]] = {
        tasks[v].name: {"dice": [], "hd95": [], "coarse_dice": [], "coarse_hd95": []} for v in ordered}
    refined_labels: set[str] = set()
    failed = [{"case": cid, "error": problem} for cid, problem in info.skipped]
    rows, seconds = [], []
    for index, case in enumerate(cases):
        if progress:
            progress(index, len(cases), case.id)
        try:
            start = time.perf_counter()
            result = segment_fn(case.image, tasks=[tasks[v].id for v in ordered], modality=modality, model=model,
                                device=device, catalog=catalog, options=options)
            coarse = sitk.GetArrayFromImage(result.labels)
            if refine_fn is not None:
                result = refine_fn(case.image, result)
            seconds.append(time.perf_counter() - start)
            truth_image = sitk.ReadImage(str(case.label))
            if truth_image.GetSize() != result.labels.GetSize():
                raise InputError(f"case {case.id}: label map size {truth_image.GetSize()} differs from its image "
                                 f"{result.labels.GetSize()}", "fix the dataset")
        except (UniversalSegError, RuntimeError) as err:
            failed.append({"case": case.id, "error": str(err)})
            continue
        truth = sitk.GetArrayFromImage(truth_image)
        predicted = sitk.GetArrayFromImage(result.labels)
        spacing = None if info.spacing_unknown else truth_image.GetSpacing()
        row = {"case": case.id, "seconds": round(seconds[-1], 2)}
        for position, value in enumerate(ordered, start=1):
            if value not in case.present_labels:
                continue
            dice, hd95 = score_case(predicted == position, truth == value, spacing)
            name = tasks[value].name
            per_label[name]["dice"].append(dice)
            per_label[name]["hd95"].append(hd95)
            row[name] = round(dice, 4)
            if refine_fn is not None:
                coarse_dice, coarse_hd95 = score_case(coarse == position, truth == value, spacing)
                per_label[name]["coarse_dice"].append(coarse_dice)
                per_label[name]["coarse_hd95"].append(coarse_hd95)
                row[f"{name} (coarse)"] = round(coarse_dice, 4)
                if result.tasks[position - 1].refine or ((coarse == position) != (predicted == position)).any():
                    refined_labels.add(name)
        rows.append(row)
    labels = {
        name: {"dice": _mean(v["dice"]), "hd95": _mean(v["hd95"]), "n": len(v["dice"])}
        for name, v in per_label.items()
    }
    if refine_fn is not None:
        for name, v in per_label.items():
            labels[name].update(coarse_dice=_mean(v["coarse_dice"]), coarse_hd95=_mean(v["coarse_hd95"]),
                                refined=name in refined_labels)
    scored = [v["dice"] for v in labels.values() if v["n"]]
    return {
        "dataset": info.name, "split": split, "limit": limit, "model": str(model or "bundled"), "modality": modality,
        "keep_largest": "catalog" if options is None or options.keep_largest is None else options.keep_largest,
        "mirror": options is None or options.mirror,
        "labels": labels, "mean_dice": float(np.mean(scored)) if scored else float("nan"),
        "seconds_per_case": float(np.mean(seconds)) if seconds else float("nan"),
        "distance_unit": "voxel" if info.spacing_unknown else "mm",
        "cases": rows, "failed": failed,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def markdown_table(report: dict) -> str:
    """The per-label table with the dataset mean, as printed by the CLI."""
    unit = report["distance_unit"]
    if any("coarse_dice" in v for v in report["labels"].values()):  # evaluate --refine: coarse beside refined
        lines = [f"| {report['dataset']} ({report['split']}) | coarse Dice | refined Dice | change | refined | "
                 f"coarse HD95 ({unit}) | refined HD95 | n |", "|---|---|---|---|---|---|---|---|"]
        for name, v in report["labels"].items():
            lines.append(f"| {name} | {v['coarse_dice']:.3f} | {v['dice']:.3f} | {v['dice'] - v['coarse_dice']:+.3f} | "
                         f"{'yes' if v['refined'] else 'no'} | {v['coarse_hd95']:.2f} | {v['hd95']:.2f} | {v['n']} |")
        scored = [v["coarse_dice"] for v in report["labels"].values() if v["n"]]
        coarse_mean = float(np.mean(scored)) if scored else float("nan")
        lines.append(f"| **mean** | **{coarse_mean:.3f}** | **{report['mean_dice']:.3f}** | | | | | |")
    else:
        lines = [f"| {report['dataset']} ({report['split']}) | Dice | HD95 ({unit}) | n |", "|---|---|---|---|"]
        for name, v in report["labels"].items():
            lines.append(f"| {name} | {v['dice']:.3f} | {v['hd95']:.2f} | {v['n']} |")
        lines.append(f"| **mean** | **{report['mean_dice']:.3f}** | | |")
    lines.append(f"\nseconds per case: {report['seconds_per_case']:.1f}; failed cases: {len(report['failed'])}")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path, overwrite: bool = True, inputs: tuple = ()) -> None:
    """Write the JSON report atomically; never onto one of ``inputs``, nor an existing file unless ``overwrite``."""
    from ..safe_write import atomic_output

    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=True))
