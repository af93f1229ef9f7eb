"""DICOM outputs a hospital system reads: DICOM SEG (highdicom) and RTSTRUCT (rt-utils).

Both need the input to be a DICOM series folder: the output references that series (its study,
frame of reference and every slice's SOP instance UID) and lies on its grid.

    universalseg segment CT_DIR -o seg.dcm --format dicom-seg            # one segment per structure
    universalseg segment CT_DIR -o rtstruct.dcm --format rtstruct        # one ROI per structure

>>> result = segment("CT_DIR", groups=["Head and neck organs at risk"])  # doctest: +SKIP
>>> write_dicom(result, "CT_DIR", "out/seg.dcm", "dicom-seg")  # doctest: +SKIP
PosixPath('out/seg.dcm')

* **DICOM SEG** (Segmentation Storage, binary): one segment per task with the catalog's SNOMED CT
  category, type and type modifier (and anatomic region), its name, its colour as the recommended
  display CIELab value, and the algorithm identification (model name and version from the model
  manifest). Empty frames are left out (highdicom's default).
* **RTSTRUCT**: one ROI per task (name, colour, SNOMED CT type as the RT ROI identification code (the
  modifier, e.g. Left, is in the name),
  interpreted type ORGAN, generation algorithm AUTOMATIC); closed planar contours per slice, made by
  rt-utils 1.2.7 (OpenCV contours). rt-utils sets ``is_little_endian``/``is_implicit_VR``, which
  pydicom 3 deprecates (a warning, still works with pydicom 3.0.2, tested); we write the file with
  pydicom ourselves, atomically.

Needs the ``dicom`` extra: ``pip install universalseg[dicom]`` (highdicom, pydicom, rt-utils).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .catalog import Code, Task
from .errors import InputError, OutputError
from .inference import SegmentationResult
from .safe_write import atomic_output

FORMATS = ("nifti", "nrrd", "dicom-seg", "rtstruct")
DICOM_FORMATS = ("dicom-seg", "rtstruct")
MANUFACTURER = "UniversalSeg"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def output_format(path: str | os.PathLike, explicit: str | None = None) -> str:
    """The output format: ``explicit`` if given (checked against the extension), else from the extension.

    ``.nii``/``.nii.gz``/``.mha``/``.mhd`` -> nifti (label map + sidecar), ``.nrrd``/``.seg.nrrd`` -> nrrd,
    ``.rtstruct.dcm`` -> rtstruct, other ``.dcm`` -> dicom-seg.

    >>> output_format("out/ct.nii.gz"), output_format("seg.dcm"), output_format("rs.rtstruct.dcm")
    ('nifti', 'dicom-seg', 'rtstruct')
    >>> output_format("out.dcm", "rtstruct")
    'rtstruct'
    """
    name = Path(path).name.lower()
    if name.endswith(".rtstruct.dcm"):
        guessed: str | None = "rtstruct"
    elif name.endswith(".dcm"):
        guessed = "dicom-seg"
    elif name.endswith(".nrrd"):
        guessed = "nrrd"
    elif name.endswith((".nii.gz", ".nii", ".mha", ".mhd")):
        guessed = "nifti"
    else:
        guessed = None
    if explicit is None:
        if guessed is None:
            raise OutputError(f"output '{path}' has an unknown extension",
                              "use .nii.gz, .seg.nrrd or .dcm, or pass --format")
        return guessed
    if explicit not in FORMATS:
        raise OutputError(f"unknown output format '{explicit}'", f"use one of {', '.join(FORMATS)}")
    dicom_name = name.endswith(".dcm")
    if (explicit in DICOM_FORMATS) != dicom_name or (explicit == "nrrd") != name.endswith(".nrrd"):
        wanted = {"nifti": ".nii.gz", "nrrd": ".seg.nrrd", "dicom-seg": ".dcm", "rtstruct": ".dcm"}[explicit]
        raise OutputError(f"output '{path}' does not fit --format {explicit}", f"name the output *{wanted}")
    return explicit


def check_dicom_input(image: str | os.PathLike, fmt: str) -> None:
    """Raise :class:`InputError` unless ``image`` is a folder, as a DICOM output needs, and
    :class:`OutputError` if the format's libraries are missing (both checked before inference)."""
    if not Path(image).is_dir():
        raise InputError(f"--format {fmt} needs a DICOM series folder as input, and '{image}' is not a folder "
                         "(a DICOM output must reference the images it was made from)",
                         "give the folder of the DICOM series, or write .nii.gz / .seg.nrrd for this input")
    import importlib.util

    needed = ("pydicom", "highdicom") if fmt == "dicom-seg" else ("pydicom", "rt_utils")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise OutputError(f"--format {fmt} needs {' and '.join(missing)}, which is not installed",
                          "pip install 'universalseg[dicom]' (the versions pinned in requirements.txt)")


