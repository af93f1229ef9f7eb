"""Refining a label map: automatic prompts per label and component, one refiner, one label map out.

This is what the CLI and the Slicer logic call. The result keeps the coarse map's label values and
grid; labels not asked for are copied unchanged, a component the refiner finds nothing for keeps its
coarse voxels, and a voxel two refined structures claim goes to the one the coarse map gave it (else to
the first refined). The derived 3D boxes come back too (voxel indices; ``Box3D.physical_corners`` gives
millimetres), so Slicer can show them as editable ROI markups.

>>> result = refine_labelmap(image, coarse, {1: "hippocampus_anterior", 2: "hippocampus_posterior"},
...                          kind="MR")  # doctest: +SKIP
>>> result.labels  # an sitk.Image on coarse's grid  # doctest: +SKIP
>>> result.boxes[1][0].lo, result.boxes[1][0].hi  # doctest: +SKIP
((12, 20, 8), (30, 41, 22))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..catalog import Task
from ..errors import InputError
from ..volume import same_grid
from .prompts import COARSE_MARGIN, MASK_PROMPT, MODES, Box3D, Point, Prompts, SliceSpace, derive_prompts
from .refiner import Refiner
from .slices import refine_axis

#: The task of each label value: a list (value i + 1 = tasks[i]) or a mapping {value: task or task id}.
TaskList = Sequence[Task | str] | Mapping[int, Task | str | None] | None


@dataclass
class RefinementResult:
    """The refined label map, the 3D boxes per label (one per component), and what happened, per label."""

    labels: sitk.Image
    boxes: dict[int, list[Box3D]] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)


def _task_ids(tasks: TaskList, values: Sequence[int]) -> dict[int, str | None]:
    if tasks is None:
        return dict.fromkeys(values)
    if isinstance(tasks, Mapping):
        return {v: (t.id if isinstance(t, Task) else t) for v, t in tasks.items()}
    return {v: (t.id if isinstance(t, Task) else t) for v, t in enumerate(tasks, start=1)}


def check_coarse(image: sitk.Image, coarse: sitk.Image,
                 only: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """The coarse label array and the values to refine; :class:`InputError` for a mask that cannot be refined."""
    if coarse.GetDimension() != 3 or not same_grid(image, coarse):
        raise InputError("the coarse mask is not on the image's grid (size, spacing, origin or direction differ)",
                         "give a label map made for this image, or resample it onto the image first")
    labels = sitk.GetArrayFromImage(coarse)
    if labels.dtype.kind == "f":
        if not np.all(labels == np.round(labels)):
            raise InputError("the coarse mask holds non-integer values", "give a label map (integer values)")
        labels = labels.astype(np.int32)
    present = [int(v) for v in np.unique(labels) if v != 0]
    wanted = [v for v in (only if only is not None else present) if v in present]
    if not wanted:
        what = "is empty (no voxel above 0)" if not present else f"has none of the labels {list(only or [])}"
        raise InputError(f"the coarse mask {what}: there is nothing to refine",
                         "give a mask with the structures to refine, or draw a box (--box)")
    return labels, wanted


def _prompts(source: np.ndarray, value: int, space: SliceSpace, margin: float, mode: str, points: Sequence[Point],
             mask_prompt: bool) -> list:
    objects = derive_prompts(source, value, space, margin=margin)
    for prompts in objects:
        prompts.propagate = mode == "propagate"
        prompts.points = tuple(p for p in points if prompts.box.holds(p.index))
        if not mask_prompt:
            prompts.slice_masks = {}
    return objects


def refine_labelmap(image: sitk.Image, coarse: sitk.Image, tasks: TaskList = None, *, refiner: Refiner | None = None,
                    kind: str = "MR", only: Sequence[int] | None = None, mode: str = "slices",
                    margin: float = COARSE_MARGIN, points: Sequence[Point] = (),
                    mask_prompt: bool = MASK_PROMPT) -> RefinementResult:
    """Refine every label of ``coarse`` (or the values in ``only``) on ``image``; neither input is modified.

    ``tasks``: the task of each label value, as a list (value i + 1 = tasks[i], like a segmentation
    result) or a mapping; it picks the CT window and the slice plane (:func:`~.slices.refine_axis`).
    ``mode``: ``"slices"`` prompts every slice with the box of the coarse mask there; ``"propagate"``
    starts on each component's largest slice and follows the refined mask outward within the coarse extent.
    ``margin``: pixels each slice's box is grown by (default :data:`~.prompts.COARSE_MARGIN`, measured on
    validation; 0 for exact boxes, e.g. from ground truth); ``mask_prompt``: also give the coarse mask of each
    slice as the decoder's dense mask prompt (default :data:`~.prompts.MASK_PROMPT`).
    ``refiner`` defaults to fine-tuned LiteMedSAM.
    ``points`` (clicks in voxel indices) go to every object whose 3D box holds them.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    labels, wanted = check_coarse(image, coarse, only)
    present = [int(v) for v in np.unique(labels) if v != 0]
    if refiner is None:
        from .refiner import LiteMedSAMRefiner

        refiner = LiteMedSAMRefiner()
    task_of = _task_ids(tasks, present)
    out = np.where(np.isin(labels, wanted), 0, labels).astype(labels.dtype)
    result = RefinementResult(labels=coarse)
    for value in wanted:
        axis = refine_axis(image, task_of.get(value))
        space = SliceSpace(axis)
        in_slices = np.moveaxis(labels, axis, 0)
        objects = _prompts(in_slices, value, space, margin, mode, points, mask_prompt)
        result.boxes[value] = [p.box for p in objects]
        masks = refiner.refine(image, objects, kind=kind, task=task_of.get(value), axis=axis) if objects else []
        kept = 0
        for prompts, mask in zip(objects, masks, strict=True):
            if not mask.any():  # nothing found: keep the coarse component rather than lose it
                component = np.zeros(in_slices.shape, bool)
                for z in prompts.slice_boxes:
                    component[z] = in_slices[z] == value
                mask = np.moveaxis(component, 0, axis)
                kept += 1
            out[mask & ((out == 0) | (labels == value))] = value  # a contested voxel goes to its coarse label
        result.notes[value] = (f"{len(objects)} component(s) refined" +
                               (f", {kept} kept as coarse (nothing found)" if kept else ""))
    refined = sitk.GetImageFromArray(out)
    refined.CopyInformation(coarse)
    result.labels = refined
    return result


def refine_boxes(image: sitk.Image, boxes: Sequence[Box3D], *, refiner: Refiner | None = None, kind: str = "MR",
                 task: str | None = None) -> sitk.Image:
    """A label map (value i + 1 for box i) from user boxes alone: each object followed from its box's middle slice."""
    if not boxes:
        raise InputError("no box given", "give --box i0,j0,k0,i1,j1,k1")
    if refiner is None:
        from .refiner import LiteMedSAMRefiner

        refiner = LiteMedSAMRefiner()
    masks = refiner.refine(image, [Prompts(box=b) for b in boxes], kind=kind, task=task)
    out = np.zeros(masks[0].shape, np.uint8 if len(boxes) < 255 else np.uint16)
    for value, mask in enumerate(masks, start=1):
        out[mask & (out == 0)] = value
    labels = sitk.GetImageFromArray(out)
    labels.CopyInformation(image)
    return labels
