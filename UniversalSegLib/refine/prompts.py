"""Prompts: 3D boxes and points in voxel indices, and the automatic ones derived from a coarse mask.

Two coordinate systems meet here. Users, the CLI and Slicer give **voxel indices** (i, j, k) of the
input image. Refinement works on **slice space**: the array with its slice axis first (see
:func:`~UniversalSegLib.refine.slices.slice_axis`), so a voxel is (slice, row, column) and a 2D box is
(x0, y0, x1, y1) = (column, row, column, row), corners inclusive. :class:`SliceSpace` converts.

>>> space = SliceSpace(axis=0)  # an axial image: slices along k
>>> box = Box3D.parse("2,3,4,10,12,6")
>>> space.slice_range(box), space.slice_box(box).tolist()
((4, 6), [2, 3, 10, 12])
>>> coarse = np.zeros((8, 20, 20), np.uint8); coarse[2:5, 5:9, 6:12] = 1
>>> [(p.key_slice, p.box.lo, p.box.hi) for p in derive_prompts(coarse, 1, space, margin=1)]
[(2, (5, 4, 1), (12, 9, 5))]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

#: How an object's slices are prompted: each from the coarse mask there, or followed from its key slice.
MODES = ("slices", "propagate")


def box_of(mask: np.ndarray) -> np.ndarray:
    """The tight box (x0, y0, x1, y1), corners inclusive, of a non-empty 2D mask.

    >>> box_of(np.pad(np.ones((2, 3), bool), ((1, 0), (4, 0)))).tolist()
    [4, 1, 6, 2]
    """
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def piece_boxes(mask: np.ndarray, min_pixels: int = 2) -> np.ndarray:
    """Tight boxes (n, 4) of the 8-connected pieces of a non-empty 2D mask, largest first.

    A structure cut in several pieces by a slice (the two rami of the mandible) gets one box per piece:
    one box around both would frame what lies between them. Pieces under ``min_pixels`` are left out
    unless there is no other.

    >>> mask = np.zeros((6, 12), bool); mask[1:4, 1:3] = True; mask[2:5, 8:11] = True
    >>> piece_boxes(mask).tolist()
    [[8, 2, 10, 4], [1, 1, 2, 3]]
    """
    from scipy import ndimage

    pieces, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(pieces.ravel())[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_pixels] or [int(sizes.argmax()) + 1]
    return np.array([box_of(pieces == i) for i in order])


def grow_box(box: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """Box(es) (..., 4) grown by ``margin`` pixels on every side, kept inside a slice of ``shape`` (h, w)."""
    h, w = shape
    grown = np.asarray(box, dtype=np.float64) + np.array([-margin, -margin, margin, margin])
    return np.clip(grown, 0, [w - 1, h - 1, w - 1, h - 1])


@dataclass(frozen=True)
class Box3D:
    """A box in voxel indices (i, j, k) of the image, both corners inclusive (a Slicer ROI, ``--box``)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def parse(cls, text: str) -> Box3D:
        """``"i0,j0,k0,i1,j1,k1"`` -> a box (corners may come in either order)."""
        try:
            values = [int(round(float(v))) for v in text.replace(" ", "").split(",")]
        except ValueError:
            values = []
        if len(values) != 6:
            raise InputError(f"box '{text}' is not six numbers", "give --box i0,j0,k0,i1,j1,k1 (voxel indices)")
        a, b = np.array(values[:3]), np.array(values[3:])
        return cls(tuple(int(v) for v in np.minimum(a, b)), tuple(int(v) for v in np.maximum(a, b)))

    def check_inside(self, size: tuple[int, int, int]) -> None:
        """Raise :class:`InputError` unless the box lies inside an image of ``size`` (i, j, k)."""
        if any(lo < 0 or hi >= s for lo, hi, s in zip(self.lo, self.hi, size, strict=True)):
            last = tuple(s - 1 for s in size)
            raise InputError(f"box {self.lo}-{self.hi} reaches outside the image (voxel indices (0, 0, 0)-{last})",
                             "give voxel indices inside the image")

    def holds(self, index: tuple[int, int, int]) -> bool:
        """Whether a voxel index lies inside the box.

        >>> Box3D((0, 0, 0), (4, 4, 2)).holds((4, 0, 3))
        False
        """
        return all(lo <= v <= hi for lo, v, hi in zip(self.lo, index, self.hi, strict=True))

    def physical_corners(self, image) -> np.ndarray:
        """The 8 corners in physical (LPS) millimetres, (8, 3), for showing the box as a Slicer ROI."""
        corners = [(i, j, k) for i in (self.lo[0] - 0.5, self.hi[0] + 0.5) for j in (self.lo[1] - 0.5, self.hi[1] + 0.5)
                   for k in (self.lo[2] - 0.5, self.hi[2] + 0.5)]
        return np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners])


@dataclass(frozen=True)
class Point:
    """A click in voxel indices (i, j, k): ``positive`` inside the object, else outside it."""

    index: tuple[int, int, int]
    positive: bool = True


