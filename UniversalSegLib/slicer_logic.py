"""The MRML adapter: a Slicer volume node in, segments in a segmentation node out (imports slicer, never Qt).

Path of the data::

    vtkMRMLScalarVolumeNode --(array (k, j, i) + IJK-to-RAS, RAS -> LPS)--> sitk.Image
        --(UniversalSegLib.api.segment, in a worker thread, with progress and cancel)--> label map 1..N
        --(main thread, only after success)--> one segment per task in a vtkMRMLSegmentationNode
           (catalog name, colour, terminology entry, reference geometry of the input,
            placed in the input's subject-hierarchy study)

The input volume node is never modified. A segment of the same task that already exists is replaced
only after its previous state was kept on this logic's undo stack (or the new one is added beside it).
Every problem a user can fix is raised as a :class:`~UniversalSegLib.errors.UniversalSegError` before
anything in the scene changes.

Usage (Slicer's Python console, or a test with the ``slicer-core`` wheel)::

    >>> logic = SlicerSegmentationLogic(slicer.mrmlScene)  # doctest: +SKIP
    >>> request = SegmentationRequest(volume, tasks=["mandible", "brainstem"], modality="CT")  # doctest: +SKIP
    >>> job = logic.start(request)        # validates (raises UniversalSegError), then runs in a thread
    >>> job.poll().text                   # from a QTimer: "Running the network (40%)"  # doctest: +SKIP
    >>> applied = logic.apply(job)        # main thread, once job.poll().state == "succeeded"  # doctest: +SKIP
    >>> applied.message                   # doctest: +SKIP
    '2 structures segmented in 4.1 s (CT, CPU)'
    >>> logic.undo()                      # puts back what the run replaced  # doctest: +SKIP

``logic.run(request)`` does start + wait + apply in one blocking call (self-tests, scripts).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

from .api import CT_MINIMUM_HU, DEFAULT_MODEL
from .catalog import Catalog, Modality, Task
from .errors import CancelledError, CatalogError, CheckpointError, InputError, UniversalSegError
from .inference import InferenceOptions, SegmentationResult
from .volume import check_volume, same_grid

__all__ = [
    "AppliedSegmentation", "Dependency", "DependencyError", "JobStatus", "ModalityGuess", "SegmentationJob",
    "SegmentationRequest", "SlicerSegmentationLogic", "dice", "guess_modality", "ijk_to_ras_from_image",
    "image_from_volume_node", "missing_dependencies", "pip_arguments", "segment_arrays", "task_groups",
    "volume_node_from_image",
]

TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment.GetTerminologyEntryTagName()
TASK_TAG = "UniversalSeg.TaskId"
MODEL_TAG = "UniversalSeg.Model"
#: Flips the first two axes: RAS (Slicer) <-> LPS (ITK). Its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MIN_WINDOW = 32
#: Parts of the overall progress bar each engine stage fills (start, end).
STAGE_SPAN = {"queued": (0.0, 0.0), "load": (0.0, 0.1), "prepare": (0.1, 0.2), "infer": (0.2, 0.9),
              "postprocess": (0.9, 1.0), "done": (1.0, 1.0)}
STAGE_TEXT = {"queued": "Waiting to start", "load": "Loading the model", "prepare": "Preparing the image",
              "infer": "Running the network", "postprocess": "Building the segments", "done": "Done"}
_BINARY = "Binary labelmap"


# --------------------------------------------------------------------------------------------- dependencies
@dataclass(frozen=True)
class Dependency:
    """A Python package the engine needs: import name, pip requirement and how it gets installed.

    ``route`` is ``"pytorch"`` (the PyTorch extension's PyTorchUtils picks the build for this computer's
    GPU), ``"pip"`` (``slicer.util.pip_install`` from ``Resources/requirements.txt``) or ``"slicer"``
    (bundled with Slicer; missing only in a broken installation).
    """

    module: str
    requirement: str
    route: str


DEPENDENCIES = (
    Dependency("torch", "torch", "pytorch"),
    Dependency("monai", "monai==1.6.1", "pip"),
    Dependency("SimpleITK", "SimpleITK", "slicer"),
    Dependency("numpy", "numpy", "slicer"),
)


class DependencyError(UniversalSegError):
    """Python packages the engine needs are not installed in Slicer's Python."""


