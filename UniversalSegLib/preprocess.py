"""Preprocessing shared by training and inference: canonical grid, resampling, normalisation.

The network always sees an axis-aligned LPS grid (identity direction) at the model's spacing, so
an image stored flipped, with permuted axes or with an oblique direction gives the same input.
SimpleITK does the resampling (not MONAI's ``Spacing``/``Orientation``) because it keeps the
exact ITK geometry both ways, which is what maps the result back onto the input's own grid.

>>> grid = canonical_grid(image, spacing=(1.5, 1.5, 1.5))  # doctest: +SKIP
>>> net_input = normalise(to_grid(image, grid), kind="CT")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

CT_WINDOW = (-991.0, 500.0)
PERCENTILES = (2.0, 98.0)


def canonical_grid(image: sitk.Image, spacing: Sequence[float] | None = None) -> sitk.Image:
    """An empty image on the axis-aligned LPS grid that covers ``image``'s voxel centres.

    ``spacing`` is (x, y, z) in mm; ``None`` keeps the input's own voxel size, assigned to the
    physical axes its voxel axes are closest to (so a permuted image keeps its resolution).
    For an axis-aligned input at its own spacing the grid has exactly the same voxel centres.
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    size = np.asarray(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    physical = np.array([image.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in corners])
    low, high = physical.min(axis=0), physical.max(axis=0)
    if spacing is None:
        axis_of = np.abs(direction).argmax(axis=1)  # physical axis p is closest to voxel axis axis_of[p]
        if len(set(axis_of.tolist())) < 3:  # 45-degree obliquity: fall back to the finest spacing
            new_spacing = np.full(3, min(image.GetSpacing()))
        else:
            new_spacing = np.asarray(image.GetSpacing())[axis_of]
    else:
        new_spacing = np.asarray(spacing, dtype=float)
    new_size = np.floor((high - low) / new_spacing + 1e-3).astype(int) + 1
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing(new_spacing.tolist())
    grid.SetOrigin(low.tolist())
    grid.SetDirection(np.eye(3).flatten().tolist())
    return grid


def to_grid(
    image: sitk.Image, grid: sitk.Image, interpolator: int = sitk.sitkLinear, default: float | None = None
) -> sitk.Image:
    """Resample ``image`` onto ``grid``'s geometry as float32 (outside: ``default``, else the image minimum)."""
    if default is None:
        default = float(sitk.GetArrayViewFromImage(image).min())
    output_type = sitk.sitkUInt8 if interpolator == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    source = image if output_type == sitk.sitkUInt8 else sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Resample(source, grid, sitk.Transform(), interpolator, default, output_type)


def normalise(image: sitk.Image | np.ndarray, kind: str) -> np.ndarray:
    """Clip and z-score one volume for the network, by modality kind ("CT", "MR", "PET", "US", "photo").

    CT is clipped to the Hermes window [-991, 500] HU; every other kind to its own 2nd-98th
    percentile. Returns a float32 array in (z, y, x) order. Plain numpy (so the ONNX Runtime path needs no
    torch): the same arithmetic as MONAI's ``ClipIntensityPercentiles`` + ``NormalizeIntensity`` (linear
    percentiles, population standard deviation, a constant image left at 0), equal to about 1e-6.

    >>> [round(float(v), 4) for v in normalise(np.array([0.0, 1.0, 2.0, 3.0]), "CT")]
    [-1.3416, -0.4472, 0.4472, 1.3416]
    """
    array = sitk.GetArrayFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)
    array = array.astype(np.float32, copy=True)
    if kind == "CT":
        np.clip(array, *CT_WINDOW, out=array)
    else:
        low, high = np.percentile(array, PERCENTILES)
        np.clip(array, np.float32(low), np.float32(high), out=array)
    mean, std = array.mean(dtype=np.float32), array.std(dtype=np.float32)
    array -= mean
    if std != 0.0:
        array /= std
    return array


def target_spacing(inference: dict, group_ids: Sequence[str]) -> tuple[float, float, float] | None:
    """The spacing a model wants for a request: its group's own if all tasks share one, else the default.

    ``inference`` is the checkpoint's inference dict: ``{"spacing": [x, y, z] | None,
    "group_spacing": {group id: [x, y, z] | None}}``. ``None`` means the voxel grid as stored
    (used for data whose true spacing is unknown, such as the ACDC export).
    """
    shared, value = _shared_group_value(inference.get("group_spacing", {}), group_ids)
    value = value if shared else inference.get("spacing")
    return None if value is None else (float(value[0]), float(value[1]), float(value[2]))


def target_window(inference: dict, group_ids: Sequence[str]) -> tuple[int, int, int]:
    """The sliding window (x, y, z) for a request: the patch its group was trained on if all tasks share
    one, else the model's default. A network sees its own patch size best: on the hippocampus, the
    trained 32 x 48 x 32 window gave Dice 0.49 where a 64^3 one gave 0.37 (hippo_003, hippo_011).

    >>> target_window({"patch_size": [64, 64, 64], "group_patch_size": {"hippocampus": [32, 48, 32]}},
    ...               ["hippocampus"])
    (32, 48, 32)
    """
    shared, value = _shared_group_value(inference.get("group_patch_size", {}), group_ids)
    value = value if shared else inference.get("patch_size", (96, 96, 96))
    return (int(value[0]), int(value[1]), int(value[2]))


def _shared_group_value(per_group: dict, group_ids: Sequence[str]) -> tuple[bool, Any]:
    """(True, value) when every group has an entry in ``per_group`` and all entries are equal, else (False, None)."""
    if not group_ids or not all(g in per_group for g in group_ids):
        return False, None
    if len({json.dumps(per_group[g]) for g in group_ids}) != 1:
        return False, None
    return True, per_group[group_ids[0]]
