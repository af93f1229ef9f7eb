"""MRML nodes <-> arrays: volume node <-> SimpleITK image, segments -> label array, scene clean-up.

Slicer works in RAS with (k, j, i) arrays; SimpleITK in LPS with (z, y, x) arrays, the same memory order.
Only the first two axes flip (:data:`RAS_TO_LPS`), so a round trip keeps voxels and geometry exactly::

    >>> node = volume_node_from_image(sitk.ReadImage("ct.nii.gz"), "ct", scene)   # doctest: +SKIP
    >>> image = image_from_volume_node(node)      # a copy: the node is never modified  # doctest: +SKIP
    >>> labels = segment_arrays(segmentation_node, ["mandible"], node)  # (k, j, i), 1 = mandible  # doctest: +SKIP
    >>> dice(labels == 1, reference == 1)         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

#: Flips the first two axes: RAS (Slicer) <-> LPS (ITK). Its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: The segment representation UniversalSeg writes and restores.
BINARY_LABELMAP = "Binary labelmap"


# ----------------------------------------------------------------------------------------------- volumes
def ijk_to_ras(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as an array (the parent transform is not included)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_volume_node(node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image in LPS, with the same physical geometry.

    ``arrayFromVolume`` is indexed (k, j, i), which is SimpleITK's (z, y, x) order; spacing, direction and
    origin come from the IJK-to-RAS matrix with its first two rows negated (RAS -> LPS).
    """
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    lps = RAS_TO_LPS @ ijk_to_ras(node)
    extent = node.GetImageData().GetExtent()
    start = np.array([extent[0], extent[2], extent[4], 1.0])  # a volume whose extent does not start at 0
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (linear / spacing).ravel()])
    image.SetOrigin([float(v) for v in (lps @ start)[:3]])
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image (its LPS geometry with the first two rows negated).

    >>> image = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    >>> image.SetOrigin((1.0, 2.0, 3.0))
    >>> ijk_to_ras_from_image(image)[:3, 3].tolist()
    [-1.0, -2.0, 3.0]
    """
    lps = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps[:3, :3] = direction * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return RAS_TO_LPS @ lps


def volume_node_from_image(image: sitk.Image, name: str = "volume", scene=None, labelmap: bool = False):
    """A new scalar (or label-map) volume node holding ``image`` with its geometry (for tests and scripts)."""
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_image(image)))
    return node


def oriented_image(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A ``vtkOrientedImageData`` (unsigned char) holding a (k, j, i) array on the given grid."""
    image = slicer.vtkOrientedImageData()
    k, j, i = array.shape
    image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.astype(np.uint8, copy=False).ravel()
    return image


# ---------------------------------------------------------------------------------------------- segments
def segment_arrays(segmentation_node, segment_ids: Sequence[str], reference_volume) -> np.ndarray:
    """The segments as one (k, j, i) label array on ``reference_volume``'s grid (value i+1 = segment_ids[i]).

    Does not add nodes to the scene (unlike exporting to a label-map node).
    """
    ids = vtk.vtkStringArray()
    values = vtk.vtkIntArray()
    for value, segment_id in enumerate(segment_ids, start=1):
        ids.InsertNextValue(segment_id)
        values.InsertNextValue(value)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node, reference_volume, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, merged, values)
    k, j, i = slicer.util.arrayFromVolume(reference_volume).shape[:3]
    return numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(k, j, i).copy()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 when both are empty).

    >>> dice(np.array([1, 1, 0]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def segment_tag(segment, name: str) -> str | None:
    """The value of a ``vtkSegment`` tag, ``None`` when the segment does not have it."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def source_representation(segmentation) -> str:
    """The name of a ``vtkSegmentation``'s source (formerly master) representation, ``""`` if none."""
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter() or ""


def ensure_converter_rules() -> None:
    """Register the segmentation converter rules when nothing did (the slicer-core wheel; Slicer does it)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


# ----------------------------------------------------------------------------------------------- removal
def remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes (``RemoveNode`` alone leaves them behind)."""
    extra = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)
