"""Following one object from its key slice outward, slice by slice, without leaking.

Each next slice is prompted with the boxes of the previous slice's refined mask (one per piece, grown
by a margin).
The walk stops, keeping nothing of the slice it stopped on, when the new mask

* vanishes (fewer than ``min_pixels``),
* shrinks or grows faster than anatomy does between neighbouring slices (area ratio outside
  ``[1 / max_ratio, max_ratio]``),
* jumps (overlaps the previous mask by less than ``min_overlap`` of the smaller of the two), or
* leaves the allowed extent: the slice range ``[first, last]`` or, mostly, the in-plane ``limit`` box.

>>> import numpy as np
>>> truth = np.zeros((9, 20, 20), bool); truth[2:7, 5:10, 5:10] = True
>>> def predict(z, boxes, points=None):  # an oracle that returns the truth inside the boxes
...     out = np.zeros((20, 20), bool)
...     for x0, y0, x1, y1 in np.round(boxes).astype(int):
...         out[y0:y1 + 1, x0:x1 + 1] = truth[z, y0:y1 + 1, x0:x1 + 1]
...     return out
>>> masks, why = propagate(predict, (20, 20), key_slice=4, key_boxes=np.array([[5, 5, 9, 9]]), first=0, last=8)
>>> sorted(masks), why
([2, 3, 4, 5, 6], {'up': 'vanished at slice 7', 'down': 'vanished at slice 1'})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .prompts import grow_box, piece_boxes

#: predict(slice index, boxes (n, 4) as (x0, y0, x1, y1) or None, clicks on that slice or None) -> 2D bool mask
Predict = Callable[..., np.ndarray]
#: Clicks on one slice: ((P, 2) x, y pixel coordinates, (P,) labels, 1 positive and 0 negative).
SlicePoints = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class StopRules:
    """When a walk ends (see the module docstring)."""

    min_pixels: int = 2
    max_ratio: float = 2.5
    min_overlap: float = 0.2
    max_outside: float = 0.5
    margin: float = 1.0


def _verdict(previous: np.ndarray, mask: np.ndarray, limit: np.ndarray | None, rules: StopRules) -> str | None:
    area, before = int(mask.sum()), int(previous.sum())
    if area < rules.min_pixels:
        return "vanished"
    if area * rules.max_ratio < before:
        return "shrank"
    if area > rules.max_ratio * before:
        return "grew"
    if (mask & previous).sum() < rules.min_overlap * min(area, before):
        return "jumped"
    if limit is not None:
        x0, y0, x1, y1 = np.round(limit).astype(int)
        inside = mask[y0:y1 + 1, x0:x1 + 1].sum()
        if area - inside > rules.max_outside * area:
            return "left the coarse extent"
    return None


def propagate(predict: Predict, shape: tuple[int, int], key_slice: int, key_boxes: np.ndarray | None, first: int,
              last: int, limit: np.ndarray | None = None, points: dict[int, SlicePoints] | None = None,
              rules: StopRules | None = None) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """Refine ``key_slice`` from ``key_boxes`` (n, 4) and its clicks, then walk up and down within ``first..last``.

    ``points`` maps a slice to ((P, 2) xy, (P,) labels) clicks added on that slice. Returns the kept
    masks by slice and why each direction stopped. An empty key-slice mask returns no masks.
    """
    rules = rules or StopRules()
    points = points or {}
    key_mask = predict(key_slice, key_boxes, points.get(key_slice))
    if key_mask.sum() < rules.min_pixels:
        return {}, {"key": f"nothing found on key slice {key_slice}"}
    masks = {key_slice: key_mask}
    reasons = {}
    for name, step in (("up", 1), ("down", -1)):
        previous, z = key_mask, key_slice + step
        reasons[name] = "reached the end of the allowed extent"
        while first <= z <= last:
            mask = predict(z, grow_box(piece_boxes(previous), rules.margin, shape), points.get(z))
            why = _verdict(previous, mask, limit, rules)
            if why:
                reasons[name] = f"{why} at slice {z}"
                break
            masks[z] = mask
            previous, z = mask, z + step
    return masks, reasons