@dataclass
class Prompts:
    """What one object is refined from: a 3D box, points, and/or 2D boxes on given slices (slice space).

    With ``propagate`` false, exactly the slices of ``slice_boxes`` (from a coarse mask) are refined, each
    with its own boxes ((n, 4): one per piece of the structure on that slice) and, where ``slice_masks``
    holds the slice, the coarse mask there ((h, w) bool) as the dense mask prompt. Otherwise the object is
    followed from ``key_slice`` (default: the first positive point's slice, else the box's middle slice)
    through the box's slice range, each slice prompted by the previous slice's result (see
    :mod:`~UniversalSegLib.refine.propagate`). ``None`` means: propagate
    unless ``slice_boxes`` are given.
    """

    box: Box3D | None = None
    points: tuple[Point, ...] = ()
    slice_boxes: dict[int, np.ndarray] = field(default_factory=dict)
    slice_masks: dict[int, np.ndarray] = field(default_factory=dict)
    key_slice: int | None = None
    propagate: bool | None = None

    def follows(self) -> bool:
        """Whether the object is propagated from a key slice (rather than refined slice by slice)."""
        return not self.slice_boxes if self.propagate is None else self.propagate


@dataclass(frozen=True)
class SliceSpace:
    """Converts voxel indices (i, j, k) to slice space (slice, row, column) for a slice axis of the (k, j, i) array."""

    axis: int

    def to_slice(self, index: tuple[int, int, int]) -> tuple[int, int, int]:
        zyx = (index[2], index[1], index[0])
        rest = [zyx[a] for a in range(3) if a != self.axis]
        return zyx[self.axis], rest[0], rest[1]

    def to_index(self, s: int, row: int, col: int) -> tuple[int, int, int]:
        rest = iter((row, col))
        zyx = [s if a == self.axis else next(rest) for a in range(3)]
        return zyx[2], zyx[1], zyx[0]

    def slice_range(self, box: Box3D) -> tuple[int, int]:
        return self.to_slice(box.lo)[0], self.to_slice(box.hi)[0]

    def slice_box(self, box: Box3D) -> np.ndarray:
        """The box's in-plane rectangle (x0, y0, x1, y1) on its slices."""
        _, r0, c0 = self.to_slice(box.lo)
        _, r1, c1 = self.to_slice(box.hi)
        return np.array([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)])

    def box_from_slices(self, s0: int, s1: int, box2d: np.ndarray) -> Box3D:
        """A :class:`Box3D` spanning slices s0..s1 and the in-plane box (x0, y0, x1, y1)."""
        a = np.array(self.to_index(s0, int(box2d[1]), int(box2d[0])))
        b = np.array(self.to_index(s1, int(box2d[3]), int(box2d[2])))
        return Box3D(tuple(int(v) for v in np.minimum(a, b)), tuple(int(v) for v in np.maximum(a, b)))


@dataclass
class ObjectPrompts(Prompts):
    """Automatic prompts of one connected component of one label of a coarse mask."""

    label: int = 0
    component: int = 0
    voxels: int = 0


#: Pixels a box derived from a coarse mask is grown by on every side. Measured on validation (margins -2..2;
#: ``weights/litemedsam_finetuned.json``, ``coarse_prompts``; docs/benchmarks.md): 0, the tight box, was best
#: or tied on ground-truth and on coarse masks (hippocampus, ACDC, OpenKBP); larger boxes lost up to 0.03.
COARSE_MARGIN = 0.0
#: Whether each slice's coarse mask goes to the decoder as SAM's dense mask prompt by default. Measured (same
#: place): it lost 0.04-0.08 on the right ventricle, so it is off; ``--mask-prompt`` turns it on.
MASK_PROMPT = False


def derive_prompts(coarse: np.ndarray, label: int, space: SliceSpace, margin: float = COARSE_MARGIN,
                   margin_slices: int = 1, min_voxels: int = 3) -> list[ObjectPrompts]:
    """Prompts for each connected component (26-connected) of ``coarse == label``, largest first.

    ``coarse`` is in slice space. Each component gets 2D boxes (n, 4) on each slice it covers, one per
    piece there (:func:`piece_boxes`, grown by ``margin`` pixels), the component's mask on each of those
    slices (``slice_masks``, for the dense mask prompt), the slice where it is largest as key
    slice, and a 3D box (in voxel indices of the image) grown by ``margin`` pixels in plane and
    ``margin_slices`` slices. Components under ``min_voxels``
    are left out (noise of the coarse model).
    """
    from scipy import ndimage

    components, count = ndimage.label(coarse == label, structure=np.ones((3, 3, 3), bool))
    found = []
    for number, where in enumerate(ndimage.find_objects(components), start=1):
        mask = components[where] == number
        voxels = int(mask.sum())
        if voxels < min_voxels:
            continue
        shape = coarse.shape[1:]
        boxes, masks = {}, {}
        for offset, plane in enumerate(mask):
            if plane.any():
                found_boxes = piece_boxes(plane) + np.array([where[2].start, where[1].start] * 2)
                boxes[where[0].start + offset] = grow_box(found_boxes, margin, shape)
                full = np.zeros(shape, bool)
                full[where[1], where[2]] = plane
                masks[where[0].start + offset] = full
        areas = mask.sum(axis=(1, 2))
        key = where[0].start + int(areas.argmax())
        s0 = max(0, where[0].start - margin_slices)
        s1 = min(coarse.shape[0] - 1, where[0].stop - 1 + margin_slices)
        every = np.concatenate(list(boxes.values()))
        in_plane = np.concatenate([every[:, :2].min(axis=0), every[:, 2:].max(axis=0)]).round()
        found.append(ObjectPrompts(box=space.box_from_slices(s0, s1, in_plane), slice_boxes=boxes, slice_masks=masks,
                                   key_slice=key,
                                   label=label, component=number, voxels=voxels))
    return sorted(found, key=lambda p: -p.voxels)
