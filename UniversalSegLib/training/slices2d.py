"""2D slices with boxes: the HC18 fetal-head ultrasound images (and optionally axial slices of the 3D sets).

Used to train and score the 2D detector (:mod:`.detector`) and reusable by few-shot work: every item is
an image (float32, 0-1, [h, w]), its label mask (uint8) and one box per labelled structure, boxes
``(x0, y0, x1, y1)`` in pixels with x = column and the end exclusive (:func:`mask_boxes`).

Splits are by **subject** (several HC18 images belong to one fetus): ``splits/us_fetalhead_hc18.json``,
made by :func:`hc18_split` with the project's hash rule (:func:`~.data.assign_split`, sha256 of
``subject-<n>`` < 0.2 -> validation), so the file can be made again and checked.

>>> items = load_hc18("val")  # doctest: +SKIP
>>> items[0].image.shape, items[0].boxes  # doctest: +SKIP
((270, 400), array([[ 92.,  41., 305., 236.]], dtype=float32))
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..paths import data_root, splits_root
from .data import _atomic_text, assign_split

HC18 = "us_fetalhead_hc18"
VAL_FRACTION = 0.2


@dataclass
class Slice2D:
    """One 2D image with its label mask and boxes (one row per label in ``labels``)."""

    id: str
    subject: str
    image: np.ndarray  # float32 [h, w], 0-1
    mask: np.ndarray  # uint8 [h, w], label values
    boxes: np.ndarray  # float32 [n, 4] (x0, y0, x1, y1), end exclusive
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [n]


def mask_boxes(mask: np.ndarray, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes ``(x0, y0, x1, y1)`` (end exclusive) of each label present in a 2D mask, and those labels.

    >>> m = np.zeros((5, 6), np.uint8); m[1:3, 2:5] = 1
    >>> mask_boxes(m)
    (array([[2., 1., 5., 3.]], dtype=float32), array([1]))
    """
    values = [int(v) for v in np.unique(mask) if v != 0] if labels is None else list(labels)
    boxes, found = [], []
    for value in values:
        ys, xs = np.nonzero(mask == value)
        if len(ys):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            found.append(value)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(found, np.int64)


def _subject_key(record: dict) -> str:
    subject = record.get("subject")
    return f"subject-{subject}" if subject is not None else str(record["id"])


def _records(folder: Path) -> list[dict]:
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    return list(meta.get("cases") or [])


def hc18_split(root: str | Path | None = None, splits_dir: str | Path | None = None,
               write: bool = False) -> dict[str, list[str]]:
    """``{"train": [ids], "val": [ids]}`` of HC18 by subject: the stored file when it exists, else made
    (and written to ``splits_dir/us_fetalhead_hc18.json`` when ``write``)."""
    path = splits_root(splits_dir) / f"{HC18}.json"
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {"train": list(stored["train"]), "val": list(stored["val"])}
    records = _records(data_root(root) / HC18)
    by_key = assign_split([_subject_key(r) for r in records], VAL_FRACTION)
    split = {s: sorted(str(r["id"]) for r in records if by_key[_subject_key(r)] == s) for s in ("train", "val")}
    if write:
        payload = {"dataset": HC18, "rule": f"sha256 of 'subject-<n>' < {VAL_FRACTION} -> val (by subject, "
                   "never by image)", "val_fraction": VAL_FRACTION, **split}
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_text(path, json.dumps(payload, indent=1) + "\n")
    return split


def read_png(path: str | Path) -> np.ndarray:
    """A grey PNG as float32 0-1 (8- or 16-bit)."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im)
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2)
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    return (array.astype(np.float32) / scale).clip(0, 1)


def iter_hc18(part: str = "val", root: str | Path | None = None, splits_dir: str | Path | None = None,
              limit: int | None = None) -> Iterator[Slice2D]:
    """The HC18 images of one split part (``"train"``, ``"val"`` or ``"all"``), in id order."""
    from PIL import Image

    folder = data_root(root) / HC18
    records = {str(r["id"]): r for r in _records(folder)}
    split = hc18_split(root, splits_dir)
    ids = sorted(records) if part == "all" else split[part]
    for cid in ids[:limit]:
        rec = records[cid]
        with Image.open(folder / rec["label"]) as im:
            mask = np.asarray(im).astype(np.uint8)
        boxes, labels = mask_boxes(mask)
        yield Slice2D(cid, _subject_key(rec), read_png(folder / rec["image"]), mask, boxes, labels)


def load_hc18(part: str = "val", root: str | Path | None = None, splits_dir: str | Path | None = None,
              limit: int | None = None) -> list[Slice2D]:
    """:func:`iter_hc18` as a list."""
    return list(iter_hc18(part, root, splits_dir, limit))


def axial_slices(dataset: str, part: str = "train", root: str | Path | None = None, every: int = 4,
                 limit: int | None = None) -> Iterator[Slice2D]:
    """Axial slices (every ``every``-th one holding a label) of a shared 3D set, 1st-99th percentile scaled to 0-1,
    with one box per present label. ``part`` uses the set's ``splits/<dataset>.json``."""
    import SimpleITK as sitk

    from .data import load_or_make_split, read_dataset

    info = read_dataset(data_root(root) / dataset)
    train, val = load_or_make_split(info, splits_root(), write=False)
    wanted = set(train if part == "train" else val)
    for case in [c for c in info.cases if c.id in wanted][:limit]:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image))).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))).astype(np.uint8)
        if image.ndim == 4:  # several channels: the first
            image = image[0] if image.shape[0] < image.shape[-1] else image[..., 0]
        lo, hi = np.percentile(image, [1, 99])
        image = ((image - lo) / max(hi - lo, 1e-6)).clip(0, 1)
        holding = [z for z in range(label.shape[0]) if label[z].any()]
        for z in holding[::every]:
            boxes, labels = mask_boxes(label[z], [v for v in case.present_labels])
            yield Slice2D(f"{case.id}_z{z:03d}", case.split_key, image[z], label[z], boxes, labels)