def series_datasets(folder: str | os.PathLike, labels: sitk.Image) -> list:
    """The series' slices (pydicom datasets, no pixel data), in the order of the label map's slices.

    Every slice k of ``labels`` is matched to the file whose ImagePositionPatient is the label map's
    voxel (0, 0, k); :class:`OutputError` if any does not match (not the series read).
    """
    import pydicom

    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series_ids) != 1:
        raise InputError(f"folder '{folder}' holds {len(series_ids)} DICOM series", "give a folder with one series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    spacing = min(labels.GetSpacing())
    ordered = []
    for k in range(labels.GetSize()[2]):
        point = np.array(labels.TransformIndexToPhysicalPoint((0, 0, k)))
        distance = np.linalg.norm(positions - point, axis=1)
        best = int(np.argmin(distance))
        if distance[best] > 0.01 * spacing:
            raise OutputError(f"slice {k} of the segmentation matches no image of the series in '{folder}'",
                              "segment the same DICOM folder the output is to reference")
        ordered.append(datasets[best])
    size = labels.GetSize()
    if any((int(ds.Columns), int(ds.Rows)) != (size[0], size[1]) for ds in ordered):
        raise OutputError(f"the images in '{folder}' are not {size[0]} x {size[1]}", "segment the same DICOM folder")
    return ordered


def model_identity(model: str | os.PathLike | None, fallback: str = "") -> tuple[str, str]:
    """(name, version) of the model from its manifest (``MODEL.json``); the file name and package version if none."""
    from .errors import CheckpointError
    from .model_tasks import read_manifest

    try:
        manifest = read_manifest(Path(model) if model is not None else None)
    except CheckpointError:
        return (fallback or "universalseg", __version__)
    return (str(manifest.get("name") or fallback or "universalseg"), str(manifest.get("version") or __version__))


def write_dicom(result: SegmentationResult, dicom_dir: str | os.PathLike, path: str | os.PathLike, fmt: str,
                model: str | os.PathLike | None = None, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``result`` (segmented from the series in ``dicom_dir``) as ``fmt`` (dicom-seg or rtstruct) to ``path``.

    ``model`` is the checkpoint used (``None``: the bundled one), for the algorithm identification.
    The file appears whole or not at all; an existing one is replaced only with ``overwrite``.
    """
    check_dicom_input(dicom_dir, fmt)
    datasets = series_datasets(dicom_dir, result.labels)
    name, version = model_identity(model, result.model)
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        if fmt == "dicom-seg":
            dicom_seg(result, datasets, name, version).save_as(tmp)
        elif fmt == "rtstruct":
            rtstruct(result, dicom_dir, datasets, name, version).save_as(tmp)
        else:
            raise OutputError(f"'{fmt}' is not a DICOM format", f"use one of {', '.join(DICOM_FORMATS)}")
    return Path(path)


def _coded(code: Code):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def segment_description(number: int, task: Task, model_name: str, model_version: str):
    """The SEG segment of ``task``: label, SCT codes, display colour, automatic algorithm ``model_name`` ``version``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    region = None
    if task.region is not None:
        region = _coded(task.region)
        if task.region_modifier is not None:
            region.AnatomicRegionModifierSequence = [_coded(task.region_modifier)]
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=task.name,
        segmented_property_category=_coded(task.category), segmented_property_type=_coded(task.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=generate_uid(), tracking_id=task.id,
        anatomic_regions=[region] if region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*task.color),
    )
    if task.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(task.modifier)]
    return description


def dicom_seg(result: SegmentationResult, datasets: Sequence, model_name: str, model_version: str):
    """A binary highdicom Segmentation of ``result`` referencing ``datasets`` (ordered as the label map's slices)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    labels = sitk.GetArrayFromImage(result.labels).astype(np.uint8 if len(result.tasks) < 256 else np.uint16)
    descriptions = [segment_description(i, task, model_name, model_version)
                    for i, task in enumerate(result.tasks, start=1)]
    return hd.seg.Segmentation(
        source_images=list(datasets), pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name, software_versions=f"universalseg {__version__}",
        device_serial_number="0", series_description=f"{MANUFACTURER} {model_name} {model_version}",
        content_label="UNIVERSALSEG", content_description=f"automatic segmentation by {model_name} {model_version}",
    )


def rtstruct(result: SegmentationResult, dicom_dir: str | os.PathLike, datasets: Sequence, model_name: str,
             model_version: str):
    """An RT Structure Set (pydicom dataset) with one ROI per task of ``result``, contoured by rt-utils."""
    from pydicom.dataset import Dataset
    from rt_utils import RTStructBuilder

    labels = sitk.GetArrayViewFromImage(result.labels)  # (k, row, column), k as ``datasets``
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints, warns on pydicom 3
        warnings.simplefilter("ignore", DeprecationWarning)
        structure = RTStructBuilder.create_new(dicom_series_path=str(dicom_dir))
        order = [slice_of[ds.SOPInstanceUID] for ds in structure.series_data]  # rt-utils' own slice order
        for number, task in enumerate(result.tasks, start=1):
            mask = np.transpose(labels[order] == number, (1, 2, 0))  # rt-utils: (row, column, slice)
            structure.add_roi(mask=np.ascontiguousarray(mask), color=list(task.color), name=task.name,
                              roi_generation_algorithm="AUTOMATIC")
    ds = structure.ds
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model_name
    ds.SoftwareVersions = f"universalseg {__version__}"
    ds.InstitutionName = ""
    ds.SeriesDescription = f"{MANUFACTURER} {model_name} {model_version}"
    ds.StructureSetLabel = "UniversalSeg"
    ds.StructureSetName = f"{model_name} {model_version}"
    for observation, task in zip(ds.RTROIObservationsSequence, result.tasks, strict=True):
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIObservationDescription = f"{task.id}: automatic, {model_name} {model_version}"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = task.type.value, task.type.scheme, \
            task.type.meaning
        observation.RTROIIdentificationCodeSequence = [code]
    return ds