def missing_dependencies(dependencies: Sequence[Dependency] = DEPENDENCIES) -> list[Dependency]:
    """The dependencies that cannot be imported (checked without importing them, so it is fast).

    >>> missing_dependencies([Dependency("surely_absent_pkg", "surely-absent-pkg==1.0", "pip")])[0].module
    'surely_absent_pkg'
    """
    importlib.invalidate_caches()  # packages installed since the last check must be found
    return [dep for dep in dependencies if importlib.util.find_spec(dep.module) is None]


def pip_arguments(requirements: str | Path, wheel_folder: str | Path | None = None) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list, so paths with spaces survive).

    With ``wheel_folder`` the install is offline: pip looks only in that folder of ``.whl`` files.

    >>> pip_arguments("req.txt", "/media/wheels")
    ['--no-index', '--find-links', '/media/wheels', '-r', 'req.txt']
    """
    offline = ["--no-index", "--find-links", str(wheel_folder)] if wheel_folder else []
    return [*offline, "-r", str(requirements)]


def dependency_error(missing: Sequence[Dependency], requirements: str | Path = "Resources/requirements.txt") -> \
        DependencyError:
    """The error naming what is missing, what to install and the online and offline routes."""
    names = ", ".join(dep.requirement for dep in missing)
    steps = []
    if any(dep.route == "pytorch" for dep in missing):
        steps.append("install the PyTorch extension (Extension Manager), restart Slicer, and let UniversalSeg "
                     "install torch through it (PyTorchUtils picks the CUDA or CPU build for this computer)")
    if any(dep.route == "pip" for dep in missing):
        steps.append(f"accept the install UniversalSeg offers (pip install -r {requirements}); offline, download "
                     f"the wheels on another computer (pip download -r {requirements} -d wheels) and run in "
                     f"Slicer's Python console: slicer.util.pip_install(['--no-index', '--find-links', "
                     f"'<wheels folder>', '-r', '{requirements}'])")
    if any(dep.route == "slicer" for dep in missing):
        steps.append("reinstall 3D Slicer: this package ships with it")
    return DependencyError(f"Python packages missing in Slicer: {names}", "; ".join(steps))


# ----------------------------------------------------------------------------------------------- geometry
def ijk_to_ras(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as an array (the parent transform is not included)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_volume_node(node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image in LPS, with the same physical geometry.

    ``arrayFromVolume`` is indexed (k, j, i), which is SimpleITK's (z, y, x) order; spacing, direction and
    origin come from the IJK-to-RAS matrix with its first two rows negated (RAS -> LPS).
    """
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    lps = RAS_TO_LPS @ ijk_to_ras(node)
    extent = node.GetImageData().GetExtent()
    start = np.array([extent[0], extent[2], extent[4], 1.0])  # a volume whose extent does not start at 0
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (linear / spacing).ravel()])
    image.SetOrigin([float(v) for v in (lps @ start)[:3]])
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image (its LPS geometry with the first two rows negated)."""
    lps = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps[:3, :3] = direction * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return RAS_TO_LPS @ lps


def volume_node_from_image(image: sitk.Image, name: str = "volume", scene=None, labelmap: bool = False):
    """A new scalar (or label-map) volume node holding ``image`` with its geometry (for tests and scripts)."""
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_image(image)))
    return node


def _oriented_image(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A ``vtkOrientedImageData`` (unsigned char) holding a (k, j, i) array on the given grid."""
    image = slicer.vtkOrientedImageData()
    k, j, i = array.shape
    image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.astype(np.uint8, copy=False).ravel()
    return image


