"""Writing a segmentation: NIfTI label map + JSON sidecar, or a Slicer ``.seg.nrrd``.

Every file appears whole or not at all: all outputs are written to temporary names first and
renamed only when every one of them was written.

>>> write_result(result, "out/ct_seg.nii.gz", probabilities_dir="out/probs")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .catalog import Task
from .errors import OutputError
from .inference import SegmentationResult
from .safe_write import check_outputs, commit, temp_path

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def sidecar_path(path: str | Path) -> Path:
    """``out/seg.nii.gz`` -> ``out/seg.json``."""
    path = Path(path)
    name = path.name
    for suffix in (".seg.nrrd", *LABELMAP_SUFFIXES):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def sidecar(result: SegmentationResult, source: str = "", extra: dict | None = None) -> dict:
    """The sidecar content: label value -> task id, name, colour and Slicer terminology (plus ``extra``'s keys)."""
    return {
        "labels": {str(value): _task_entry(task) for value, task in enumerate(result.tasks, start=1)},
        "modality": result.modality.id,
        "model": result.model,
        "source_image": source,
        "seconds": round(result.seconds, 2),
        "universalseg_version": __version__,
        **(extra or {}),
    }


def _task_entry(task: Task) -> dict:
    entry = task.to_dict()
    entry["terminology_entry"] = task.terminology_entry()
    return entry


def write_result(result: SegmentationResult, path: str | Path, probabilities_dir: str | Path | None = None,
                 source: str = "", overwrite: bool = False, inputs: tuple = (),
                 extra: dict | None = None) -> list[Path]:
    """Write ``result`` by the extension of ``path``; return the paths written.

    ``.seg.nrrd`` gives a Slicer segmentation file (names, colours, terminology in its header);
    ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` a label map plus ``<name>.json``. With
    ``probabilities_dir`` each task's probability map goes to ``<dir>/<task id>.nii.gz``.
    No output may be one of ``inputs`` (nor ``source``); existing outputs are replaced only with
    ``overwrite`` (see :mod:`UniversalSegLib.safe_write`). ``extra`` keys are added to the sidecar
    (``batch`` records the model's sha256 and the options there).
    """
    path = Path(path)
    lower = path.name.lower()
    if not lower.endswith((".seg.nrrd", *LABELMAP_SUFFIXES)):
        raise OutputError(f"output '{path}' has an unknown extension",
                          "use .nii.gz (label map + JSON sidecar) or .seg.nrrd (Slicer segmentation)")
    outputs: list[tuple[Path, object]] = []
    if lower.endswith(".seg.nrrd"):
        outputs.append((path, seg_nrrd_image(result)))
    else:
        outputs.append((path, result.labels))
        outputs.append((sidecar_path(path), json.dumps(sidecar(result, source, extra), indent=2)))
    if probabilities_dir is not None and result.probabilities:
        folder = Path(probabilities_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create folder '{folder}' ({err.strerror})", "choose another path") from None
        outputs += [(folder / f"{task_id}.nii.gz", image) for task_id, image in result.probabilities.items()]
    check_outputs([target for target, _ in outputs], [*inputs, source], overwrite)
    temps: list[Path] = []
    try:
        for target, content in outputs:
            tmp = temp_path(target)
            temps.append(tmp)
            if isinstance(content, str):
                try:
                    tmp.write_text(content)
                except OSError as err:
                    raise OutputError(f"cannot write '{target}' ({err.strerror})",
                                      "check free disk space and permissions") from None
            else:
                _write_sitk(content, tmp, target)
        for tmp, (target, _) in zip(list(temps), outputs, strict=True):
            commit(tmp, target, overwrite)
            temps.remove(tmp)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return [target for target, _ in outputs]


def _write_sitk(image: sitk.Image, tmp: Path, target: Path) -> None:
    try:
        sitk.WriteImage(image, str(tmp), True)
    except RuntimeError as err:
        raise OutputError(f"cannot write '{target}': {str(err).strip().splitlines()[-1]}",
                          "check free disk space and permissions") from None


def seg_nrrd_image(result: SegmentationResult) -> sitk.Image:
    """The label map with the header fields Slicer reads a ``.seg.nrrd`` segmentation from."""
    image = sitk.Image(result.labels)
    array = sitk.GetArrayViewFromImage(result.labels)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for index, task in enumerate(result.tasks):
        value = index + 1
        key = f"Segment{index}_"
        image.SetMetaData(key + "ID", task.id)
        image.SetMetaData(key + "Name", task.name)
        image.SetMetaData(key + "Color", " ".join(f"{c:.6f}" for c in task.color_float()))
        image.SetMetaData(key + "ColorAutoGenerated", "0")
        image.SetMetaData(key + "LabelValue", str(value))
        image.SetMetaData(key + "Layer", "0")
        image.SetMetaData(key + "Extent", _extent(array == value))
        image.SetMetaData(key + "Tags", f"TerminologyEntry:{task.terminology_entry()}|")
    return image


def _extent(mask: np.ndarray) -> str:
    """Slicer's ``Segment<i>_Extent``: i0 i1 j0 j1 k0 k1 (an empty extent when the mask is empty)."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # array is (k, j, i)
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds += [int(hit[0]), int(hit[-1])]
    return " ".join(map(str, bounds))
