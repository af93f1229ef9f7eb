"""The module's self-test (``UniversalSegTest``) without the test framework: the bundled model on the sample MRI.

:func:`run_self_test` is the whole test: on a computer without torch or MONAI (Slicer's extension build
machines run the registered ctest there) it reports ``"skipped: dependencies not installed (...)"`` and
passes; otherwise it segments the bundled sample with the bundled model in the given scene and checks the
mean Dice against the stored reference, with the floor from the model manifest (:func:`dice_floor`)::

    >>> here = Path(slicer.util.modulePath("UniversalSeg")).parent                       # doctest: +SKIP
    >>> run_self_test(here, slicer.mrmlScene, print)                                     # doctest: +SKIP
    'passed: Dice: anterior hippocampus 0.88, posterior hippocampus 0.86 (mean 0.872 >= 0.796, ...)'
    >>> volume = slicer.util.loadVolume(str(sample_file(here, SAMPLE)))                  # doctest: +SKIP
    >>> applied, scores = sample_scores(logic, volume, reference)  # reference: (k, j, i) labels  # doctest: +SKIP
    >>> dice_text({"mandible": 0.9, "brainstem": 0.75})
    'Dice: mandible 0.90, brainstem 0.75'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Catalog
from ..model_tasks import DEFAULT_MANIFEST, model_tasks
from .dependencies import DEPENDENCIES, Dependency, dependency_error, missing_dependencies
from .logic import AppliedSegmentation, SlicerSegmentationLogic
from .nodes import dice, segment_arrays
from .request import SegmentationRequest

SAMPLE = "hippo_sample.nii.gz"
SAMPLE_LABEL = "hippo_sample_label.nii.gz"
#: The catalog dataset whose label values the sample's reference uses, and the sample's modality.
SAMPLE_DATASET = "mri_hippocampus_msd"
SAMPLE_MODALITY = "MR-T1"
#: Mean Dice the bundled model reached on the sample when it was exported (0.872 for 0.6.0), less a margin:
#: the floor when the model manifest has no validation Dice for the sample's structures.
MIN_MEAN_DICE = 0.8
#: The floor from the manifest is the sample structures' mean validation Dice less this (one case varies).
DICE_MARGIN = 0.08
#: The bundled model the self-test runs (``MODEL.pt`` beside its manifest).
BUNDLED_MODEL = DEFAULT_MANIFEST.with_suffix(".pt")
#: How a skipped self-test's line starts.
SKIPPED = "skipped: dependencies not installed"


class SelfTestFailure(AssertionError):
    """The self-test ran and its result is wrong (Dice under the floor, the input changed, segments missing)."""


def sample_file(module_dir: Path, name: str) -> Path:
    """A file of the sample case: installed in Resources/Samples/UniversalSeg, else the source tree's samples/."""
    return next(p for p in (module_dir / "Resources" / "Samples" / "UniversalSeg" / name,
                            module_dir.parent / "samples" / name) if p.is_file())


def sample_scores(logic: SlicerSegmentationLogic, volume, reference: np.ndarray) -> \
        tuple[AppliedSegmentation, dict[str, float]]:
    """Segment the sample's structures (bundled model) and score each against ``reference`` (task -> Dice)."""
    labels = logic.catalog.datasets[SAMPLE_DATASET].labels
    applied = logic.run(SegmentationRequest(volume, tasks=list(labels.values()), modality=SAMPLE_MODALITY))
    result = segment_arrays(applied.segmentation, applied.segment_ids, volume)
    return applied, {task: dice(result == value, reference == value) for value, task in labels.items()}


def dice_text(scores: dict[str, float]) -> str:
    """The line the self-test shows."""
    return "Dice: " + ", ".join(f"{task} {score:.2f}" for task, score in scores.items())


