"""The module's self-test (``UniversalSegTest``) without the test framework: the bundled model on the sample MRI.

    >>> here = Path(slicer.util.modulePath("UniversalSeg")).parent                       # doctest: +SKIP
    >>> volume = slicer.util.loadVolume(str(sample_file(here, SAMPLE)))                  # doctest: +SKIP
    >>> applied, scores = sample_scores(logic, volume, reference)  # reference: (k, j, i) labels  # doctest: +SKIP
    >>> dice_text({"mandible": 0.9, "brainstem": 0.75})
    'Dice: mandible 0.90, brainstem 0.75'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .logic import AppliedSegmentation, SlicerSegmentationLogic
from .nodes import dice, segment_arrays
from .request import SegmentationRequest

SAMPLE = "hippo_sample.nii.gz"
SAMPLE_LABEL = "hippo_sample_label.nii.gz"
#: The catalog dataset whose label values the sample's reference uses, and the sample's modality.
SAMPLE_DATASET = "mri_hippocampus_msd"
SAMPLE_MODALITY = "MR-T1"
#: Mean Dice the bundled model reached on the sample when it was exported (0.872 for 0.6.0), less a margin.
MIN_MEAN_DICE = 0.8


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
