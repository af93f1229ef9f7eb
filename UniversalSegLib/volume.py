"""Reading, checking and writing images, keeping their geometry.

Everything an image is read from (a NIfTI, NRRD or MHA file, a DICOM series folder) becomes a
SimpleITK image with its origin, spacing and direction untouched; :func:`check_volume` rejects
what the network cannot segment with a message that says what to do; :func:`atomic_write` makes
every output appear whole or not at all.

>>> image = read_image("../shared/data/smoke/images/spleen_ct.nii.gz")  # doctest: +SKIP
>>> image.GetSize()  # doctest: +SKIP
(164, 166, 26)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError

DICOM_MODALITY_TAG = "0008|0060"
DICOM_SERIES_DESCRIPTION_TAG = "0008|103e"


@dataclass
class ImageInfo:
    """What the file itself says about an image, used to guess its modality.

    ``dicom_modality`` and ``description`` come from DICOM tags when the input is a series;
    ``name`` is the file or folder name.
    """

    name: str
    dicom_modality: str | None = None
    description: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def read_image(path: str | Path) -> tuple[sitk.Image, ImageInfo]:
    """Read a 3D image file or DICOM series folder; raise :class:`InputError` if that fails.

    The image is checked with :func:`check_volume` before it is returned.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input image '{path}' does not exist", "check the path")
    info = ImageInfo(name=path.name)
    try:
        if path.is_dir():
            image = _read_dicom_series(path, info)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reason"
        raise InputError(
            f"cannot read '{path}' as an image ({reason})",
            "give a NIfTI (.nii/.nii.gz), NRRD (.nrrd), MetaImage (.mha/.mhd) file or a DICOM series folder "
            "that opens in another viewer",
        ) from None
    check_volume(image, str(path))
    return image, info


def _read_dicom_series(folder: Path, info: ImageInfo) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"folder '{folder}' holds no DICOM series", "give a folder with the .dcm files of one series")
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    if len(series_ids) > 1:
        sizes = ", ".join(f"{sid} ({len(files)} files)" for sid, files in files_per_series.items())
        raise InputError(
            f"folder '{folder}' holds {len(series_ids)} DICOM series: {sizes}",
            "put each series in a folder of its own and give one of them",
        )
    files = files_per_series[series_ids[0]]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    image = reader.Execute()
    for tag, attr in ((DICOM_MODALITY_TAG, "dicom_modality"), (DICOM_SERIES_DESCRIPTION_TAG, "description")):
        if reader.HasMetaDataKey(0, tag):
            setattr(info, attr, reader.GetMetaData(0, tag).strip())
    return image


def check_volume(image: sitk.Image, name: str = "input image") -> None:
    """Raise :class:`InputError` unless ``image`` is a finite, non-constant, scalar 3D volume."""
    size = image.GetSize()
    if image.GetDimension() != 3:
        kind = "2D" if image.GetDimension() == 2 else f"{image.GetDimension()}D"
        raise InputError(
            f"'{name}' is {kind} (size {' x '.join(map(str, size))}); a 3D volume is needed",
            "give one 3D volume (for a 4D series, extract one time point or channel first)",
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"'{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image)",
            "give a single-channel (grey-level) 3D volume",
        )
    if min(size) < 2:
        raise InputError(
            f"'{name}' is a single slice (size {' x '.join(map(str, size))}); a 3D volume is needed",
            "give a volume with at least two voxels along every axis",
        )
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(
                f"'{name}' has {int(bad.sum())} NaN or infinite voxels",
                "replace them (for example with the background value) before segmenting",
            )
    if array.size == 0 or array.min() == array.max():
        value = array.flat[0] if array.size else "nothing"
        raise InputError(
            f"'{name}' is empty or constant (every voxel is {value})",
            "check that the right image was exported; there is nothing to segment",
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (weights, dataset files, manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """Whether two images share size, spacing, origin and direction (to ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def _suffix(path: Path) -> str:
    """The full extension, so that SimpleITK picks the same writer for a temporary name."""
    for double in (".nii.gz", ".seg.nrrd"):
        if path.name.lower().endswith(double):
            return double
    return path.suffix


def check_writable(path: str | Path) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or replaced."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path '{path}' is a folder", "give a file name such as result.nii.gz")
    if not parent.is_dir():
        raise OutputError(f"output folder '{parent}' does not exist", "create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder '{parent}' is not writable", "choose a folder you can write to")
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    >>> with atomic_write("result.nii.gz") as tmp:  # doctest: +SKIP
    ...     sitk.WriteImage(labels, str(tmp))
    """
    path = check_writable(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{_suffix(path)}", dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain write would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write ``image`` atomically; the format follows the extension of ``path``."""
    with atomic_write(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as err:
            raise OutputError(f"cannot write '{path}': {str(err).strip().splitlines()[-1]}",
                              "check the extension (.nii.gz, .nrrd, .mha) and free disk space") from None