def dice_floor(manifest: str | Path | dict | None = None, catalog: Catalog | None = None) -> tuple[float, str]:
    """The mean Dice the sample must reach, and where that figure comes from.

    The manifest's validation Dice of the sample's structures (:func:`~UniversalSegLib.model_tasks.model_tasks`,
    which reads the model's per-task validation figures), averaged, less :data:`DICE_MARGIN`; when the manifest
    has no figure for one of them, :data:`MIN_MEAN_DICE`.

    >>> floor, source = dice_floor({"task_ids": ["hippocampus_anterior"]})
    >>> floor, source
    (0.8, 'MIN_MEAN_DICE (no validation Dice in the model manifest)')
    """
    catalog = catalog or Catalog.load()
    wanted = list(catalog.datasets[SAMPLE_DATASET].labels.values())
    try:
        figures = {t.id: t.dice for t in model_tasks(manifest, catalog) if t.in_model}
    except Exception:  # noqa: BLE001 - no or unreadable manifest: the fixed floor
        figures = {}
    known = [figures.get(task) for task in wanted]
    if not known or any(value is None for value in known):
        return MIN_MEAN_DICE, "MIN_MEAN_DICE (no validation Dice in the model manifest)"
    mean = float(np.mean([float(v) for v in known if v is not None]))
    return round(mean - DICE_MARGIN, 3), f"model manifest: validation Dice {mean:.3f} less {DICE_MARGIN}"


def load_sample(scene, path: Path, name: str):
    """Read a volume file into ``scene`` with Slicer's own reader (a storage node: no Slicer application needed)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if storage.ReadData(node) != 1:
        raise SelfTestFailure(f"Slicer could not read the sample {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def run_self_test(module_dir: Path, scene, log: Callable[[str], None], *,
                  dependencies: Sequence[Dependency] = DEPENDENCIES, logic: SlicerSegmentationLogic | None = None,
                  skip_missing: bool = True) -> str:
    """The self-test: the summary line (also given to ``log``); raises :class:`SelfTestFailure` when it fails.

    ``module_dir``: the folder of ``UniversalSeg.py`` (the sample is found from it, installed or in the source
    tree). When a package of ``dependencies`` is missing, or the bundled model is not installed, nothing runs
    and the line starts with ``"skipped: "`` (``skip_missing=False``: raise the missing-package error instead).
    ``logic``: the module's logic (default a :class:`SlicerSegmentationLogic` on ``scene``).
    """
    missing = missing_dependencies(dependencies)
    if missing:
        if not skip_missing:
            raise dependency_error(missing)
        line = f"{SKIPPED} ({', '.join(d.requirement for d in missing)}): the bundled model was not run"
        log(line)
        return line
    if not BUNDLED_MODEL.is_file():
        line = f"skipped: the bundled model is not installed ({BUNDLED_MODEL})"
        log(line)
        return line
    volume = load_sample(scene, sample_file(module_dir, SAMPLE), "UniversalSeg self-test sample")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_file(module_dir, SAMPLE_LABEL))))
    logic = logic if logic is not None else SlicerSegmentationLogic(scene)
    import slicer.util

    before = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    log(f"Segmenting the sample ({SAMPLE}) with the bundled model")
    start = time.perf_counter()
    applied, scores = sample_scores(logic, volume, reference)
    seconds = time.perf_counter() - start
    mean = float(np.mean(list(scores.values())))
    floor, source = dice_floor(None, logic.catalog)
    log(dice_text(scores))
    problems = []
    if mean < floor:
        problems.append(f"mean Dice {mean:.3f} is under the floor {floor:.3f} ({source})")
    if not np.array_equal(slicer.util.arrayFromVolume(volume), before):
        problems.append("the input volume was modified")
    if len(applied.segment_ids) != len(scores):
        problems.append(f"{len(applied.segment_ids)} segments written for {len(scores)} structures")
    if problems:
        line = f"failed: {dice_text(scores)}: " + "; ".join(problems)
        log(line)
        raise SelfTestFailure(line)
    line = f"passed: {dice_text(scores)} (mean {mean:.3f} >= {floor:.3f}, {source}) in {seconds:.1f} s"
    log(line)
    return line
