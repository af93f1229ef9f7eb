"""From a volume to LiteMedSAM's input and back: slice axis, intensity scaling, resize + pad, box scaling.

What the pretrained weights expect (LiteMedSAM's own preprocessing): a grey slice repeated on three
channels, its longest side resized to 256 and padded at the bottom/right to 256 x 256, intensities
min-max scaled to [0, 1] per slice, after the volume was brought to a display range (CT: a window
for the task; other modalities: the 0.5-99.5th percentiles).

>>> volume = scale_intensity(np.arange(27.0).reshape(3, 3, 3), "MR")
>>> float(volume.min()), round(float(volume.max()), 5)
(0.0, 1.0)
>>> tensor, scale = slice_input(np.eye(32, 64, dtype=np.float32))
>>> tuple(tensor.shape), scale
((1, 3, 256, 256), 4.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from ..catalog import PLANES, Catalog
from ..errors import CatalogError

SIZE = 256
#: CT window (level, width) in HU per task; tasks not listed use :data:`CT_SOFT_TISSUE`.
CT_SOFT_TISSUE = (40.0, 400.0)
CT_WINDOWS = {"lung_left": (-600.0, 1500.0), "lung_right": (-600.0, 1500.0), "trachea": (-600.0, 1500.0)}
PERCENTILES = (0.5, 99.5)


def ct_window(task_id: str | None) -> tuple[float, float]:
    """The (level, width) a CT is windowed with before refining ``task_id``."""
    return CT_WINDOWS.get(task_id or "", CT_SOFT_TISSUE)


def scale_intensity(volume: np.ndarray, kind: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """A float32 copy of ``volume`` in [0, 1]: CT clipped to ``window`` (level, width), else to its percentiles."""
    array = np.asarray(volume, dtype=np.float32)
    if kind == "CT":
        level, width = window or CT_SOFT_TISSUE
        low, high = level - width / 2, level + width / 2
    else:
        low, high = (float(v) for v in np.percentile(array, PERCENTILES))
    if high <= low:
        high = low + 1.0
    return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)


def slice_axis(image: sitk.Image, plane: str = "axial") -> int:
    """The numpy axis (of ``GetArrayFromImage``'s (z, y, x) order) that steps across ``plane``'s slices.

    For "axial" it is the voxel axis closest to head-foot, "coronal" front-back, "sagittal" left-right;
    ``np.moveaxis(array, axis, 0)`` puts the slices first. A task's plane is its catalog ``refine_plane``.

    >>> image = sitk.Image(40, 30, 20, sitk.sitkUInt8)  # identity direction: voxel i, j, k = x, y, z
    >>> slice_axis(image), slice_axis(image, "coronal"), slice_axis(image, "sagittal")
    (0, 1, 2)
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, not {plane!r}")
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    voxel_axis = int(direction[PLANES.index(plane)].argmax())  # row r: physical axis r in terms of voxel i, j, k
    return 2 - voxel_axis


#: A slice narrower than this (voxels) on a side is no image for a 2D model: fall back to the axial plane.
MIN_SLICE_SIDE = 16
#: Voxels this much longer along one axis than another are thick slices: refine in the acquisition plane.
THICK_SLICE_RATIO = 2.0


def refine_axis(image: sitk.Image, task_id: str | None) -> int:
    """The slice axis refinement uses for ``task_id`` on ``image``: that of the task's plane (catalog
    ``refine_plane``), unless the voxels are thick slices (spacing ratio above :data:`THICK_SLICE_RATIO`:
    the acquisition plane, across the thickest spacing) or the plane's slices would be under
    :data:`MIN_SLICE_SIDE` voxels across (then axial).

    >>> image = sitk.Image(35, 52, 36, sitk.sitkInt16)
    >>> refine_axis(image, "hippocampus_anterior"), refine_axis(image[:, :, 10:14], "hippocampus_anterior")
    (1, 0)
    >>> image.SetSpacing((1.0, 1.0, 5.0))
    >>> refine_axis(image, "hippocampus_anterior")  # 5 mm slices: keep to them
    0
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)[::-1]  # numpy (z, y, x) order
    if spacing.max() > THICK_SLICE_RATIO * spacing.min():
        return int(spacing.argmax())
    axis = slice_axis(image, task_plane(task_id))
    size = np.asarray(image.GetSize())[::-1]
    if np.delete(size, axis).min() < MIN_SLICE_SIDE:
        return slice_axis(image)
    return axis


def task_plane(task_id: str | None) -> str:
    """The slice plane refinement uses for ``task_id`` (its catalog ``refine_plane``; axial when unknown).

    >>> task_plane("hippocampus_anterior"), task_plane("liver"), task_plane(None)
    ('coronal', 'axial', 'axial')
    """
    try:
        return Catalog.load().task(task_id).refine_plane if task_id else "axial"
    except CatalogError:
        return "axial"


def slice_input(image: np.ndarray) -> tuple[torch.Tensor, float]:
    """A 2D slice (already in [0, 1] display range) -> (1, 3, 256, 256) tensor and the resize factor."""
    h, w = image.shape
    scale = SIZE / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    low, high = tensor.min(), tensor.max()
    tensor = (tensor - low) / torch.clamp(high - low, min=1e-8)
    tensor = F.pad(tensor, (0, SIZE - new_w, 0, SIZE - new_h))
    return tensor.expand(-1, 3, -1, -1).contiguous(), scale


def boxes_to_input(boxes: Sequence[Sequence[float]] | np.ndarray, scale: float) -> torch.Tensor:
    """Slice boxes (x0, y0, x1, y1) in pixels, corners inclusive -> model-input coordinates, (N, 4)."""
    return torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale)


#: The logit a coarse mask is given as SAM's dense mask prompt: +MASK_LOGIT inside, -MASK_LOGIT outside.
MASK_LOGIT = 4.0


def masks_to_input(masks: np.ndarray, scale: float) -> torch.Tensor:
    """Coarse masks (N, h, w) on a slice's pixels -> SAM's dense mask prompt (N, 1, 256, 256) in logits.

    Resized like the slice (:func:`slice_input`) and padded as outside; ``+MASK_LOGIT`` inside, ``-MASK_LOGIT`` out.

    >>> masks_to_input(np.ones((1, 32, 64), bool), 4.0)[0, 0, ::64, ::64].tolist()
    [[4.0, 4.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0], [-4.0, -4.0, -4.0, -4.0], [-4.0, -4.0, -4.0, -4.0]]
    """
    masks = np.asarray(masks, dtype=np.float32)
    h, w = masks.shape[-2:]
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    tensor = F.interpolate(torch.from_numpy(masks.reshape(-1, 1, h, w)), size=(new_h, new_w), mode="bilinear",
                           align_corners=False)
    tensor = F.pad(tensor, (0, SIZE - new_w, 0, SIZE - new_h))
    return (tensor * 2 - 1) * MASK_LOGIT


def logits_to_slice(logits: torch.Tensor, shape: tuple[int, int], scale: float) -> torch.Tensor:
    """(N, 1, 256, 256) low-resolution logits -> (N, h, w) logits on the slice's own pixels."""
    h, w = shape
    valid = logits[..., : max(1, round(h * scale)), : max(1, round(w * scale))]
    return F.interpolate(valid, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
