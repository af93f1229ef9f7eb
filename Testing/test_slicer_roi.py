"""Segment inside a markups ROI (``UniversalSegLib.slicer_logic.roi``) against a real MRML scene.

Axis-aligned and oblique volumes, aligned and rotated ROIs: the crop is the original's sub-array with the same
voxel-centre positions, the pasted labels land on the right voxels (0 outside the ROI), errors are clear, and
the bundled model inside an ROI of the hippocampus sample agrees with a full run there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

try:
    import slicer
    import slicer.util
    import vtk
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"the slicer-core wheel is not installed ({err})", allow_module_level=True)

from conftest import REPO

from UniversalSegLib.api import DEFAULT_MODEL
from UniversalSegLib.errors import InputError
from UniversalSegLib.slicer_logic import (
    SegmentationRequest,
    SlicerSegmentationLogic,
    ijk_to_ras,
    ijk_to_ras_from_image,
    image_from_volume_node,
    segment_arrays,
    volume_node_from_image,
)
from UniversalSegLib.slicer_logic.nodes import dice
from UniversalSegLib.slicer_logic.roi import MIN_ROI_VOXELS, crop, paste, paste_image, prepare_roi, roi_ijk_box

HIPPO = ["hippocampus_anterior", "hippocampus_posterior"]


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(4)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def make_volume(scene, oblique: bool):
    """A (k, j, i) = (30, 40, 50) random volume; oblique: rotated directions, anisotropic spacing."""
    array = np.random.default_rng(0).integers(-1000, 1000, (30, 40, 50)).astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique" if oblique else "aligned")
    slicer.util.updateVolumeFromArray(node, array)
    matrix = np.diag([1.0, 1.2, 2.0, 1.0])
    matrix[:3, 3] = [-20.0, 10.0, 5.0]
    if oblique:
        matrix = rotation("z", 25) @ rotation("x", -15) @ matrix
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return node, array


def voxel_ras(volume, ijk) -> np.ndarray:
    return (ijk_to_ras(volume) @ np.append(np.asarray(ijk, float), 1.0))[:3]


def make_roi(scene, volume, centre_ijk, size_mm, rotate: np.ndarray | None = None):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    roi.SetXYZ(*voxel_ras(volume, centre_ijk))
    roi.SetSize(*size_mm)
    if rotate is not None:
        object_to_node = slicer.util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix())
        object_to_node[:3, :3] = rotate[:3, :3]
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_node))
    return roi


CASES = {"aligned": (False, None), "oblique": (True, None), "oblique-rotated-roi": (True, rotation("y", 30))}


@pytest.mark.parametrize("case", list(CASES))
def test_crop_is_the_sub_array_with_the_same_geometry(scene, case):
    oblique, rotate = CASES[case]
    volume, array = make_volume(scene, oblique)
    roi = make_roi(scene, volume, (25, 20, 15), (30.0, 25.0, 40.0), rotate)
    box = prepare_roi(volume, roi)
    small = crop(image_from_volume_node(volume), box)
    assert small.GetSize() == box.size
    assert np.array_equal(sitk.GetArrayFromImage(small), array[box.slices()])
    crop_to_ras = ijk_to_ras_from_image(small)
    size = np.array(box.size)
    for ijk in [(0, 0, 0), tuple(size - 1), (3, size[1] // 2, 1)]:
        ours = (crop_to_ras @ np.append(np.asarray(ijk, float), 1.0))[:3]
        assert np.allclose(ours, voxel_ras(volume, np.add(ijk, box.lo)), atol=1e-4)
    # every corner of the ROI is within the box's voxels, and the box is no larger than needed
    bounds = [0.0] * 6
    roi.GetObjectBounds(bounds)
    to_ijk = np.linalg.inv(ijk_to_ras(volume)) @ slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix())
    corners = np.array([[x, y, z, 1.0] for x in bounds[:2] for y in bounds[2:4] for z in bounds[4:]])
    ijk = (to_ijk @ corners.T)[:3]
    dims = np.array([50, 40, 30])
    assert np.array_equal(box.lo, np.clip(np.round(ijk.min(axis=1)), 0, dims - 1))  # the voxels touched, clamped
    assert np.array_equal(np.array(box.hi) - 1, np.clip(np.round(ijk.max(axis=1)), 0, dims - 1))


def test_aligned_box_exact_and_clamped(scene):
    volume, _ = make_volume(scene, oblique=False)  # spacing (1, 1.2, 2) mm along i, j, k
    roi = make_roi(scene, volume, (10, 10, 10), (20.0, 24.0, 40.0))  # +-10 voxels on every axis
    assert roi_ijk_box(volume, roi) == ((0, 0, 0), (21, 21, 21))
    roi.SetXYZ(*voxel_ras(volume, (44, 34, 24)))  # partly outside: clamped to the image
    assert roi_ijk_box(volume, roi) == ((34, 24, 14), (50, 40, 30))


@pytest.mark.parametrize("case", list(CASES))
def test_paste_lands_on_the_roi_voxels(scene, case):
    oblique, rotate = CASES[case]
    volume, array = make_volume(scene, oblique)
    roi = make_roi(scene, volume, (25, 20, 15), (30.0, 25.0, 40.0), rotate)
    box = prepare_roi(volume, roi)
    small = crop(image_from_volume_node(volume), box)
    labels = sitk.Cast(small > -2000, sitk.sitkUInt8)  # 1 everywhere in the crop
    full = paste_image(labels, box)
    full_array = sitk.GetArrayFromImage(full)
    assert full_array.shape == array.shape
    assert np.allclose(ijk_to_ras_from_image(full), ijk_to_ras(volume), atol=1e-6)
    outside = np.ones(array.shape, bool)
    outside[box.slices()] = False
    assert not full_array[outside].any()
    # voxel by voxel in the box: 1 exactly where the voxel's centre is inside the ROI
    rng = np.random.default_rng(1)
    lo, hi = np.array(box.lo), np.array(box.hi)
    samples = rng.integers(np.maximum(lo - 2, 0), np.minimum(hi + 2, [50, 40, 30]), (400, 3))
    for i, j, k in samples:
        inside = roi.IsPointInROIWorld(list(voxel_ras(volume, (i, j, k))))
        assert full_array[k, j, i] == int(inside), (i, j, k)
    assert (full_array == 1).sum() == box.inside.sum() > 0
    if rotate is None and not oblique:
        assert box.inside.all()
    # paste keeps values and dtype
    values = np.arange(box.inside.size, dtype=np.float32).reshape(box.inside.shape)
    pasted = paste(values, box)
    assert pasted.dtype == np.float32 and np.array_equal(pasted[box.slices()][box.inside], values[box.inside])


def test_linear_parent_transforms_are_followed(scene):
    volume, _ = make_volume(scene, oblique=True)
    roi = make_roi(scene, volume, (25, 20, 15), (30.0, 25.0, 40.0), rotation("y", 30))
    expected = prepare_roi(volume, roi)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moving = rotation("x", 40)
    moving[:3, 3] = [200.0, -30.0, 12.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(moving))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    roi.SetAndObserveTransformNodeID(transform.GetID())  # both moved together: the same voxels
    moved = prepare_roi(volume, roi)
    assert (moved.lo, moved.hi) == (expected.lo, expected.hi)
    assert np.array_equal(moved.inside, expected.inside)
    roi.SetAndObserveTransformNodeID(None)  # only the volume moved (200 mm away): the ROI is off it
    with pytest.raises(InputError, match="does not overlap"):
        prepare_roi(volume, roi)


def test_errors(scene):
    volume, _ = make_volume(scene, oblique=True)
    roi = make_roi(scene, volume, (25, 20, 15), (30.0, 25.0, 40.0))
    roi.SetXYZ(*voxel_ras(volume, (200, 20, 15)))
    with pytest.raises(InputError, match="does not overlap the volume") as err:
        prepare_roi(volume, roi)
    assert "move it" in str(err.value)
    roi.SetXYZ(*voxel_ras(volume, (25, 20, 15)))
    roi.SetSize(6.0, 6.0, 6.0)
    with pytest.raises(InputError, match=f"at least {MIN_ROI_VOXELS} per axis"):
        prepare_roi(volume, roi)
    roi.SetSize(30.0, 25.0, 40.0)
    roi.SetInsideOut(True)
    with pytest.raises(InputError, match="inside-out"):
        prepare_roi(volume, roi)
    roi.SetInsideOut(False)
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    spline = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (100, 0, 0), (0, 100, 0), (0, 0, 100)]:
        source.InsertNextPoint(p)
        target.InsertNextPoint(p[0] + 1, p[1], p[2])
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    warp.SetAndObserveTransformToParent(spline)
    volume.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="non-linear") as err:
        prepare_roi(volume, roi)
    assert "Harden transform" in err.value.hint
    volume.SetAndObserveTransformNodeID(None)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "empty")
    with pytest.raises(InputError, match="not placed"):
        prepare_roi(volume, empty)


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the bundled model is not installed")
def test_segment_in_roi_matches_a_full_run_inside(scene):
    volume = volume_node_from_image(sitk.ReadImage(str(REPO / "samples" / "hippo_sample.nii.gz")), "hippo", scene)
    logic = SlicerSegmentationLogic(scene)
    full = logic.run(SegmentationRequest(volume, tasks=HIPPO, modality="MR-T1", device="cpu"))
    full_labels = segment_arrays(full.segmentation, HIPPO, volume)
    assert (full_labels > 0).sum() > 100
    # an ROI around the hippocampus found by the full run, with a margin of a few voxels
    found = np.argwhere(full_labels > 0)  # (k, j, i)
    lo_kji, hi_kji = np.maximum(found.min(axis=0) - 3, 0), found.max(axis=0) + 3
    centre = ((lo_kji + hi_kji) / 2)[::-1]
    spacing = np.linalg.norm(ijk_to_ras(volume)[:3, :3], axis=0)
    size = np.maximum((hi_kji - lo_kji)[::-1] + 1, MIN_ROI_VOXELS) * spacing
    size[0] = max(MIN_ROI_VOXELS, (hi_kji - lo_kji)[2] // 2 + 1) * spacing[0]  # cut the structure along i
    roi = make_roi(scene, volume, centre, size)
    box = prepare_roi(volume, roi)
    inside = np.zeros(full_labels.shape, bool)
    inside[box.slices()] = box.inside
    assert 0 < inside.sum() < inside.size
    cropped = logic.run(SegmentationRequest(volume, tasks=HIPPO, modality="MR-T1", device="cpu", roi=roi))
    ours = segment_arrays(cropped.segmentation, HIPPO, volume)
    assert not ours[~inside].any()  # nothing outside the ROI
    assert (ours > 0).sum() > 50
    for value in (1, 2):
        assert dice(ours[inside] == value, full_labels[inside] == value) > 0.75, value
    assert np.mean(ours[inside] == full_labels[inside]) > 0.95
