"""Training data: dataset.json reading, case checks, deterministic splits and the preprocessing cache.

Two layouts are read:

* the shared format (``/shared/data/*/dataset.json``): ``labels`` {value: name}, ``modality`` and
  ``cases`` with ``id``, ``image``, ``label``, optional ``present_labels`` (partial labels; absent
  means every label was annotated) and optional ``patient``/``subject`` (split unit);
* the nnU-Net raw layout: ``channel_names``, ``labels`` {name: value}, ``imagesTr/<id>_0000.<ext>``,
  ``labelsTr/<id>.<ext>`` (only channel 0 is used; every label counts as annotated).

A case is preprocessed once, with the same functions inference uses (:mod:`UniversalSegLib.preprocess`),
and cached as ``.npy`` files keyed by the input files' SHA-256, the spacing and :data:`CACHE_VERSION`.
A bad case (missing file, label grid differing from the image grid, label values outside the label
map, empty ``present_labels``, unreadable or constant image) raises :class:`CaseError` naming it;
training logs it and goes on without it.

>>> ds = read_dataset("../shared/data/mri_cardiac_acdc")  # doctest: +SKIP
>>> train_ids, val_ids = load_or_make_split(ds, "splits")  # doctest: +SKIP
>>> cached = prepare_case(ds.cases[0], spacing=None, kind="MR", cache_dir="cache")  # doctest: +SKIP
>>> cached.image().shape  # (z, y, x), float16  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from UniversalSegLib.errors import InputError
from UniversalSegLib.volume import file_sha256

log = logging.getLogger("UniversalSeg.training")

#: Bump when preprocessing changes so that old cache entries are not reused.
CACHE_VERSION = "1"
#: Foreground voxels kept per label for patch centring (a random subset when there are more).
FOREGROUND_POINTS = 4000


class CaseError(InputError):
    """One training case that cannot be used; the message names the dataset and case."""


@dataclass(frozen=True)
class Case:
    """One labelled case as listed in its dataset.json (paths absolute)."""

    dataset: str
    id: str
    image: Path
    label: Path
    present_labels: tuple[int, ...]
    split_key: str  # patient / subject when given, else the case id: cases sharing it stay together
    image_sha256: str | None = None
    label_sha256: str | None = None


@dataclass
class DatasetInfo:
    """A dataset folder: label map, modality named by the file, usable cases, and cases skipped on reading."""

    name: str
    folder: Path
    modality: str
    labels: dict[int, str]
    cases: list[Case]
    spacing_unknown: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (case id, problem)
    layout: str = "shared"


def read_dataset(folder: str | Path) -> DatasetInfo:
    """Read ``folder/dataset.json`` (shared or nnU-Net raw layout); cases failing the cheap checks are skipped.

    Checks made here: required fields, image and label files exist, ``present_labels`` non-empty and
    within the label map. Image contents are checked later by :func:`prepare_case`.
    """
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"dataset folder '{folder}' has no dataset.json", "check the dataset path in the config")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{meta_path} is not valid JSON (line {err.lineno}: {err.msg})", "fix the file") from None
    if "channel_names" in meta:
        return _read_nnunet(folder, meta)
    return _read_shared(folder, meta)


def _read_shared(folder: Path, meta: dict) -> DatasetInfo:
    name = folder.name
    try:
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (KeyError, AttributeError, ValueError):
        raise InputError(f"{folder / 'dataset.json'} has no valid 'labels' map {{value: name}}",
                         "add one, e.g. \"labels\": {\"1\": \"Liver\"}") from None
    records = meta.get("cases") or meta.get("training") or []
    info = DatasetInfo(name, folder, str(meta.get("modality", "")), labels, [],
                       bool(meta.get("spacing_unknown", False)))
    for i, rec in enumerate(records):
        cid = str(rec.get("id", f"#{i}"))
        if "image" not in rec or "label" not in rec:
            info.skipped.append((cid, "record lacks 'image' or 'label'"))
            continue
        present = rec.get("present_labels")
        present = tuple(sorted(labels)) if present is None else tuple(int(v) for v in present)
        _add_case(info, Case(name, cid, folder / rec["image"], folder / rec["label"], present,
                             str(rec.get("patient") or rec.get("subject") or cid),
                             rec.get("image_sha256"), rec.get("label_sha256")))
    return info


def _read_nnunet(folder: Path, meta: dict) -> DatasetInfo:
    name = folder.name
    ending = str(meta.get("file_ending", ".nii.gz"))
    try:
        labels = {int(v): str(k) for k, v in meta["labels"].items() if int(v) != 0}
    except (KeyError, AttributeError, TypeError, ValueError):
        raise InputError(f"{folder / 'dataset.json'} has no valid nnU-Net 'labels' map {{name: value}}",
                         "add one, e.g. \"labels\": {\"background\": 0, \"liver\": 1}") from None
    modality = str(meta["channel_names"].get("0", ""))
    info = DatasetInfo(name, folder, modality, labels, [], layout="nnunet")
    for image in sorted((folder / "imagesTr").glob(f"*_0000{ending}")):
        cid = image.name[: -len(f"_0000{ending}")]
        _add_case(info, Case(name, cid, image, folder / "labelsTr" / f"{cid}{ending}", tuple(sorted(labels)), cid))
    return info


def _add_case(info: DatasetInfo, case: Case) -> None:
    problem = None
    if not case.present_labels:
        problem = "present_labels is empty (no annotated structure)"
    elif not set(case.present_labels) <= set(info.labels):
        problem = (f"present_labels {list(case.present_labels)} include values outside the label map "
                   f"{sorted(info.labels)}")
    elif not case.image.is_file():
        problem = f"image file {case.image} is missing"
    elif not case.label.is_file():
        problem = f"label file {case.label} is missing"
    if problem:
        info.skipped.append((case.id, problem))
    else:
        info.cases.append(case)


# ---------------------------------------------------------------------------------------------- splits
def _hash_unit(key: str) -> float:
    """A stable number in [0, 1) from a string (SHA-256, so independent of Python's hash seed)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / float(16**15)


def assign_split(keys: Iterable[str], val_fraction: float = 0.2) -> dict[str, str]:
    """``{split key: "train" | "val"}`` by hashing each key: adding keys never moves existing ones.

    When the hash sends nothing (or everything) to validation, the key with the smallest (largest)
    hash is moved, so tiny datasets still get both sets.
    """
    keys = sorted(set(keys))
    out = {k: ("val" if _hash_unit(k) < val_fraction else "train") for k in keys}
    if len(keys) >= 2:
        if "val" not in out.values():
            out[min(keys, key=_hash_unit)] = "val"
        if "train" not in out.values():
            out[max(keys, key=_hash_unit)] = "train"
    return out


def load_or_make_split(info: DatasetInfo, splits_dir: str | Path, val_fraction: float = 0.2,
                       write: bool = True) -> tuple[list[str], list[str]]:
    """Train and validation case ids of a dataset, from ``splits_dir/<dataset>.json`` or made and written there.

    Cases sharing a ``patient``/``subject`` always land in the same set. Cases missing from an existing
    file are added by the same hash rule (and the file is rewritten when ``write``).
    """
    path = Path(splits_dir) / f"{info.name}.json"
    known: dict[str, str] = {}
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            known = {cid: s for s in ("train", "val") for cid in stored.get(s, [])}
        except (json.JSONDecodeError, AttributeError):
            raise InputError(f"split file {path} is not valid", "delete it to have it made again") from None
    by_key: dict[str, str] = {}
    for case in info.cases:  # a new case of a known patient follows that patient
        if case.id in known:
            by_key.setdefault(case.split_key, known[case.id])
    fresh = assign_split([c.split_key for c in info.cases if c.split_key not in by_key], val_fraction)
    if known and fresh:  # never let the fallback of assign_split move sets of an existing file
        fresh = {k: ("val" if _hash_unit(k) < val_fraction else "train") for k in fresh}
    by_key.update(fresh)
    assignment = {c.id: by_key[c.split_key] for c in info.cases}
    train = [c.id for c in info.cases if assignment[c.id] == "train"]
    val = [c.id for c in info.cases if assignment[c.id] == "val"]
    changed = any(known.get(cid) != s for cid, s in assignment.items())
    if write and (changed or not path.is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**known, **assignment}
        payload = {
            "dataset": info.name,
            "rule": f"sha256 of the split key (patient/subject, else case id) < {val_fraction} -> val",
            "val_fraction": val_fraction,
            "train": sorted(k for k, s in merged.items() if s == "train"),
            "val": sorted(k for k, s in merged.items() if s == "val"),
        }
        _atomic_text(path, json.dumps(payload, indent=1) + "\n")
    return train, val


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- cache
@dataclass
class CachedCase:
    """A preprocessed case on disk: float16 image and uint8 label (z, y, x) on the canonical grid."""

    dataset: str
    id: str
    present_labels: tuple[int, ...]
    image_path: Path
    label_path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (x, y, z) mm of the cached grid
    pad_value: float
    foreground: dict[int, np.ndarray]  # label value -> [N, 3] (z, y, x) voxel indices (a subset)

    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.image_path, mmap_mode="r" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.label_path, mmap_mode="r" if mmap else None)


