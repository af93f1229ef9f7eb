"""The logic the widget drives: validate, start, apply, undo; the same for refinement.

    >>> logic = SlicerSegmentationLogic(slicer.mrmlScene)  # doctest: +SKIP
    >>> job = logic.start(SegmentationRequest(volume, tasks=["mandible"], modality="CT"))  # doctest: +SKIP
    >>> applied = logic.apply(job)        # main thread, once job.poll().finished  # doctest: +SKIP
    >>> applied.message                   # doctest: +SKIP
    '1 structure segmented in 4.1 s (CT, CPU).'
    >>> logic.undo()                      # doctest: +SKIP
    "UniversalSeg on 'ct'"
    >>> job = logic.start_refinement(RefinementRequest(volume, node, ["mandible"]))  # doctest: +SKIP
    >>> logic.apply(job).message          # doctest: +SKIP
    'Refined 1 segment in 38.0 s (LiteMedSAM). ...'
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import slicer

from ..catalog import Catalog
from ..errors import InputError, UniversalSegError
from .dependencies import DEPENDENCIES, Dependency
from .jobs import SegmentationJob, SegmentFunction, engine_path
from .nodes import ensure_converter_rules
from .refinement import (
    AppliedRefinement,
    RefinementJob,
    RefinementRequest,
    apply_refinement,
    validate_refinement,
)
from .request import PreparedRun, SegmentationRequest, validate_request
from .roi import paste_result
from .segments import UndoEntry, new_segmentation_node, revert, write_segments

if TYPE_CHECKING:
    from ..refine.refiner import Refiner


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


class SlicerSegmentationLogic:
    """Validates requests, runs the engine in the background and writes results into the MRML scene.

    Jobs run in a worker process (:mod:`UniversalSegLib.runner`). ``segment`` is the engine the worker calls,
    ``"module:function"`` or a module-level function (default ``UniversalSegLib.api:segment``); tests pass
    one to inject a failure, the module passes nothing. ``make_refiner`` likewise names the Refine backend
    factory the worker calls with the request dict (default :func:`UniversalSegLib.worker.default_refiner`).
    ``worker_paths``: extra folders on the worker's ``PYTHONPATH`` (where such injected functions live).
    """

    def __init__(self, scene=None, catalog: Catalog | None = None, segment: SegmentFunction | None = None,
                 make_refiner: Callable[[dict], Refiner] | str | None = None,
                 worker_paths: Sequence[str] = ()) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.catalog = catalog or Catalog.load()
        self._segment = engine_path(segment)
        self._make_refiner = engine_path(make_refiner) if make_refiner is not None else None
        self.worker_paths = list(worker_paths)
        self._undo: list[UndoEntry] = []
        self.dependencies: Sequence[Dependency] = DEPENDENCIES
        ensure_converter_rules()

    def validate(self, request: SegmentationRequest) -> PreparedRun:
        """Check a request and copy its input out of the scene; raise :class:`UniversalSegError` if it is bad."""
        return validate_request(request, self.catalog, self.dependencies)

    def start(self, request: SegmentationRequest,
              listener: Callable[[str, float], None] | None = None) -> SegmentationJob:
        """Validate ``request`` (raising on bad input, scene untouched) and start the engine in a worker process.

        ``listener(stage, fraction)`` is called from ``job.poll()`` for every progress line.
        """
        run = self.validate(request)
        return SegmentationJob(run, self._segment, self.catalog, listener, self.worker_paths).start()

    def run(self, request: SegmentationRequest) -> AppliedSegmentation:
        """Blocking: start, wait, apply. Raises the job's error (cancelled, failed) without changing the scene."""
        job = self.start(request)
        job.wait()
        return self.apply(job)

    def apply(self, job: SegmentationJob | RefinementJob) -> AppliedSegmentation | AppliedRefinement:
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
        if isinstance(job, RefinementJob):
            return self._apply_refinement(job)
        run, result = job.run, job.result
        if run.roi is not None:  # the engine segmented the crop to the ROI: back onto the volume's grid
            result = paste_result(result, run.roi)
        volume = self.scene.GetNodeByID(run.volume_id)
        if volume is None:
            raise InputError(f"the input volume '{run.volume_name}' was removed while it was being segmented",
                             "load it again and press Segment")
        node = self.scene.GetNodeByID(run.segmentation_id) if run.segmentation_id else None
        entry = UndoEntry(segmentation_id="", created_node=node is None, added=[], saved=[],
                          description=f"UniversalSeg on '{run.volume_name}'")
        try:
            if node is None:
                node = new_segmentation_node(self.scene, volume)
            entry.segmentation_id = node.GetID()
            write_segments(node, volume, run, result, entry)
        except BaseException:
            revert(self.scene, entry)  # leave the scene as it was
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
        revert(self.scene, entry)
        return entry.description

    # ---------------------------------------------------------------------------------------- refinement
    def start_refinement(self, request: RefinementRequest) -> RefinementJob:
        """Validate ``request`` (raising on bad input, scene untouched) and refine in a worker process."""
        prepared = validate_refinement(request, self.scene, self.catalog, self.dependencies)
        return RefinementJob(prepared, self._make_refiner, self.worker_paths).start()

    def refine(self, request: RefinementRequest) -> AppliedRefinement:
        """Blocking: start, wait, apply (scripts, tests)."""
        job = self.start_refinement(request)
        job.wait()
        return self.apply(job)

    def _apply_refinement(self, job: RefinementJob) -> AppliedRefinement:
        names = ", ".join(p.name for p in job.prepared.plans)
        entry = UndoEntry(segmentation_id=job.prepared.segmentation_id, created_node=False, added=[], saved=[],
                          description=f"Refine {names}")
        try:
            applied = apply_refinement(self.scene, job, entry)
        except BaseException:
            revert(self.scene, entry)
            raise
        job.applied = True
        self._undo.append(entry)
        return applied