def segment_arrays(segmentation_node, segment_ids: Sequence[str], reference_volume) -> np.ndarray:
    """The segments as one (k, j, i) label array on ``reference_volume``'s grid (value i+1 = segment_ids[i]).

    Does not add nodes to the scene (unlike exporting to a label-map node).
    """
    ids = vtk.vtkStringArray()
    values = vtk.vtkIntArray()
    for value, segment_id in enumerate(segment_ids, start=1):
        ids.InsertNextValue(segment_id)
        values.InsertNextValue(value)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node, reference_volume, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, merged, values)
    k, j, i = slicer.util.arrayFromVolume(reference_volume).shape[:3]
    return numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(k, j, i).copy()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 when both are empty).

    >>> dice(np.array([1, 1, 0]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# ----------------------------------------------------------------------------------------------- modality
class ModalityGuess(NamedTuple):
    """The pre-selected modality id and where it came from: ``"DICOM"``, ``"name"`` or ``"intensity"``."""

    modality: str
    source: str


def dicom_tags(node) -> tuple[str | None, str | None]:
    """(DICOM Modality, Series Description) of a volume loaded from DICOM, else ``(None, None)``.

    Looks at the subject-hierarchy item (``DICOM.Modality``, set by Slicer's DICOM plugins) and, inside the
    Slicer application, at the DICOM database through the node's ``DICOM.instanceUIDs`` attribute.
    """
    modality = description = None
    scene = node.GetScene()
    sh = scene.GetSubjectHierarchyNode() if scene is not None else None
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:
        modality = sh.GetItemAttribute(item, "DICOM.Modality") or None
        description = sh.GetItemAttribute(item, "DICOM.SeriesDescription") or None
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if uids and database is not None and (modality is None or description is None):
        try:
            path = database.fileForInstance(uids[0])
            modality = modality or database.fileValue(path, "0008,0060") or None
            description = description or database.fileValue(path, "0008,103E") or None
        except Exception:  # noqa: BLE001 - a database without the file: fall back to the other clues
            pass
    return modality, description


def guess_modality(node, catalog: Catalog | None = None) -> ModalityGuess:
    """Pre-select a modality: DICOM tags, else the node name, else intensities (min <= -500 -> CT, else MR)."""
    catalog = catalog or Catalog.load()
    dicom_modality, description = dicom_tags(node)
    if dicom_modality or description:
        found = catalog.guess_modality(dicom_modality, description or node.GetName())
        if found is not None:
            return ModalityGuess(found.id, "DICOM")
    found = catalog.guess_modality(None, node.GetName())
    if found is not None:
        return ModalityGuess(found.id, "name")
    array = slicer.util.arrayFromVolume(node)
    return ModalityGuess("CT" if array.size and float(array.min()) <= CT_MINIMUM_HU else "MR", "intensity")


def task_groups(modality: str, catalog: Catalog | None = None) -> list[tuple[str, list[Task]]]:
    """The task selector's content: (group display name, its tasks that apply to ``modality``), catalog order."""
    catalog = catalog or Catalog.load()
    groups: dict[str, list[Task]] = {}
    for task in catalog.tasks_for(modality):
        groups.setdefault(task.group_name or task.group, []).append(task)
    return list(groups.items())


# ---------------------------------------------------------------------------------------------- requests
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


@dataclass
class JobStatus:
    """A snapshot of a job for the widget: ``state`` is running, succeeded, failed or cancelled."""

    state: str
    stage: str
    fraction: float
    text: str
    warnings: list[str]
    error: UniversalSegError | None
    elapsed: float

    @property
    def finished(self) -> bool:
        return self.state != "running"


@dataclass
class AppliedSegmentation:
    """What :meth:`SlicerSegmentationLogic.apply` changed, and the status line to show."""

    segmentation: object
    segment_ids: list[str]
    replaced_ids: list[str]
    created_node: bool
    warnings: list[str]
    seconds: float
    message: str


SegmentFunction = Callable[..., SegmentationResult]


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


class SegmentationJob:
    """The engine running in a background thread; ``poll()`` it from the GUI thread, ``cancel()`` to stop it.

    Out of memory is handled here: on the GPU the run is repeated on the CPU, on the CPU with smaller
    sliding windows (down to 32 voxels); each retry adds a warning. ``listener(stage, fraction)`` is called
    from the worker thread on every progress report (the widget polls instead).
    """

    def __init__(self, run: PreparedRun, segment: SegmentFunction, catalog: Catalog,
                 listener: Callable[[str, float], None] | None = None) -> None:
        self.run = run
        self._segment = segment
        self._catalog = catalog
        self._listener = listener
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state = "running"
        self._stage, self._fraction = "queued", 0.0
        self._warnings = list(run.warnings)
        self._error: UniversalSegError | None = None
        self._started = time.perf_counter()
        self._ended: float | None = None
        self.result: SegmentationResult | None = None
        self.device = run.device
        self.applied = False
        self._thread = threading.Thread(target=self._work, name="UniversalSeg", daemon=True)

    def start(self) -> SegmentationJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next window; the scene is left as it was."""
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> JobStatus:
        self._thread.join(timeout)
        return self.poll()

    def poll(self) -> JobStatus:
        with self._lock:
            start, end = STAGE_SPAN.get(self._stage, (0.0, 1.0))
            overall = 1.0 if self._state == "succeeded" else start + (end - start) * self._fraction
            text = STAGE_TEXT.get(self._stage, self._stage.capitalize())
            if self._state == "running":
                text = f"{text} ({round(100 * self._fraction)}%)" if self._stage == "infer" else text
                if self._cancel.is_set():
                    text = "Cancelling..."
            elif self._state == "cancelled":
                text = "Cancelled: nothing was changed"
            elif self._state == "failed":
                text = f"Failed: {self._error}"
            elapsed = (self._ended or time.perf_counter()) - self._started
            return JobStatus(self._state, self._stage, overall, text, list(self._warnings), self._error, elapsed)

    # ------------------------------------------------------------------ worker thread
    def _report(self, stage: str, fraction: float) -> None:
        with self._lock:
            self._stage, self._fraction = stage, float(fraction)
        if self._listener is not None:
            self._listener(stage, fraction)

    def _finish(self, state: str, error: UniversalSegError | None = None) -> None:
        with self._lock:
            self._state, self._error, self._ended = state, error, time.perf_counter()
            if state == "succeeded":
                self._stage, self._fraction = "done", 1.0

    def _work(self) -> None:
        options = self.run.options
        while True:
            try:
                if self._cancel.is_set():
                    raise CancelledError("segmentation cancelled", "press Segment to run it again")
                self._report("load", 0.0)
                result = self._segment(
                    self.run.image, tasks=[t.id for t in self.run.tasks], modality=self.run.modality.id,
                    model=self.run.model, device=self.device, options=options, progress=self._report,
                    cancel=self._cancel.is_set, catalog=self._catalog)
                if not same_grid(result.labels, self.run.image):
                    raise UniversalSegError("the engine returned a label map on another grid than the input",
                                            "report this as a bug with the volume's size and spacing")
                self.result = result
                self._finish("succeeded")
                return
            except CancelledError as err:
                self._finish("cancelled", err)
                return
            except UniversalSegError as err:
                self._finish("failed", err)
                return
            except (RuntimeError, MemoryError) as err:
                if not _out_of_memory(err):
                    self._finish("failed", _unexpected(err))
                    return
                try:
                    options = self._after_out_of_memory(options)
                except UniversalSegError as final:
                    self._finish("failed", final)
                    return
            except Exception as err:  # noqa: BLE001 - any engine bug must end the job, not hang the GUI
                self._finish("failed", _unexpected(err))
                return

    def _after_out_of_memory(self, options: InferenceOptions) -> InferenceOptions:
        """The settings to retry with after running out of memory, with a warning saying so."""
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
            self.device = "cpu"
            self._warn("The GPU ran out of memory: segmenting on the CPU instead (slower). "
                       "A GPU with more memory, or closing other GPU programs, avoids this.")
            return options
        window = options.window or self._model_window()
        smaller = tuple(max(MIN_WINDOW, (w // 2) // 16 * 16) for w in window)
        if tuple(window) == smaller and options.batch_size == 1:
            raise UniversalSegError(
                f"out of memory on the CPU even with {'x'.join(map(str, smaller))}-voxel windows",
                "close other programs, crop the volume to the region of interest (Crop Volume module), "
                "or use a computer with more memory")
        self._warn(f"Out of memory: retrying with smaller sliding windows ({'x'.join(map(str, smaller))} voxels, "
                   "one at a time); results may differ slightly near window borders.")
        return InferenceOptions(window=smaller, overlap=options.overlap, batch_size=1, blend=options.blend,
                                threshold=options.threshold, keep_largest=options.keep_largest)

    def _model_window(self) -> tuple[int, int, int]:
        from .api import load_model

        segmenter = load_model(self.run.model, device="cpu", catalog=self._catalog)
        return tuple(int(w) for w in segmenter.loaded.inference.get("patch_size", (96, 96, 96)))

    def _warn(self, text: str) -> None:
        with self._lock:
            self._warnings.append(text)


def _unexpected(err: BaseException) -> UniversalSegError:
    return UniversalSegError(f"segmentation failed ({type(err).__name__}: {err})",
                             "see the Python console for details and report it with the volume's size and spacing")


# ------------------------------------------------------------------------------------------------- undo
@dataclass
class _SavedSegment:
    segment_id: str
    index: int
    metadata: object  # vtkSegment with name, colour, tags (no representation)
    labelmap: object  # vtkOrientedImageData, 0/1, the segment's own copy


@dataclass
class _UndoEntry:
    segmentation_id: str
    created_node: bool
    added: list[str]
    saved: list[_SavedSegment]
    description: str


# ------------------------------------------------------------------------------------------------- logic
class SlicerSegmentationLogic:
    """Validates requests, runs the engine in the background and writes results into the MRML scene.

    ``segment`` is the engine call (``UniversalSegLib.api.segment``); tests may wrap it (to inject a failure),
    the module passes nothing. ``refiner`` is the hook for the Refine button (``None``: not available).
    """

    def __init__(self, scene=None, catalog: Catalog | None = None, segment: SegmentFunction | None = None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.catalog = catalog or Catalog.load()
        if segment is None:
            from .api import segment
        self._segment = segment
        self._undo: list[_UndoEntry] = []
        self.refiner: Callable[..., object] | None = None
        self.dependencies: Sequence[Dependency] = DEPENDENCIES
        _ensure_converter_rules()

    # ------------------------------------------------------------------ validation (no scene change)
    def validate(self, request: SegmentationRequest) -> PreparedRun:
        """Check a request and copy its input out of the scene; raise :class:`UniversalSegError` if it is bad."""
        volume = request.volume
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
        if not request.tasks:
            raise InputError("no structure is chosen", "tick at least one structure or group under 'Structures'")
        if request.modality:
            modality, source = self.catalog.modality(request.modality), "chosen"
        else:
            guess = guess_modality(volume, self.catalog)
            modality, source = self.catalog.modality(guess.modality), guess.source
        tasks = list(dict.fromkeys(self.catalog.task(key) for key in request.tasks))
        wrong = [t for t in tasks if not t.applies_to(modality.id)]
        if wrong:
            listed = "; ".join(f"{t.name} ({', '.join(t.modalities)})" for t in wrong)
            raise CatalogError(f"{listed}: not defined for {modality.id} images",
                               f"choose structures listed for {modality.id}, or correct the modality "
                               f"if the volume is not {modality.id}")
        missing = missing_dependencies(self.dependencies)
        if missing:
            raise dependency_error(missing)
        if request.model is not None and not str(request.model).strip():
            raise CheckpointError("no checkpoint file is chosen", "choose one under 'Model', or use the bundled model")
        model = Path(request.model) if request.model is not None else None
        if model is not None and not model.is_file():
            raise CheckpointError(f"model checkpoint '{model}' does not exist",
                                  "choose an existing checkpoint file (.pt/.pth), or use the bundled model")
        if model is None and not DEFAULT_MODEL.is_file():
            raise CheckpointError("the bundled model is not installed",
                                  "choose a checkpoint file under 'Model', or reinstall the extension")
        output = request.segmentation
        if output is not None:
            source_name = _source_representation(output.GetSegmentation())
            if source_name and source_name != _BINARY and output.GetSegmentation().GetNumberOfSegments():
                raise InputError(f"output segmentation '{output.GetName()}' stores {source_name.lower()}s",
                                 "choose a new output segmentation (or one edited as a binary labelmap)")
        device, warnings = resolve_device(request.device)
        image = image_from_volume_node(volume)
        check_volume(image, name)
        return PreparedRun(
            image=image, ijk_to_ras=ijk_to_ras(volume), volume_id=volume.GetID(), volume_name=name, tasks=tasks,
            modality=modality, modality_source=source, model=model, device=device,
            segmentation_id=output.GetID() if output is not None else None,
            replace_existing=request.replace_existing, options=request.options or InferenceOptions(),
            warnings=warnings)

    # ------------------------------------------------------------------ running
    def start(self, request: SegmentationRequest,
              listener: Callable[[str, float], None] | None = None) -> SegmentationJob:
        """Validate ``request`` (raising on bad input, scene untouched) and start the engine in a thread."""
        run = self.validate(request)
        return SegmentationJob(run, self._segment, self.catalog, listener).start()

    def run(self, request: SegmentationRequest) -> AppliedSegmentation:
        """Blocking: start, wait, apply. Raises the job's error (cancelled, failed) without changing the scene."""
        job = self.start(request)
        job.wait()
        return self.apply(job)

    def apply(self, job: SegmentationJob) -> AppliedSegmentation:
        """Write a finished job's result into the scene (main thread only) and push an undo entry."""
        status = job.poll()
        if status.state == "running":
            raise UniversalSegError("the segmentation is still running", "wait for it to finish or cancel it")
        if status.error is not None:
            raise status.error
        if job.applied:
            raise UniversalSegError("this result was already added to the scene", "press Segment to run again")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("SlicerSegmentationLogic.apply must be called from the main (GUI) thread")
        run, result = job.run, job.result
        volume = self.scene.GetNodeByID(run.volume_id)
        if volume is None:
            raise InputError(f"the input volume '{run.volume_name}' was removed while it was being segmented",
                             "load it again and press Segment")
        node = self.scene.GetNodeByID(run.segmentation_id) if run.segmentation_id else None
        entry = _UndoEntry(segmentation_id="", created_node=node is None, added=[], saved=[],
                           description=f"UniversalSeg on '{run.volume_name}'")
        try:
            if node is None:
                node = self._new_segmentation_node(volume)
            entry.segmentation_id = node.GetID()
            self._write_segments(node, volume, run, result, entry)
        except BaseException:
            self._revert(entry)  # leave the scene as it was
            raise
        job.applied = True
        self._undo.append(entry)
        warnings = status.warnings
        message = (f"{len(entry.added)} structure{'s' if len(entry.added) != 1 else ''} segmented in "
                   f"{result.seconds:.1f} s ({run.modality.id}, {job.device.upper()})")
        if entry.saved:
            message += f"; replaced {len(entry.saved)} (Undo restores them)"
        return AppliedSegmentation(node, list(entry.added), [s.segment_id for s in entry.saved],
                                   entry.created_node, warnings, result.seconds,
                                   " ".join([message + "."] + warnings))

    # ------------------------------------------------------------------ undo
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> str | None:
        """Revert the last applied result: remove its segments (or its new node), restore what it replaced.

        Returns a description of what was undone, ``None`` when there is nothing to undo.
        """
        if not self._undo:
            return None
        entry = self._undo.pop()
        self._revert(entry)
        return entry.description

    def refine_available(self) -> bool:
        """Whether the Refine step is wired (see ``refiner``)."""
        return self.refiner is not None

    def refine(self, *args, **kwargs):
        """Hook for the Refine button: calls ``refiner`` when one is installed."""
        if self.refiner is None:
            raise UniversalSegError("refinement is not available in this version",
                                    "use the coarse segmentation, or edit it in the Segment Editor")
        return self.refiner(*args, **kwargs)

    # ------------------------------------------------------------------ scene writing
    def _new_segmentation_node(self, volume):
        name = self.scene.GenerateUniqueName(f"{volume.GetName()} UniversalSeg")
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if volume.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        sh = self.scene.GetSubjectHierarchyNode()
        volume_item = sh.GetItemByDataNode(volume) if sh is not None else 0
        if volume_item:
            parent = sh.GetItemParent(volume_item)
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, parent)
            else:
                sh.CreateItem(parent, node)
        return node

    def _write_segments(self, node, volume, run: PreparedRun, result: SegmentationResult, entry: _UndoEntry) -> None:
        segmentation = node.GetSegmentation()
        if not segmentation.GetNumberOfSegments():  # an empty node: make it the input's, stored as labelmaps
            to_labelmap = getattr(node, "SetSourceRepresentationToBinaryLabelmap", None)
            (to_labelmap or node.SetMasterRepresentationToBinaryLabelmap)()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        layer = _oriented_image(sitk.GetArrayViewFromImage(result.labels), run.ijk_to_ras)
        for value, task in enumerate(result.tasks, start=1):
            existing = self._segment_of_task(segmentation, task) if run.replace_existing else None
            if existing is not None:
                entry.saved.append(self._save_segment(node, existing))
                segmentation.RemoveSegment(existing)
                segment_id = existing
            elif segmentation.GetSegment(task.id) is None:
                segment_id = task.id
            else:
                segment_id = segmentation.GenerateUniqueSegmentID(task.id)
            segment = slicer.vtkSegment()
            segment.SetName(task.name)
            segment.SetColor(*task.color_float())
            segment.SetLabelValue(value)
            segment.SetTag(TERMINOLOGY_TAG, task.terminology_entry())
            segment.SetTag(TASK_TAG, task.id)
            segment.SetTag(MODEL_TAG, result.model)
            segment.AddRepresentation(_BINARY, layer)
            if not segmentation.AddSegment(segment, segment_id):
                raise UniversalSegError(f"could not add segment '{task.name}' to '{node.GetName()}'",
                                        "choose a new output segmentation")
            entry.added.append(segment_id)
            if existing is not None:
                segmentation.SetSegmentIndex(segment_id, entry.saved[-1].index)

    def _segment_of_task(self, segmentation, task: Task) -> str | None:
        """The id of an existing segment of ``task``: tagged with its id, else named like it."""
        by_name = None
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            if _tag(segment, TASK_TAG) == task.id:
                return segmentation.GetNthSegmentID(index)
            if by_name is None and segment.GetName().strip().lower() == task.name.lower():
                by_name = segmentation.GetNthSegmentID(index)
        return by_name

    @staticmethod
    def _save_segment(node, segment_id: str) -> _SavedSegment:
        segmentation = node.GetSegmentation()
        metadata = slicer.vtkSegment()
        metadata.DeepCopyMetadata(segmentation.GetSegment(segment_id))
        labelmap = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
        return _SavedSegment(segment_id, segmentation.GetSegmentIndex(segment_id), metadata, labelmap)

    def _revert(self, entry: _UndoEntry) -> None:
        node = self.scene.GetNodeByID(entry.segmentation_id) if entry.segmentation_id else None
        if node is None:
            return
        if entry.created_node:
            _remove_node(self.scene, node)
            return
        segmentation = node.GetSegmentation()
        for segment_id in entry.added:
            if segmentation.GetSegment(segment_id) is not None:
                segmentation.RemoveSegment(segment_id)
        for saved in sorted(entry.saved, key=lambda s: s.index):
            segment = slicer.vtkSegment()
            segment.DeepCopyMetadata(saved.metadata)
            segment.SetLabelValue(1)
            segment.AddRepresentation(_BINARY, saved.labelmap)
            segmentation.AddSegment(segment, saved.segment_id)
            segmentation.SetSegmentIndex(saved.segment_id, min(saved.index, segmentation.GetNumberOfSegments() - 1))


# ------------------------------------------------------------------------------------------------ helpers
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


def _tag(segment, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _source_representation(segmentation) -> str:
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter() or ""


def _remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes (``RemoveNode`` alone leaves them behind)."""
    extra = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)


def _ensure_converter_rules() -> None:
    """Register the segmentation converter rules when nothing did (the slicer-core wheel; Slicer does it)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
