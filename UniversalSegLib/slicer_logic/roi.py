"""Segment inside a markups ROI: crop the input to the ROI on the volume's own voxel grid, paste the result back.

The crop is a sub-array of the volume (no resampling): its origin moves to the first voxel kept, spacing and
directions are unchanged, so oblique volumes and rotated ROIs keep their geometry exactly. Voxels of the
crop whose centres lie outside a rotated ROI are zeroed when the labels are pasted back onto the full grid::

    >>> box = prepare_roi(volume_node, roi_node)            # RoiBox, or InputError  # doctest: +SKIP
    >>> small = crop(image_from_volume_node(volume_node), box)  # what the engine segments  # doctest: +SKIP
    >>> full = paste_image(result.labels, box)              # on the volume's grid, 0 outside the ROI  # doctest: +SKIP

Geometry only: a linear parent transform on the volume or the ROI is taken into account; a non-linear one is
refused (harden it first). The scene is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import vtk

from ..errors import InputError

#: The smallest ROI, in voxels per axis of the volume (or the volume's own size where it is smaller): the
#: network halves its feature maps four times (windows are multiples of 16), so less than 16 voxels leaves
#: its coarsest level one voxel of context.
MIN_ROI_VOXELS = 16
_EPS = 1e-6


@dataclass
class RoiBox:
    """The voxels of a volume an ROI covers, and what is needed to paste a crop's result back.

    ``lo``/``hi`` are (i, j, k) array indices (``hi`` exclusive) of the volume's voxel array; ``shape`` is the
    volume's (k, j, i) array shape; ``inside`` the (k, j, i) mask of the crop's voxels whose centres are in the
    ROI (all true for an ROI aligned with the voxel grid); the ``full_*`` fields are the full image's geometry.
    """

    roi_name: str
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    shape: tuple[int, int, int]
    inside: np.ndarray
    full_origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    full_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    full_direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def size(self) -> tuple[int, int, int]:
        """The crop's size in voxels, (i, j, k)."""
        return tuple(int(h - lo) for lo, h in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    def slices(self) -> tuple[slice, slice, slice]:
        """The crop as (k, j, i) slices of the volume's array: ``array[box.slices()]``."""
        return tuple(slice(lo, h) for lo, h in zip(self.lo[::-1], self.hi[::-1], strict=True))  # type: ignore


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def roi_to_volume_ijk(volume_node, roi_node) -> np.ndarray:
    """The 4x4 matrix from the ROI's object coordinates (centre at 0) to the volume's array indices (i, j, k).

    Goes ROI object -> ROI node (``GetObjectToNodeMatrix``) -> the volume's node coordinates through both parent
    transforms (``vtkMRMLTransformNode.GetMatrixTransformBetweenNodes``) -> IJK (``GetRASToIJKMatrix``) -> array
    indices (minus the image extent's start). Raises :class:`InputError` for a non-linear transform.
    """
    import slicer

    between = vtk.vtkMatrix4x4()
    linear = slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        roi_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), between)
    if not linear:
        raise InputError(f"the ROI '{roi_node.GetName()}' or the volume '{volume_node.GetName()}' is under a "
                         "non-linear (warping) transform",
                         "harden the transform first (Data module: right-click the node > Harden transform), "
                         "or remove it")
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    extent = volume_node.GetImageData().GetExtent()
    to_array = np.eye(4)
    to_array[:3, 3] = [-extent[0], -extent[2], -extent[4]]
    return to_array @ _matrix(ras_to_ijk) @ _matrix(between) @ _matrix(roi_node.GetObjectToNodeMatrix())


def _check_roi(roi_node) -> None:
    if not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise InputError(f"'{roi_node.GetName()}' is not a markups ROI", "choose an ROI (a box) under 'ROI'")
    if roi_node.GetNumberOfControlPoints() < 1:
        raise InputError(f"the ROI '{roi_node.GetName()}' is not placed",
                         "place it in a view (Markups toolbar > ROI), or clear 'ROI' to segment the whole volume")
    if roi_node.GetInsideOut():
        raise InputError(f"the ROI '{roi_node.GetName()}' is inside-out (it selects everything but the box)",
                         "turn off 'Inside out' in the Markups module, or clear 'ROI'")


