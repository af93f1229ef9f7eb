"""Refine segments in the scene with a promptable model: validate, run in the background, apply with undo.

Each chosen segment is refined on its own (Slicer segments may overlap). A segment without boxes gets
automatic prompts from its own voxels (:func:`~UniversalSegLib.refine.pipeline.refine_labelmap`) and,
once applied, its boxes are left in the scene as ROI markups tagged with the segment. When a segment
has such ROIs (moved or resized by the user, or drawn and tagged), the next Refine starts from them
instead: each ROI is one object, followed slice by slice from its middle. Point lists add clicks
(include / exclude) to the object whose box holds them. Undo puts the unrefined segments back and
removes the ROIs that run created::

    >>> job = logic.start_refinement(RefinementRequest(volume, segmentation, ["mandible"]))  # doctest: +SKIP
    >>> applied = logic.apply(job)   # main thread, once job.poll().finished                 # doctest: +SKIP
    >>> applied.message                                                                      # doctest: +SKIP
    "Refined 1 segment in 41.2 s (LiteMedSAM). Boxes left as ROIs ('Mandible box 1'): ..."
    >>> logic.undo()                 # the segment as it was                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ..catalog import Catalog
from ..errors import CatalogError, CheckpointError, InputError
from ..refine.prompts import MODES, Box3D, Point
from ..runner import ProcessJob
from .dependencies import REFINE_BACKEND_DEPENDENCIES, Dependency, dependency_error, missing_dependencies
from .markups import box_from_roi, points_from_node, roi_from_box, segment_rois, tag_roi
from .modality import guess_modality
from .nodes import BINARY_LABELMAP, ijk_to_ras, image_from_volume_node, oriented_image, segment_arrays, segment_tag
from .request import check_volume_node
from .segments import TASK_TAG, UndoEntry, save_segment

#: Backends the Refine button offers (the first is the default).
BACKENDS = tuple(REFINE_BACKEND_DEPENDENCIES)
#: Segment tag naming the backend that refined it.
REFINED_TAG = "UniversalSeg.RefinedWith"


@dataclass
class RefinementRequest:
    """What the Refine button asks for: which segments of which segmentation, on which volume, how.

    ``modality`` ``None`` takes :func:`guess_modality` (it decides the intensity scaling); ``include_points``
    and ``exclude_points`` are optional point-list nodes (clicks inside / outside the structure).
    """

    volume: object
    segmentation: object
    segment_ids: Sequence[str]
    modality: str | None = None
    backend: str = BACKENDS[0]
    medsam2_checkpoint: str | Path | None = None
    mode: str = "slices"
    include_points: object | None = None
    exclude_points: object | None = None


@dataclass
class SegmentPlan:
    """One segment to refine: its voxels now (k, j, i), its task (CT window) and the user's boxes, if any."""

    segment_id: str
    name: str
    task: str | None
    mask: np.ndarray
    boxes: list[Box3D]
    slices: int  # slices the refiner will see (for progress)


@dataclass
class PreparedRefinement:
    """A validated request with everything copied out of the scene (written into the worker process's job folder)."""

    image: sitk.Image
    ijk_to_ras: np.ndarray
    volume_id: str
    segmentation_id: str
    kind: str
    plans: list[SegmentPlan]
    points: list[Point]
    backend: str
    medsam2_checkpoint: Path | None
    mode: str


@dataclass
class RefinedSegment:
    """A refined segment and the boxes that prompted it (``derived``: from its voxels, to leave as ROIs)."""

    segment_id: str
    mask: np.ndarray
    boxes: list[Box3D]
    derived: bool


@dataclass
class AppliedRefinement:
    """What applying a refinement changed, and the status line to show."""

    segmentation: object
    segment_ids: list[str]
    roi_ids: list[str]
    seconds: float
    message: str
    warnings: list[str] = field(default_factory=list)


