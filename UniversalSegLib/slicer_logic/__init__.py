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
    >>> job = logic.start(request)        # validates (raises UniversalSegError), runs in a thread  # doctest: +SKIP
    >>> job.poll().text                   # from a QTimer: "Running the network (40%)"  # doctest: +SKIP
    >>> applied = logic.apply(job)        # main thread, once job.poll().state == "succeeded"  # doctest: +SKIP
    >>> applied.message                   # doctest: +SKIP
    '2 structures segmented in 4.1 s (CT, CPU)'
    >>> logic.undo()                      # puts back what the run replaced  # doctest: +SKIP

``logic.run(request)`` does start + wait + apply in one blocking call (self-tests, scripts).

Modules: ``dependencies`` (what must be installed), ``nodes`` (volume node <-> SimpleITK image, segments ->
arrays), ``modality`` (modality guess, task groups), ``request`` (request, validation, device),
``jobs`` (the job, in a worker process), ``segments`` (writing segments, undo entries), ``logic`` (the logic class),
``refinement`` (the Refine step: request, background job, applying with undo), ``markups`` (ROI boxes and
point lists <-> voxel prompts), ``widget_glue`` (the module panel's values, without Qt). Everything public
is importable from here.
"""

from .dependencies import (
    DEPENDENCIES,
    Dependency,
    DependencyError,
    dependency_error,
    missing_dependencies,
)
from .jobs import MIN_WINDOW, STAGE_SPAN, STAGE_TEXT, JobStatus, SegmentationJob, SegmentFunction
from .logic import AppliedSegmentation, SlicerSegmentationLogic
from .modality import ModalityGuess, dicom_tags, guess_modality, task_groups
from .nodes import (
    RAS_TO_LPS,
    dice,
    ijk_to_ras,
    ijk_to_ras_from_image,
    image_from_volume_node,
    segment_arrays,
    volume_node_from_image,
)
from .refinement import AppliedRefinement, RefinementJob, RefinementRequest
from .request import PreparedRun, SegmentationRequest, resolve_device, validate_request
from .segments import MODEL_TAG, TASK_TAG, TERMINOLOGY_TAG

__all__ = [
    "DEPENDENCIES", "MIN_WINDOW", "AppliedRefinement", "RefinementJob", "RefinementRequest",
    "MODEL_TAG", "RAS_TO_LPS", "STAGE_SPAN", "STAGE_TEXT", "TASK_TAG",
    "TERMINOLOGY_TAG", "AppliedSegmentation", "Dependency", "DependencyError", "JobStatus", "ModalityGuess",
    "PreparedRun", "SegmentFunction", "SegmentationJob", "SegmentationRequest", "SlicerSegmentationLogic",
    "dependency_error", "dice", "dicom_tags", "guess_modality", "ijk_to_ras", "ijk_to_ras_from_image",
    "image_from_volume_node", "missing_dependencies", "resolve_device", "segment_arrays",
    "task_groups", "validate_request", "volume_node_from_image",
]
