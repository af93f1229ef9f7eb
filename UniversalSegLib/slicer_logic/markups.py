"""Markups <-> refinement prompts: ROI boxes <-> voxel boxes of the volume, point lists -> clicks.

An ROI is placed in the volume's own axes (rotated with an oblique volume), so a box goes to an ROI and
back to the same voxel indices. Each ROI refinement leaves is tagged with the segment it belongs to;
the user may move or resize it, and the next Refine of that segment starts from it::

    >>> roi = roi_from_box(scene, Box3D((10, 12, 4), (30, 40, 9)), volume, "Mandible box 1")  # doctest: +SKIP
    >>> box_from_roi(roi, volume)                                                         # doctest: +SKIP
    Box3D(lo=(10, 12, 4), hi=(30, 40, 9))
    >>> tag_roi(roi, segmentation_node, "mandible")                                       # doctest: +SKIP
    >>> segment_rois(scene, segmentation_node, "mandible")  # [roi]                        # doctest: +SKIP
"""

from __future__ import annotations

import itertools

import numpy as np
import slicer

from ..errors import InputError
from ..refine.prompts import Box3D, Point
from .nodes import ijk_to_ras

#: Node attribute naming the segment an ROI prompts: "<segmentation node id>/<segment id>".
ROI_SEGMENT_ATTRIBUTE = "UniversalSeg.RefineSegment"


def _volume_axes(volume) -> tuple[np.ndarray, np.ndarray]:
    """(IJK-to-RAS 4x4, unit axes as columns 3x3) of a volume node."""
    matrix = ijk_to_ras(volume)
    linear = matrix[:3, :3]
    return matrix, linear / np.linalg.norm(linear, axis=0)


def roi_from_box(scene, box: Box3D, volume, name: str, color: tuple[float, float, float] | None = None):
    """A new ROI node covering ``box`` (voxel indices of ``volume``, corners inclusive), aligned with its axes."""
    matrix, axes = _volume_axes(volume)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    centre_ijk = (np.array(box.lo) + np.array(box.hi)) / 2.0
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = (matrix @ np.append(centre_ijk, 1.0))[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(name))
    roi.GetObjectToNodeMatrix().DeepCopy(slicer.util.vtkMatrixFromArray(object_to_node))
    roi.SetSize(*((np.array(box.hi) - np.array(box.lo) + 1) * spacing))
    if color is not None:
        roi.CreateDefaultDisplayNodes()
        roi.GetDisplayNode().SetSelectedColor(*color)
    return roi


def box_from_roi(roi, volume) -> Box3D:
    """The voxels of ``volume`` an ROI covers, as a :class:`Box3D` clipped to the volume.

    Raises :class:`InputError` when the ROI does not overlap the volume.
    """
    matrix, _ = _volume_axes(volume)
    object_to_world = slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix())
    half = np.array(roi.GetSize()) / 2.0
    corners = np.array([object_to_world @ np.array([*signs * half, 1.0])
                        for signs in (np.array(s) for s in itertools.product((-1, 1), repeat=3))])
    ijk = (np.linalg.inv(matrix) @ corners.T).T[:, :3]
    size = np.array(slicer.util.arrayFromVolume(volume).shape[::-1])
    lo = np.ceil(ijk.min(axis=0) - 1e-6).astype(int)  # the voxels whose centres the ROI holds
    hi = np.floor(ijk.max(axis=0) + 1e-6).astype(int)
    if np.any(hi < 0) or np.any(lo >= size) or np.any(hi < lo):
        raise InputError(f"box '{roi.GetName()}' lies outside the volume '{volume.GetName()}'",
                         "move the box over the structure (or delete it to refine from the segment itself)")
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    return Box3D(tuple(int(v) for v in lo), tuple(int(v) for v in hi))


def tag_roi(roi, segmentation, segment_id: str) -> None:
    """Mark ``roi`` as the box of a segment (what :func:`segment_rois` finds)."""
    roi.SetAttribute(ROI_SEGMENT_ATTRIBUTE, f"{segmentation.GetID()}/{segment_id}")


def segment_rois(scene, segmentation, segment_id: str) -> list:
    """The ROI nodes tagged for one segment, in scene order."""
    wanted = f"{segmentation.GetID()}/{segment_id}"
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    found = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    return [roi for roi in found if roi.GetAttribute(ROI_SEGMENT_ATTRIBUTE) == wanted]


def points_from_node(points, volume, positive: bool) -> list[Point]:
    """The control points of a point list as clicks in voxel indices of ``volume`` (outside points: an error)."""
    if points is None:
        return []
    matrix, _ = _volume_axes(volume)
    inverse = np.linalg.inv(matrix)
    size = np.array(slicer.util.arrayFromVolume(volume).shape[::-1])
    clicks = []
    for n in range(points.GetNumberOfControlPoints()):
        world = np.array(points.GetNthControlPointPositionWorld(n))
        ijk = np.round((inverse @ np.append(world, 1.0))[:3]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= size):
            raise InputError(f"point '{points.GetNthControlPointLabel(n)}' of '{points.GetName()}' lies outside "
                             f"the volume '{volume.GetName()}'", "move or delete the point")
        clicks.append(Point(tuple(int(v) for v in ijk), positive))
    return clicks