def backend_dependencies(backend: str, base: Sequence[Dependency]) -> list[Dependency]:
    """The packages a backend needs beyond ``base``."""
    return [*base, REFINE_BACKEND_DEPENDENCIES[backend]]


def _segment_task(segment, catalog: Catalog) -> str | None:
    """The catalog task of a segment: its UniversalSeg tag, else its name if the catalog knows it."""
    tagged = segment_tag(segment, TASK_TAG)
    if tagged:
        return tagged
    try:
        return catalog.task(segment.GetName()).id
    except CatalogError:
        return None


def validate_refinement(request: RefinementRequest, scene, catalog: Catalog,
                        dependencies: Sequence[Dependency]) -> PreparedRefinement:
    """Check a refinement request and copy its inputs out of the scene; raise :class:`UniversalSegError` if bad."""
    volume, node = request.volume, request.segmentation
    check_volume_node(volume)
    if node is None:
        raise InputError("no segmentation is chosen to refine", "choose a segmentation and its segments under "
                         "'Refinement' (segment first, or paint a rough mask in the Segment Editor)")
    if not request.segment_ids:
        raise InputError(f"no segment of '{node.GetName()}' is chosen", "choose the segments to refine")
    if request.backend not in BACKENDS:
        raise InputError(f"unknown refinement method '{request.backend}'", f"choose one of {', '.join(BACKENDS)}")
    if request.mode not in MODES:
        raise InputError(f"unknown refinement mode '{request.mode}'", f"choose one of {', '.join(MODES)}")
    checkpoint = None
    if request.backend == "MedSAM2":
        if not request.medsam2_checkpoint or not Path(request.medsam2_checkpoint).is_file():
            raise CheckpointError("MedSAM2 needs its checkpoint file, and none was found",
                                  "choose the MedSAM2 .pt file you downloaded, or use LiteMedSAM")
        checkpoint = Path(request.medsam2_checkpoint)
    missing = missing_dependencies(backend_dependencies(request.backend, dependencies))
    if missing:
        raise dependency_error(missing)
    segmentation = node.GetSegmentation()
    plans = []
    for segment_id in dict.fromkeys(request.segment_ids):
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment '{segment_id}' is not in '{node.GetName()}'", "choose one of its segments")
        mask = segment_arrays(node, [segment_id], volume) == 1
        boxes = [box_from_roi(roi, volume) for roi in segment_rois(scene, node, segment_id)]
        if not boxes and not mask.any():
            raise InputError(f"segment '{segment.GetName()}' is empty: there is nothing to refine",
                             "paint a rough mask in the Segment Editor, or place an ROI box tagged for it")
        slices = (sum(b.hi[2] - b.lo[2] + 1 for b in boxes) if boxes
                  else int(mask.any(axis=(1, 2)).sum()))  # an upper bound on the slices refined
        plans.append(SegmentPlan(segment_id, segment.GetName(), _segment_task(segment, catalog), mask, boxes,
                                 slices))
    points = (points_from_node(request.include_points, volume, True)
              + points_from_node(request.exclude_points, volume, False))
    modality = catalog.modality(request.modality or guess_modality(volume, catalog).modality)
    image = image_from_volume_node(volume)
    return PreparedRefinement(image, ijk_to_ras(volume), volume.GetID(), node.GetID(), modality.kind, plans, points,
                              request.backend, checkpoint, request.mode)


