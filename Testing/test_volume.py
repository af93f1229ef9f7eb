"""Reading every supported format with its geometry, DICOM series included; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.errors import InputError, OutputError
from UniversalSegLib.volume import atomic_write, read_image, same_grid, write_image


def oblique_ct() -> sitk.Image:
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray((rng.normal(0, 300, (6, 20, 24))).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-12.0, 30.5, 100.0))
    angle = np.deg2rad(10)
    image.SetDirection([np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1])
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_file_formats_keep_voxels_and_geometry(tmp_path, suffix):
    image = oblique_ct()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    loaded, info = read_image(path)
    assert info.name == path.name
    assert same_grid(loaded, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image))


def write_dicom_series(image: sitk.Image, folder, modality: str = "CT", description: str = "HEAD NECK",
                       series_uid: str = "1.2.3.4.5", prefix: str = "slice") -> None:
    """One file per slice with the tags a scanner writes (position, orientation, spacing, modality)."""
    folder.mkdir(exist_ok=True)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                  direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in (("0008|0060", modality), ("0008|103e", description), ("0020|000e", series_uid),
                           ("0020|000d", "1.2.3.4"), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0020|0013", str(k + 1)), ("0018|0050", f"{image.GetSpacing()[2]:.6f}")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder_keeps_geometry_and_tags(tmp_path):
    image = oblique_ct()
    write_dicom_series(image, tmp_path / "series")
    loaded, info = read_image(tmp_path / "series")
    assert info.dicom_modality == "CT" and info.description == "HEAD NECK"
    assert loaded.GetSize() == image.GetSize()
    assert np.allclose(loaded.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(loaded.GetSpacing(), image.GetSpacing(), atol=1e-3)
    assert np.allclose(loaded.GetDirection(), image.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image))


def test_empty_folder_and_two_series_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    image = oblique_ct()
    write_dicom_series(image, tmp_path / "two")
    write_dicom_series(image, tmp_path / "two", series_uid="1.2.3.4.6", prefix="other")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_image(tmp_path / "two")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    write_image(oblique_ct(), target)
    assert same_grid(sitk.ReadImage(str(target)), oblique_ct())
    with pytest.raises(OutputError, match="is a folder"):
        write_image(oblique_ct(), tmp_path)