def roi_ijk_box(volume_node, roi_node, min_voxels: int = MIN_ROI_VOXELS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(lo, hi)``: the (i, j, k) array-index bounding box (``hi`` exclusive) of the ROI's 8 corners, clamped.

    Every voxel the ROI's box touches is kept. Raises :class:`InputError` when the ROI does not overlap the
    volume or covers fewer than ``min_voxels`` voxels (or the whole axis where the volume is thinner) on an axis.
    """
    _check_roi(roi_node)
    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (roi_to_volume_ijk(volume_node, roi_node) @ corners.T)[:3]
    dims = np.array(volume_node.GetImageData().GetDimensions())
    lo = np.floor(ijk.min(axis=1) + 0.5 + _EPS).astype(int)   # voxel c spans [c - 0.5, c + 0.5]
    hi = np.ceil(ijk.max(axis=1) - 0.5 - _EPS).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, dims)
    name = roi_node.GetName()
    if np.any(hi <= lo):
        raise InputError(f"the ROI '{name}' does not overlap the volume '{volume_node.GetName()}'",
                         "move it onto the volume (drag its centre in a slice view), or clear 'ROI' to segment "
                         "the whole volume")
    need = np.minimum(min_voxels, dims)
    if np.any(hi - lo < need):
        got = " x ".join(str(int(n)) for n in hi - lo)
        raise InputError(f"the ROI '{name}' covers only {got} voxels of the volume; at least {min_voxels} per "
                         "axis are needed",
                         "enlarge the ROI (drag its handles), or clear 'ROI' to segment the whole volume")
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def inside_mask(volume_node, roi_node, lo, hi) -> np.ndarray:
    """The (k, j, i) mask of the box ``lo:hi``'s voxels whose centres are inside the (possibly rotated) ROI."""
    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    to_object = np.linalg.inv(roi_to_volume_ijk(volume_node, roi_node))
    k, j, i = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True)), indexing="ij")
    points = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    xyz = (to_object @ points)[:3]
    low, high = np.array(bounds[0::2])[:, None], np.array(bounds[1::2])[:, None]
    tolerance = 1e-6 * max(1.0, float(np.abs(bounds).max()))
    inside = np.all((xyz >= low - tolerance) & (xyz <= high + tolerance), axis=0)
    return inside.reshape(i.shape)


def prepare_roi(volume_node, roi_node, min_voxels: int = MIN_ROI_VOXELS) -> RoiBox:
    """Read the ROI against the volume (main thread): its box, inside mask and the volume's full geometry."""
    from .nodes import RAS_TO_LPS, ijk_to_ras

    lo, hi = roi_ijk_box(volume_node, roi_node, min_voxels)
    extent = volume_node.GetImageData().GetExtent()
    lps = RAS_TO_LPS @ ijk_to_ras(volume_node)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    origin = lps @ np.array([extent[0], extent[2], extent[4], 1.0])
    dims = volume_node.GetImageData().GetDimensions()
    return RoiBox(roi_name=roi_node.GetName(), lo=lo, hi=hi, shape=(dims[2], dims[1], dims[0]),  # type: ignore[arg-type]
                  inside=inside_mask(volume_node, roi_node, lo, hi),
                  full_origin=tuple(float(v) for v in origin[:3]),  # type: ignore[arg-type]
                  full_spacing=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                  full_direction=tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))


def crop(image: sitk.Image, box: RoiBox) -> sitk.Image:
    """The sub-image ``box.lo:box.hi`` of ``image`` (the volume as a SimpleITK image): same spacing and
    directions, origin at the first voxel kept.

    >>> image = sitk.Image(20, 20, 20, sitk.sitkInt16)
    >>> small = crop(image, RoiBox("r", (2, 3, 4), (18, 19, 20), (20, 20, 20), np.ones((16, 16, 16), bool)))
    >>> small.GetSize(), small.GetOrigin()
    ((16, 16, 16), (2.0, 3.0, 4.0))
    """
    (i0, j0, k0), (i1, j1, k1) = box.lo, box.hi
    return image[i0:i1, j0:j1, k0:k1]


def paste(array: np.ndarray, box: RoiBox) -> np.ndarray:
    """A (k, j, i) array of the crop pasted onto the full grid: zeros outside the box and outside the ROI.

    >>> box = RoiBox("r", (1, 0, 0), (3, 1, 1), (1, 1, 4), np.array([[[True, False]]]))
    >>> paste(np.array([[[5, 6]]]), box).tolist()
    [[[0, 5, 0, 0]]]
    """
    array = np.asarray(array)
    if array.shape != box.inside.shape:
        raise ValueError(f"the crop's result has shape {array.shape}, the ROI box {box.inside.shape}")
    full = np.zeros(box.shape, dtype=array.dtype)
    full[box.slices()] = np.where(box.inside, array, 0)
    return full


def paste_image(image: sitk.Image, box: RoiBox) -> sitk.Image:
    """:func:`paste` for a SimpleITK image of the crop: the same values on the full volume's grid."""
    full = sitk.GetImageFromArray(paste(sitk.GetArrayViewFromImage(image), box))
    full.SetOrigin(box.full_origin)
    full.SetSpacing(box.full_spacing)
    full.SetDirection(box.full_direction)
    return full


def paste_result(result, box: RoiBox):
    """A copy of an engine ``SegmentationResult`` of the crop with its labels (and probabilities) on the full grid."""
    from dataclasses import replace

    return replace(result, labels=paste_image(result.labels, box),
                   probabilities={key: paste_image(value, box) for key, value in result.probabilities.items()})