class RefinementJob(ProcessJob):
    """Refinement in a worker process (:mod:`UniversalSegLib.runner`), polled like a segmentation job.

    ``refiner``: the refiner factory the worker calls, ``"module:function"`` taking the request dict
    (default: :func:`UniversalSegLib.worker.default_refiner`). Once succeeded, ``job.results`` holds the
    refined masks and their boxes.
    """

    what = "refinement"
    again = "press Refine to run it again"

    def __init__(self, prepared: PreparedRefinement, refiner: str | None = None,
                 extra_paths: Sequence[str | Path] = ()) -> None:
        super().__init__(None, (), extra_paths)
        self.prepared = prepared
        self._refiner = refiner
        self._total = max(1, sum(p.slices for p in prepared.plans))
        self.results: list[RefinedSegment] = []

    def write_request(self, folder: Path) -> dict[str, Any]:
        sitk.WriteImage(self.prepared.image, str(folder / "input.nrrd"))
        plans = []
        for number, plan in enumerate(self.prepared.plans):
            np.save(folder / f"mask_{number}.npy", np.asarray(plan.mask, bool))
            plans.append({"segment_id": plan.segment_id, "task": plan.task, "mask": f"mask_{number}.npy",
                          "slices": plan.slices,
                          "boxes": [[list(map(int, b.lo)), list(map(int, b.hi))] for b in plan.boxes]})
        points = [[*map(int, p.index), bool(p.positive)] for p in self.prepared.points]
        checkpoint = self.prepared.medsam2_checkpoint
        return {"kind": "refine", "image": "input.nrrd", "plans": plans, "points": points,
                "image_kind": self.prepared.kind, "backend": self.prepared.backend,
                "medsam2_checkpoint": str(checkpoint) if checkpoint else None, "mode": self.prepared.mode,
                "refiner": self._refiner}

    def read_result(self, folder: Path) -> None:
        info = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        self.results = [RefinedSegment(s["segment_id"], np.load(folder / s["mask"]),
                                       [Box3D(tuple(lo), tuple(hi)) for lo, hi in s["boxes"]], bool(s["derived"]))
                        for s in info["segments"]]

    def overall_fraction(self) -> float:
        return min(0.99, self.fraction)

    def status_text(self) -> str:
        if self.stage in ("queued", "load"):
            return "Loading the model"
        return f"Refining (slice {round(self.fraction * self._total)} of about {self._total})"


def apply_refinement(scene, job: RefinementJob, entry: UndoEntry) -> AppliedRefinement:
    """Write a finished job's masks into their segments (main thread), recording the undo state in ``entry``.

    Each segment keeps its id, name, colour, tags and position; derived boxes become ROI nodes.
    """
    prepared = job.prepared
    node = scene.GetNodeByID(prepared.segmentation_id)
    volume = scene.GetNodeByID(prepared.volume_id)
    if node is None or volume is None:
        raise InputError("the volume or the segmentation was removed while refining", "load it again and refine")
    segmentation = node.GetSegmentation()
    rois = []
    for refined in job.results:
        if segmentation.GetSegment(refined.segment_id) is None:
            raise InputError(f"segment '{refined.segment_id}' was deleted while it was being refined",
                             "press Refine again")
        saved = save_segment(node, refined.segment_id)
        entry.saved.append(saved)
        segmentation.RemoveSegment(refined.segment_id)
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(saved.metadata)
        segment.SetLabelValue(1)
        segment.SetTag(REFINED_TAG, prepared.backend)
        segment.AddRepresentation(BINARY_LABELMAP, oriented_image(refined.mask, prepared.ijk_to_ras))
        segmentation.AddSegment(segment, refined.segment_id)
        segmentation.SetSegmentIndex(refined.segment_id, saved.index)
        entry.added.append(refined.segment_id)
        if refined.derived:
            for number, box in enumerate(refined.boxes, start=1):
                roi = roi_from_box(scene, box, volume, f"{segment.GetName()} box {number}", segment.GetColor())
                tag_roi(roi, node, refined.segment_id)
                entry.nodes.append(roi.GetID())
                rois.append(roi.GetName())
    seconds = job.poll().elapsed
    count = len(job.results)
    message = f"Refined {count} segment{'s' if count != 1 else ''} in {seconds:.1f} s ({prepared.backend})."
    if rois:
        message += (f" Boxes left as ROIs ({', '.join(repr(r) for r in rois)}): move or resize one and press "
                    "Refine again to refine from it; delete them to refine from the segment.")
    message += " Undo restores the unrefined segments."
    return AppliedRefinement(node, list(entry.added), list(entry.nodes), seconds, message)
