"""What the widget asks for, and its validation into a run a worker thread can take.

Validation reads the scene but never changes it: every problem a user can fix is raised as a
:class:`~UniversalSegLib.errors.UniversalSegError` before anything happens::

    >>> request = SegmentationRequest(volume, tasks=["mandible"], modality="CT")   # doctest: +SKIP
    >>> run = validate_request(request, Catalog.load(), DEPENDENCIES)  # or InputError, ...  # doctest: +SKIP
    >>> run.image, run.tasks, run.device          # a copied image, catalog tasks, "cpu" or "cuda"  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..api import DEFAULT_MODEL
from ..catalog import Catalog, Modality, Task
from ..errors import CatalogError, CheckpointError, InputError
from ..inference import InferenceOptions
from ..volume import check_volume
from .dependencies import Dependency, dependency_error, missing_dependencies
from .modality import guess_modality
from .nodes import BINARY_LABELMAP, ijk_to_ras, image_from_volume_node, source_representation
from .roi import RoiBox, crop, prepare_roi


@dataclass
class SegmentationRequest:
    """What the widget asks for.

    ``tasks`` are catalog ids (or names); ``modality`` ``None`` takes :func:`guess_modality`; ``model``
    ``None`` is the bundled model (``""``: a checkpoint was to be chosen but was not); ``device`` is
    ``"auto"``, ``"cpu"`` or ``"cuda"`` (``"gpu"``); ``segmentation`` ``None`` creates a new node;
    ``replace_existing=False`` adds new segments beside existing segments of the same tasks.
    """

    volume: object
    tasks: Sequence[str] = ()
    modality: str | None = None
    model: str | Path | None = None
    device: str = "auto"
    segmentation: object | None = None
    replace_existing: bool = True
    options: InferenceOptions | None = None
    roi: object | None = None  # a vtkMRMLMarkupsROINode: segment only inside it (see roi.py)


@dataclass
class PreparedRun:
    """A validated request with the input copied out of the scene (safe to hand to a worker thread)."""

    image: sitk.Image
    ijk_to_ras: np.ndarray
    volume_id: str
    volume_name: str
    tasks: list[Task]
    modality: Modality
    modality_source: str
    model: Path | None
    device: str
    segmentation_id: str | None
    replace_existing: bool
    options: InferenceOptions
    warnings: list[str] = field(default_factory=list)
    roi: RoiBox | None = None  # set: ``image`` is the crop to the ROI; the labels are pasted back on apply


def resolve_device(requested: str) -> tuple[str, list[str]]:
    """("cpu" | "cuda", warnings): "auto" takes the GPU when usable; a GPU asked for but absent falls back to CPU.

    >>> resolve_device("cpu")
    ('cpu', [])
    """
    wanted = (requested or "auto").strip().lower()
    wanted = "cuda" if wanted in ("gpu", "cuda") else wanted
    if wanted == "cpu":
        return "cpu", []
    if wanted not in ("auto", "cuda"):
        raise InputError(f"unknown device '{requested}'", "choose auto, CPU or GPU")
    import torch

    if torch.cuda.is_available():
        return "cuda", []
    if wanted == "auto":
        return "cpu", []
    return "cpu", ["A GPU was asked for but CUDA is not available here (no NVIDIA GPU, or a CPU-only torch): "
                   "segmenting on the CPU instead (slower). To use a GPU, reinstall torch with the PyTorch "
                   "extension on a computer with an NVIDIA GPU."]


def validate_request(request: SegmentationRequest, catalog: Catalog,
                     dependencies: Sequence[Dependency]) -> PreparedRun:
    """Check a request and copy its input out of the scene; raise :class:`UniversalSegError` if it is bad."""
    volume = request.volume
    check_volume_node(volume)
    name = volume.GetName()
    if not request.tasks:
        raise InputError("no structure is chosen", "tick at least one structure or group under 'Structures'")
    if request.modality:
        modality, source = catalog.modality(request.modality), "chosen"
    else:
        guess = guess_modality(volume, catalog)
        modality, source = catalog.modality(guess.modality), guess.source
    tasks = list(dict.fromkeys(catalog.task(key) for key in request.tasks))
    wrong = [t for t in tasks if not t.applies_to(modality.id)]
    if wrong:
        listed = "; ".join(f"{t.name} ({', '.join(t.modalities)})" for t in wrong)
        raise CatalogError(f"{listed}: not defined for {modality.id} images",
                           f"choose structures listed for {modality.id}, or correct the modality "
                           f"if the volume is not {modality.id}")
    missing = missing_dependencies(dependencies)
    if missing:
        raise dependency_error(missing)
    model = _checkpoint(request.model)
    output = request.segmentation
    if output is not None:
        source_name = source_representation(output.GetSegmentation())
        if source_name and source_name != BINARY_LABELMAP and output.GetSegmentation().GetNumberOfSegments():
            raise InputError(f"output segmentation '{output.GetName()}' stores {source_name.lower()}s",
                             "choose a new output segmentation (or one edited as a binary labelmap)")
    device, warnings = resolve_device(request.device)
    image = image_from_volume_node(volume)
    check_volume(image, name)
    box = prepare_roi(volume, request.roi) if request.roi is not None else None
    if box is not None:
        image = crop(image, box)
        check_volume(image, f"{name} inside the ROI '{box.roi_name}'")
    return PreparedRun(
        image=image, ijk_to_ras=ijk_to_ras(volume), volume_id=volume.GetID(), volume_name=name, tasks=tasks,
        modality=modality, modality_source=source, model=model, device=device,
        segmentation_id=output.GetID() if output is not None else None,
        replace_existing=request.replace_existing, options=request.options or InferenceOptions(),
        warnings=warnings, roi=box)


def check_volume_node(volume) -> None:
    """Raise :class:`InputError` unless ``volume`` is a 3D grey-level volume node with voxels."""
    if volume is None:
        raise InputError("no input volume is selected",
                         "choose a volume in 'Input volume' (load one with File > Add Data or Sample Data)")
    name = volume.GetName()
    if volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{name}' is a label map (a segmentation), not an image",
                         "choose the grey-level image it was drawn on")
    if not volume.IsA("vtkMRMLVolumeNode") or volume.GetImageData() is None:
        raise InputError(f"'{name}' is not an image volume with voxels",
                         "choose a CT, MR, PET or ultrasound volume")
    components = volume.GetImageData().GetNumberOfScalarComponents()
    if components != 1 or not volume.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{name}' has {components} values per voxel (a 4D, vector or colour volume)",
                         "give one 3D grey-level volume: pick one time point of a sequence (Sequences module) "
                         "or extract one component first (Vector to Scalar Volume module)")
    dims = volume.GetImageData().GetDimensions()
    if min(dims) < 2:
        raise InputError(f"'{name}' is 2D (size {' x '.join(map(str, dims))}); a 3D volume is needed",
                         "load the whole series (all slices) as one volume")


def _checkpoint(requested: str | Path | None) -> Path | None:
    """The checkpoint to run (``None``: the bundled model), raising when it is missing."""
    if requested is not None and not str(requested).strip():
        raise CheckpointError("no checkpoint file is chosen", "choose one under 'Model', or use the bundled model")
    model = Path(requested) if requested is not None else None
    if model is not None and not model.is_file():
        raise CheckpointError(f"model checkpoint '{model}' does not exist",
                              "choose an existing checkpoint file (.pt/.pth), or use the bundled model")
    if model is None and not DEFAULT_MODEL.is_file():
        raise CheckpointError("the bundled model is not installed",
                              "choose a checkpoint file under 'Model', or reinstall the extension")
    return model
