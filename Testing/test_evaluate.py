"""``universalseg evaluate``: scoring per label over present labels only, failed cases, the CLI report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.inference import SegmentationResult
from UniversalSegLib.training.evaluate import evaluate_dataset, score_case


def test_score_case_dice_and_hd95():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:6, 2:6, 2:6] = True
    shifted = np.roll(truth, 2, axis=2)
    dice, hd95 = score_case(shifted, truth, spacing=(2.0, 1.0, 1.0))  # x spacing 2 mm: a 2-voxel shift is 4 mm
    assert dice == pytest.approx(0.5)
    assert hd95 == pytest.approx(4.0)
    assert score_case(truth, truth, None) == (1.0, 0.0)
    empty_dice, empty_hd = score_case(np.zeros_like(truth), truth, None)
    assert empty_dice == 0.0 and np.isnan(empty_hd)


def make_dataset(root: Path) -> Path:
    """Three hippocampus-like cases; case b has only label 1 annotated, case c's label file is missing."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    cases = []
    for cid, present in (("a", [1, 2]), ("b", [1]), ("c", [1, 2])):
        image = sitk.GetImageFromArray(rng.normal(100, 20, (12, 14, 10)).astype(np.float32))
        label = np.zeros((12, 14, 10), np.uint8)
        label[3:6, 4:8, 2:5] = 1
        label[7:9, 4:8, 2:5] = 2
        sitk.WriteImage(image, str(root / "images" / f"{cid}.nii.gz"))
        if cid != "c":
            out = sitk.GetImageFromArray(label)
            out.CopyInformation(image)
            sitk.WriteImage(out, str(root / "labels" / f"{cid}.nii.gz"))
        cases.append({"id": cid, "image": f"images/{cid}.nii.gz", "label": f"labels/{cid}.nii.gz",
                      "present_labels": present})
    meta = {"modality": "MRI T1", "labels": {"1": "Anterior hippocampus", "2": "Posterior hippocampus"},
            "cases": cases}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def oracle(truth_for: dict[str, np.ndarray], swap_label_2: bool):
    """A segmenter that returns the reference (label 2 turned into background in case a when asked)."""
    catalog = Catalog.load()

    def run(image_path, tasks, modality, **_):
        image = sitk.ReadImage(str(image_path))
        array = truth_for[Path(image_path).name].copy()
        if swap_label_2 and Path(image_path).name == "a.nii.gz":
            array[array == 2] = 0
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(image)
        return SegmentationResult(labels, [catalog.task(t) for t in tasks], catalog.modality(modality))

    return run


def test_scores_only_present_labels_and_reports_failed_cases(tmp_path):
    folder = make_dataset(tmp_path / "hippo")
    truth = {f"{c}.nii.gz": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels" / f"{c}.nii.gz")))
             for c in ("a", "b")}
    report = evaluate_dataset(folder, segment_fn=oracle(truth, swap_label_2=True))
    anterior, posterior = report["labels"]["Anterior hippocampus"], report["labels"]["Posterior hippocampus"]
    assert anterior == {"dice": 1.0, "hd95": 0.0, "n": 2}
    assert posterior["n"] == 1 and posterior["dice"] == 0.0  # case b's label 2 is unknown, so not scored
    assert report["mean_dice"] == pytest.approx(0.5)
    assert [f["case"] for f in report["failed"]] == ["c"] and "missing" in report["failed"][0]["error"]


def test_evaluate_cli_on_shared_cases(shared_data, coarse_checkpoint, tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "evaluate",
                          str(shared_data / "mri_hippocampus_msd"), "--limit", "2", "--model", str(coarse_checkpoint),
                          "--json", str(out), "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["labels"]) == {"Anterior hippocampus", "Posterior hippocampus"}
    assert all(v["n"] == 2 and 0.0 <= v["dice"] <= 1.0 for v in report["labels"].values())
    assert [c["case"] for c in report["cases"]] == ["hippo_001", "hippo_003"]  # the first two by id
    assert report["seconds_per_case"] > 0
    assert "| **mean** |" in run.stdout


def test_a_refinement_step_is_scored_beside_the_coarse_result(tmp_path):
    """``evaluate --refine``: each label scored before and after the step, marked refined where it changed."""
    from UniversalSegLib.training.evaluate import markdown_table

    folder = make_dataset(tmp_path / "hippo")
    truth = {f"{c}.nii.gz": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels" / f"{c}.nii.gz")))
             for c in ("a", "b")}

    def restore_label_2(image_path, result):  # a "refiner" that repairs case a's posterior hippocampus
        labels = sitk.GetImageFromArray(truth[Path(image_path).name])
        labels.CopyInformation(result.labels)
        return SegmentationResult(labels, result.tasks, result.modality)

    report = evaluate_dataset(folder, segment_fn=oracle(truth, swap_label_2=True), refine_fn=restore_label_2)
    anterior, posterior = report["labels"]["Anterior hippocampus"], report["labels"]["Posterior hippocampus"]
    assert anterior["coarse_dice"] == anterior["dice"] == 1.0 and not anterior["refined"]
    assert posterior["coarse_dice"] == 0.0 and posterior["dice"] == 1.0 and posterior["refined"]
    assert report["mean_dice"] == 1.0 and report["cases"][0]["Posterior hippocampus (coarse)"] == 0.0
    table = markdown_table(report)
    assert "| Posterior hippocampus | 0.000 | 1.000 | +1.000 | yes |" in table
    assert "| **mean** | **0.500** | **1.000** |" in table