def cache_key(case: Case, spacing: Sequence[float] | None, kind: str) -> str:
    """Hash of the input files' SHA-256, the target spacing, the modality kind and :data:`CACHE_VERSION`."""
    image_sha = case.image_sha256 or file_sha256(case.image)
    label_sha = case.label_sha256 or file_sha256(case.label)
    spacing_key = None if spacing is None else [round(float(s), 4) for s in spacing]
    text = json.dumps([image_sha, label_sha, spacing_key, kind, CACHE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def prepare_case(case: Case, spacing: Sequence[float] | None, kind: str, cache_dir: str | Path,
                 labels: Iterable[int] | None = None) -> CachedCase:
    """Preprocess ``case`` (or reuse its cache entry); raise :class:`CaseError` naming it when it is unusable.

    ``labels``: the values allowed in the label map (besides 0); ``None`` skips that check.
    """
    folder = Path(cache_dir) / case.dataset
    try:
        key = cache_key(case, spacing, kind)
    except OSError as err:
        raise CaseError(f"{case.dataset}/{case.id}: cannot read its files ({err})", "check the files") from None
    stem = folder / f"{_safe(case.id)}.{key}"
    meta_path = _with(stem, ".meta.npz")
    if meta_path.is_file():
        try:
            return _load_cached(case, stem)
        except (OSError, ValueError, KeyError):
            log.warning("cache entry %s is damaged; preprocessing %s/%s again", meta_path, case.dataset, case.id)
    image, label, grid_spacing = _preprocess(case, spacing, kind, labels)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(key[:8], 16))
    fg = {}
    for value in case.present_labels:
        idx = np.argwhere(label == value).astype(np.int16 if max(label.shape) < 32000 else np.int32)
        if len(idx) > FOREGROUND_POINTS:
            idx = idx[np.sort(rng.choice(len(idx), FOREGROUND_POINTS, replace=False))]
        fg[f"fg_{value}"] = idx
    _atomic_npy(_with(stem, ".image.npy"), image.astype(np.float16))
    _atomic_npy(_with(stem, ".label.npy"), label)
    fd, tmp = tempfile.mkstemp(prefix=f".{meta_path.name}.", suffix=".tmp.npz", dir=folder)
    os.close(fd)
    np.savez(tmp, spacing=np.asarray(grid_spacing, dtype=np.float64), pad=np.float32(image.min()), **fg)
    os.replace(tmp, meta_path)
    return _load_cached(case, stem)


def _with(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (not ``Path.with_suffix``, which would drop the key after the last dot)."""
    return stem.parent / (stem.name + suffix)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npy", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _load_cached(case: Case, stem: Path) -> CachedCase:
    meta = np.load(_with(stem, ".meta.npz"))
    image_path, label_path = _with(stem, ".image.npy"), _with(stem, ".label.npy")
    shape = np.load(label_path, mmap_mode="r").shape
    fg = {int(k[3:]): meta[k] for k in meta.files if k.startswith("fg_")}
    return CachedCase(case.dataset, case.id, case.present_labels, image_path, label_path, tuple(shape),
                      tuple(float(s) for s in meta["spacing"]), float(meta["pad"]), fg)


def _preprocess(case: Case, spacing: Sequence[float] | None, kind: str,
                labels: Iterable[int] | None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    from UniversalSegLib.preprocess import canonical_grid, normalise, to_grid
    from UniversalSegLib.volume import read_image, same_grid

    name = f"{case.dataset}/{case.id}"
    try:
        image, _ = read_image(case.image)
    except InputError as err:
        raise CaseError(f"{name}: image unusable: {err.problem}", "fix or remove the case") from None
    try:
        label = sitk.ReadImage(str(case.label))
    except RuntimeError:
        raise CaseError(f"{name}: cannot read label file {case.label}", "fix or remove the case") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{name}: label {case.label.name} is not a scalar 3D image", "fix or remove the case")
    if not same_grid(image, label, tol=1e-3):
        raise CaseError(
            f"{name}: label grid differs from the image grid (size {label.GetSize()} vs {image.GetSize()}, "
            f"spacing {_fmt(label.GetSpacing())} vs {_fmt(image.GetSpacing())}, origin {_fmt(label.GetOrigin())} "
            f"vs {_fmt(image.GetOrigin())})", "resample the label onto the image or fix its header")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if labels is not None:
        bad = sorted(set(values.tolist()) - {0} - set(int(v) for v in labels))
        if bad:
            raise CaseError(f"{name}: label values {bad[:10]} are not in the label map {sorted(labels)}",
                            "fix the label file or the dataset.json label map")
    grid = canonical_grid(image, spacing)
    array = normalise(to_grid(image, grid), kind)
    lab = sitk.GetArrayFromImage(to_grid(label, grid, sitk.sitkNearestNeighbor, default=0)).astype(np.uint8)
    return array, lab, tuple(float(s) for s in grid.GetSpacing())


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"
