"""DICOM SEG and RTSTRUCT outputs (UniversalSegLib.dicom_out) from a real CT series, through the CLI.

The head-and-neck sample CT is written as a DICOM series (SimpleITK, with the tags a PACS needs),
segmented once with the bundled model (``api.segment`` is memoised for the module, so the three
CLI runs -- .nii.gz, dicom-seg, rtstruct -- share one inference), and both DICOM files are read back
with highdicom / rt-utils and compared with the NIfTI output voxel for voxel.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
rt_utils = pytest.importorskip("rt_utils")

from UniversalSegLib.catalog import Catalog  # noqa: E402
from UniversalSegLib.cli import main  # noqa: E402
from UniversalSegLib.dicom_out import output_format  # noqa: E402
from UniversalSegLib.errors import OutputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "kbp_sample.nii.gz"
GROUP = "Head and neck organs at risk"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(source: Path, folder: Path) -> dict[str, str]:
    """Write ``source`` as a CT series (one file per slice) in ``folder``; return its UIDs."""
    from pydicom.uid import generate_uid

    image = sitk.Cast(sitk.ReadImage(str(source)), sitk.sitkInt16)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    tags = {"0010|0010": "Test^Patient", "0010|0020": "UNISEG001", "0010|0030": "19700101", "0010|0040": "O",
            "0008|0020": "20260101", "0008|0030": "120000", "0008|0050": "ACC1", "0008|0090": "", "0020|0010": "1",
            "0020|000d": uids["study"], "0020|000e": uids["series"], "0020|0052": uids["frame"],
            "0008|0060": "CT", "0008|0016": CT_IMAGE_STORAGE, "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0008|103e": "kbp sample CT", "0020|0011": "1", "0020|0037": orientation,
            "0028|1052": "0", "0028|1053": "1", "0028|1054": "HU", "0018|0050": f"{image.GetSpacing()[2]:.4f}"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True)
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0008|0018", generate_uid())
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"CT{k:04d}.dcm"))
        writer.Execute(slice_)
    return uids


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    return folder, write_ct_series(SAMPLE, folder)


@pytest.fixture(scope="module")
def outputs(ct_series, tmp_path_factory) -> dict[str, Path]:
    """Segment the series to .nii.gz, DICOM SEG and RTSTRUCT with the bundled model via the CLI (one inference)."""
    import UniversalSegLib.api as api

    folder, _ = ct_series
    out = tmp_path_factory.mktemp("out")
    cache: dict = {}
    real = api.segment

    def memoised(image, **kwargs):
        key = (image.GetSize(), tuple(kwargs.get("tasks", ())), tuple(kwargs.get("groups", ())))  # same series
        if key not in cache:
            cache[key] = real(image, **kwargs)
        return cache[key]

    paths = {"nifti": out / "ct_seg.nii.gz", "dicom-seg": out / "ct_seg.dcm", "rtstruct": out / "ct_rtstruct.dcm"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "segment", memoised)
        for fmt, path in paths.items():
            args = ["segment", str(folder), "-o", str(path), "--group", GROUP, "--no-mirror", "--quiet",
                    "--threads", "2"]
            args += ["--format", fmt] if fmt != "nifti" else []
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(args) == 0, fmt
    assert len(cache) == 1
    return paths


def series_uids_in_order(folder: Path) -> list[str]:
    """SOP instance UIDs of the series in the order SimpleITK stacks the slices (the NIfTI's k axis)."""
    sid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
    return [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]


def test_series_fixture_is_a_proper_ct_series(ct_series):
    folder, uids = ct_series
    ds = pydicom.dcmread(next(folder.iterdir()))
    assert ds.Modality == "CT" and ds.SOPClassUID == CT_IMAGE_STORAGE
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == (
        uids["study"], uids["series"], uids["frame"])
    assert float(ds.RescaleSlope) == 1 and len(ds.ImageOrientationPatient) == 6
    image = sitk.ReadImage(str(SAMPLE))
    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    read = series.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert np.allclose(read.GetOrigin(), image.GetOrigin()) and np.allclose(read.GetSpacing(), image.GetSpacing())


def test_dicom_seg_equals_nifti_and_references_the_series(ct_series, outputs):
    folder, uids = ct_series
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["nifti"])))
    seg = hd.seg.segread(str(outputs["dicom-seg"]))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == uids["study"] and seg.FrameOfReferenceUID == uids["frame"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series"]
    order = series_uids_in_order(folder)
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(order)

    catalog = Catalog.load()
    tasks = [catalog.task(t.id) for t in catalog.group(GROUP)]
    names = [seg.get_segment_description(n).SegmentLabel for n in range(1, seg.number_of_segments + 1)]
    tasks = [next(t for t in tasks if t.name == name) for name in names]
    assert len(tasks) == 7 and labels.max() == 7
    for number, task in enumerate(tasks, start=1):
        desc = seg.get_segment_description(number)
        assert desc.segmented_property_category.value == task.category.value
        assert desc.segmented_property_category.scheme_designator == "SCT"
        assert desc.segmented_property_type.value == task.type.value
        modifiers = desc.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifiers[0].CodeValue if modifiers else None) == (task.modifier.value if task.modifier else None)
        assert desc.algorithm_type.value == "AUTOMATIC"
        algorithm = desc.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("universalseg-small", "0.8.6")
        assert np.allclose(hd.color.CIELabColor.from_dicom_value(desc.RecommendedDisplayCIELabValue).to_rgb(),
                           task.color, atol=1.5)
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, combine_segments=True,
                                              ignore_spatial_locations=True)
    assert masks.shape == labels.shape
    assert np.array_equal(masks, labels)  # voxel for voxel on the series' grid


