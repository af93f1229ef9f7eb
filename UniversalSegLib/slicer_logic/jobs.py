"""The segmentation job: the engine in a child process (:mod:`UniversalSegLib.runner`), polled from the GUI thread.

    >>> job = SegmentationJob(run, catalog=catalog).start()   # run: a validated PreparedRun  # doctest: +SKIP
    >>> status = job.poll()         # from a QTimer in the GUI thread: never blocks  # doctest: +SKIP
    >>> status.text, status.fraction                                              # doctest: +SKIP
    ('Running the network (40%)', 0.48)
    >>> job.cancel()                # process ended, folder removed, scene untouched  # doctest: +SKIP

The out-of-memory fall-back (GPU -> CPU, then smaller sliding windows down to :data:`MIN_WINDOW`) runs in
the worker (:mod:`UniversalSegLib.worker`); each retry adds a warning to the status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Union

import SimpleITK as sitk

from ..catalog import Catalog
from ..errors import UniversalSegError
from ..inference import SegmentationResult
from ..runner import JobStatus, ProcessJob
from ..worker import DEFAULT_ENGINE, MIN_WINDOW
from .request import PreparedRun

#: Parts of the overall progress bar each engine stage fills (start, end).
STAGE_SPAN = {"queued": (0.0, 0.0), "load": (0.0, 0.1), "prepare": (0.1, 0.2), "infer": (0.2, 0.9),
              "postprocess": (0.9, 1.0), "done": (1.0, 1.0)}
STAGE_TEXT = {"queued": "Waiting to start", "load": "Loading the model", "prepare": "Preparing the image",
              "infer": "Running the network", "postprocess": "Building the segments", "done": "Done"}

#: The engine the worker calls, as ``"module:function"`` (default ``UniversalSegLib.api:segment``); a
#: module-level function is accepted too and passed by its import path.
SegmentFunction = Union[Callable[..., SegmentationResult], str]  # noqa: UP007 - runs on Python 3.9

__all__ = ["MIN_WINDOW", "STAGE_SPAN", "STAGE_TEXT", "JobStatus", "SegmentFunction", "SegmentationJob",
           "engine_path"]


def engine_path(engine: SegmentFunction | None) -> str:
    """The import path of an engine function (``"module:function"``) the worker can load.

    >>> from UniversalSegLib import api
    >>> engine_path(api.segment), engine_path(None)
    ('UniversalSegLib.api:segment', 'UniversalSegLib.api:segment')
    """
    if engine is None:
        return DEFAULT_ENGINE
    if isinstance(engine, str):
        return engine
    module, name = getattr(engine, "__module__", None), getattr(engine, "__qualname__", "")
    if not module or not name or "<" in name:
        raise TypeError("the engine runs in a worker process: pass a module-level function or 'module:function', "
                        f"not {engine!r}")
    return f"{module}:{name}"


class SegmentationJob(ProcessJob):
    """One segmentation in a worker process; ``poll()`` it from the GUI thread, ``cancel()`` to stop it.

    ``job.run`` is the validated request; once succeeded ``job.result`` is the engine's
    :class:`~UniversalSegLib.inference.SegmentationResult` (label map on the input grid) and ``job.device``
    the device that made it (``"cpu"`` after a GPU ran out of memory).
    """

    what = "segmentation"
    again = "press Segment to run it again"

    def __init__(self, run: PreparedRun, segment: SegmentFunction | None = None, catalog: Catalog | None = None,
                 listener: Callable[[str, float], None] | None = None,
                 extra_paths: Sequence[str | Path] = ()) -> None:
        super().__init__(listener, run.warnings, extra_paths)
        self.run = run
        self._engine = engine_path(segment)
        self._catalog = catalog or Catalog.load()
        self.result: SegmentationResult | None = None
        self.device = run.device

    def write_request(self, folder: Path) -> dict[str, Any]:
        sitk.WriteImage(self.run.image, str(folder / "input.nrrd"))
        threads = None
        import sys

        if "torch" in sys.modules:
            threads = sys.modules["torch"].get_num_threads()
        return {"kind": "segment", "image": "input.nrrd", "tasks": [t.id for t in self.run.tasks],
                "modality": self.run.modality.id, "model": str(self.run.model) if self.run.model else None,
                "device": self.device, "options": asdict(self.run.options), "engine": self._engine,
                "threads": threads}

    def on_event(self, event: dict) -> None:
        if event.get("event") == "device":
            self.device = str(event["device"])

    def read_result(self, folder: Path) -> None:
        info = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        labels = sitk.ReadImage(str(folder / "labels.nrrd"))
        if labels.GetSize() != self.run.image.GetSize():
            raise UniversalSegError("the engine returned a label map on another grid than the input",
                                    "report this as a bug with the volume's size and spacing")
        labels.CopyInformation(self.run.image)  # the same grid, without a text round trip of the geometry
        self.device = info.get("device", self.device)
        self.result = SegmentationResult(labels=labels, tasks=[self._catalog.task(t) for t in info["tasks"]],
                                         modality=self._catalog.modality(info["modality"]),
                                         seconds=float(info["seconds"]), model=str(info.get("model", "")))

    def overall_fraction(self) -> float:
        start, end = STAGE_SPAN.get(self.stage, (0.0, 1.0))
        return start + (end - start) * self.fraction

    def status_text(self) -> str:
        text = STAGE_TEXT.get(self.stage, self.stage.capitalize())
        return f"{text} ({round(100 * self.fraction)}%)" if self.stage == "infer" else text
