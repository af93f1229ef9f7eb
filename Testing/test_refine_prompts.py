"""Prompt derivation and propagation on synthetic masks (no model, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from UniversalSegLib.errors import InputError
from UniversalSegLib.refine.prompts import Box3D, SliceSpace, derive_prompts, grow_box, piece_boxes
from UniversalSegLib.refine.propagate import StopRules, propagate


def test_box_parse_orders_corners_and_rejects_garbage() -> None:
    assert Box3D.parse("9, 8, 7, 1, 2, 3") == Box3D((1, 2, 3), (9, 8, 7))
    for bad in ("1,2,3", "a,b,c,d,e,f", "1,2,3,4,5,6,7"):
        with pytest.raises(InputError, match="six numbers"):
            Box3D.parse(bad)


def test_box_inside_check() -> None:
    Box3D((0, 0, 0), (9, 9, 4)).check_inside((10, 10, 5))
    for box in (Box3D((0, 0, 0), (10, 9, 4)), Box3D((-1, 0, 0), (3, 3, 3))):
        with pytest.raises(InputError, match="outside the image"):
            box.check_inside((10, 10, 5))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_space_round_trip(axis: int) -> None:
    space = SliceSpace(axis)
    array = np.zeros((4, 5, 6))  # (k, j, i)
    array[3, 1, 2] = 1
    moved = np.moveaxis(array, axis, 0)
    s, row, col = space.to_slice((2, 1, 3))
    assert moved[s, row, col] == 1
    assert space.to_index(s, row, col) == (2, 1, 3)
    box = space.box_from_slices(0, 1, np.array([1, 2, 3, 3]))
    assert space.slice_range(box) == (0, 1)
    assert space.slice_box(box).tolist() == [1, 2, 3, 3]


def test_grow_box_stays_in_slice() -> None:
    assert grow_box(np.array([1, 5, 8, 9]), 2, (10, 10)).tolist() == [0, 3, 9, 9]
    assert grow_box(np.array([[1, 5, 8, 9], [4, 4, 5, 5]]), 1, (10, 10)).tolist() == [[0, 4, 9, 9], [3, 3, 6, 6]]


def test_a_structure_cut_in_pieces_gets_a_box_per_piece() -> None:
    plane = np.zeros((20, 30), bool)
    plane[5:15, 2:6] = True  # the two rami of a mandible on an axial slice
    plane[6:14, 24:28] = True
    plane[0, 15] = True  # a one-pixel speck: no box of its own
    assert piece_boxes(plane).tolist() == [[2, 5, 5, 14], [24, 6, 27, 13]]
    speck = np.zeros((5, 5), bool)
    speck[2, 2] = True
    assert piece_boxes(speck).tolist() == [[2, 2, 2, 2]]  # the only piece is kept, however small
    coarse = np.zeros((3, 20, 30), np.uint8)
    coarse[1] = plane
    coarse[0, 5:15, 2:28] = 1  # the body of the mandible joins the two pieces into one component
    [p] = derive_prompts(coarse, 1, SliceSpace(0), margin=0)
    assert p.slice_boxes[1].tolist() == [[2, 5, 5, 14], [24, 6, 27, 13]]
    assert p.slice_boxes[0].tolist() == [[2, 5, 27, 14]]


def test_components_key_slice_and_margins() -> None:
    coarse = np.zeros((10, 30, 30), np.uint8)
    coarse[2:7, 10:20, 5:12] = 1  # big component, largest on slice 4
    coarse[4, 8:22, 4:14] = 1
    coarse[8, 25:27, 25:27] = 1  # small second component
    coarse[0, 0, 0] = 1  # a single voxel: noise, dropped
    coarse[2:4, 1:3, 20:23] = 2  # another label: ignored
    space = SliceSpace(0)
    big, small = derive_prompts(coarse, 1, space, margin=2, margin_slices=1)
    assert big.voxels > small.voxels and small.voxels == 4
    assert big.key_slice == 4
    assert sorted(big.slice_boxes) == [2, 3, 4, 5, 6]
    assert big.slice_boxes[3].tolist() == [[3, 8, 13, 21]]  # x 5..11 and y 10..19, grown by 2
    assert big.slice_boxes[4].tolist() == [[2, 6, 15, 23]]
    assert big.box == Box3D((2, 6, 1), (15, 23, 7))  # one slice of margin each way, (i, j, k) order
    assert small.slice_boxes[8].tolist() == [[23, 23, 28, 28]]
    assert small.box.lo[2] == 7 and small.box.hi[2] == 9
    assert derive_prompts(coarse, 3, space) == []


def test_margins_clip_at_the_volume_edge() -> None:
    coarse = np.zeros((3, 8, 8), np.uint8)
    coarse[:, 0:3, 5:8] = 1
    [p] = derive_prompts(coarse, 1, SliceSpace(0), margin=3, margin_slices=2)
    assert p.slice_boxes[0].tolist() == [[2, 0, 7, 5]]
    assert p.box == Box3D((2, 0, 0), (7, 5, 2))


def _oracle(truth: np.ndarray, calls: list | None = None, spill: bool = False):
    """A perfect model: the truth inside the boxes (or, with ``spill``, wherever it touches one)."""

    def predict(z: int, boxes: np.ndarray, points=None) -> np.ndarray:
        if calls is not None:
            calls.append(z)
        out = np.zeros(truth.shape[1:], bool)
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            out[y0:y1 + 1, x0:x1 + 1] = truth[z, y0:y1 + 1, x0:x1 + 1]
        return truth[z].copy() if spill and out.any() else out

    return predict


def _walk(truth: np.ndarray, key: int, first: int = 0, last: int | None = None, limit=None, rules=None,
          spill: bool = False):
    last = len(truth) - 1 if last is None else last
    calls: list[int] = []
    masks, why = propagate(_oracle(truth, calls, spill), truth.shape[1:], key, piece_boxes(truth[key]), first, last,
                           limit, rules=rules)
    return sorted(masks), why, calls


def test_propagation_follows_a_tube_and_stops_where_it_ends() -> None:
    truth = np.zeros((20, 40, 40), bool)
    for z in range(4, 15):  # drifts by one pixel per slice: followed through box margins
        truth[z, 10 + z: 18 + z, 10:18] = True
    kept, why, calls = _walk(truth, key=9)
    assert kept == list(range(4, 15))
    assert why == {"up": "vanished at slice 15", "down": "vanished at slice 3"}
    assert max(calls) == 15 and min(calls) == 3  # not one slice further


def test_propagation_never_leaves_the_allowed_slices() -> None:
    truth = np.zeros((20, 20, 20), bool)
    truth[:, 5:10, 5:10] = True  # the structure fills the whole volume
    kept, why, calls = _walk(truth, key=10, first=8, last=12)
    assert kept == [8, 9, 10, 11, 12] and set(calls) <= set(range(8, 13))
    assert why["up"] == why["down"] == "reached the end of the allowed extent"


@pytest.mark.parametrize("change, reason", [("shrink", "shrank"), ("grow", "grew"), ("jump", "jumped")])
def test_propagation_stops_on_changes_unlike_anatomy(change: str, reason: str) -> None:
    truth = np.zeros((10, 40, 40), bool)
    truth[:, 10:20, 10:20] = True
    if change == "shrink":
        truth[6:, 10:20, 10:20] = False
        truth[6:, 14:16, 14:16] = True
    elif change == "grow":
        truth[6:, 2:38, 2:38] = True
    else:
        truth[6:] = False
        truth[6:, 19:29, 19:29] = True  # touches the previous box at one corner
    kept, why, _ = _walk(truth, key=3, rules=StopRules(margin=1), spill=change != "shrink")
    assert kept == [0, 1, 2, 3, 4, 5]
    assert why["up"] == f"{reason} at slice 6"


def test_propagation_stops_when_leaving_the_coarse_extent() -> None:
    truth = np.zeros((10, 40, 40), bool)
    for z in range(10):
        truth[z, 10:20, 10 + 2 * z: 20 + 2 * z] = True  # slides sideways, out of the limit box
    kept, why, _ = _walk(truth, key=0, limit=np.array([8, 8, 24, 22]), rules=StopRules(max_ratio=10))
    assert why["up"].startswith("left the coarse extent")
    assert kept[-1] < 9


def test_empty_key_slice_gives_nothing() -> None:
    truth = np.zeros((5, 10, 10), bool)
    masks, why = propagate(_oracle(truth), (10, 10), 2, np.array([[1, 1, 5, 5]]), 0, 4)
    assert masks == {} and "nothing found" in why["key"]


def test_derived_prompts_carry_each_slices_coarse_mask() -> None:
    """The component's own voxels per slice (the dense mask prompt), not another component's."""
    coarse = np.zeros((4, 16, 16), np.uint8)
    coarse[1:3, 2:6, 2:6] = 1
    coarse[1, 10:14, 10:14] = 1  # a second component on slice 1
    big, small = derive_prompts(coarse, 1, SliceSpace(0), margin=0)
    assert sorted(big.slice_masks) == [1, 2] and sorted(small.slice_masks) == [1]
    assert big.slice_masks[1].shape == (16, 16) and big.slice_masks[1].sum() == 16
    assert not big.slice_masks[1][10:14, 10:14].any() and small.slice_masks[1][10:14, 10:14].all()


def test_the_pipeline_gives_mask_prompts_only_when_asked() -> None:
    import SimpleITK as sitk

    from UniversalSegLib.refine.pipeline import refine_labelmap
    from UniversalSegLib.refine.refiner import Refiner

    class Recorder(Refiner):
        def __init__(self) -> None:
            self.seen: list[dict] = []

        def refine_slices(self, slices, objects, space):
            self.seen += [dict(o.slice_masks) for o in objects]
            return [np.zeros(slices.shape, bool) for _ in objects]

    array = np.zeros((6, 20, 20), np.uint8)
    array[2:4, 5:10, 5:10] = 1
    image, coarse = sitk.GetImageFromArray(array.astype(np.float32)), sitk.GetImageFromArray(array)
    recorder = Recorder()
    kept = refine_labelmap(image, coarse, refiner=recorder, mask_prompt=False).labels  # nothing found: coarse kept
    assert recorder.seen == [{}] and np.array_equal(sitk.GetArrayFromImage(kept), array)
    refine_labelmap(image, coarse, refiner=recorder, mask_prompt=True, margin=0)
    assert sorted(recorder.seen[1]) == [2, 3] and recorder.seen[1][2].sum() == 25