def test_rtstruct_rasterised_back_agrees_with_nifti(ct_series, outputs):
    folder, uids = ct_series
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["nifti"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        structure = rt_utils.RTStructBuilder.create_from(str(folder), str(outputs["rtstruct"]))
    ds = structure.ds
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == uids["study"]
    assert structure.frame_of_reference_uid == uids["frame"]
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == uids["series"]
    order = series_uids_in_order(folder)
    assert {item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence} == set(order)
    assert all(roi.ReferencedFrameOfReferenceUID == uids["frame"] for roi in ds.StructureSetROISequence)

    catalog = Catalog.load()
    seg_names = [hd.seg.segread(str(outputs["dicom-seg"])).get_segment_description(n).SegmentLabel
                 for n in range(1, 8)]
    assert structure.get_roi_names() == seg_names  # same structures, same order as the label values
    slices = [order.index(s.SOPInstanceUID) for s in structure.series_data]
    for value, name in enumerate(structure.get_roi_names(), start=1):
        expected = np.transpose(labels[slices] == value, (1, 2, 0))
        mask = structure.get_roi_mask_by_name(name)
        dice = 2 * np.logical_and(mask, expected).sum() / (mask.sum() + expected.sum())
        assert dice >= 0.95, (name, dice)
        task = next(t for t in catalog.group(GROUP) if t.name == name)
        roi = ds.ROIContourSequence[value - 1]
        assert [int(c) for c in roi.ROIDisplayColor] == list(task.color)
        observation = ds.RTROIObservationsSequence[value - 1]
        assert observation.RTROIInterpretedType == "ORGAN"
        assert observation.RTROIIdentificationCodeSequence[0].CodeValue == task.type.value


def test_non_dicom_input_with_a_dicom_format_is_a_clear_error(tmp_path, capsys):
    for fmt, name in (("dicom-seg", "seg.dcm"), ("rtstruct", "rs.dcm")):
        assert main(["segment", str(SAMPLE), "-o", str(tmp_path / name), "--format", fmt, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "needs a DICOM series folder" in err, err
    assert not list(tmp_path.iterdir())


def test_output_format_from_extension_and_mismatch():
    assert output_format("a.nii.gz") == "nifti" and output_format("a.seg.nrrd") == "nrrd"
    assert output_format("a.dcm") == "dicom-seg" and output_format("a.rtstruct.dcm") == "rtstruct"
    assert output_format("a.dcm", "rtstruct") == "rtstruct"
    for path, fmt in (("a.nii.gz", "dicom-seg"), ("a.dcm", "nifti"), ("a.seg.nrrd", "nifti"), ("a.txt", None)):
        with pytest.raises(OutputError):
            output_format(path, fmt)


def test_existing_dicom_output_is_kept_without_overwrite(ct_series, outputs, capsys):
    folder, _ = ct_series
    before = outputs["dicom-seg"].read_bytes()
    assert main(["segment", str(folder), "-o", str(outputs["dicom-seg"]), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert outputs["dicom-seg"].read_bytes() == before
