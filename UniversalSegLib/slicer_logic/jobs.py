"""The engine in a background thread: progress, cancel, and the out-of-memory fall-back.

    >>> job = SegmentationJob(run, api.segment, catalog).start()   # run: a validated PreparedRun  # doctest: +SKIP
    >>> status = job.poll()         # from a QTimer in the GUI thread  # doctest: +SKIP
    >>> status.text, status.fraction                               # doctest: +SKIP
    ('Running the network (40%)', 0.48)
    >>> job.cancel()                # stops at the next window; the scene was never touched  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..catalog import Catalog
from ..errors import CancelledError, UniversalSegError
from ..inference import InferenceOptions, SegmentationResult
from ..volume import same_grid
from .request import PreparedRun

#: The smallest sliding window (voxels per axis) the out-of-memory fall-back goes down to.
MIN_WINDOW = 32
#: Parts of the overall progress bar each engine stage fills (start, end).
STAGE_SPAN = {"queued": (0.0, 0.0), "load": (0.0, 0.1), "prepare": (0.1, 0.2), "infer": (0.2, 0.9),
              "postprocess": (0.9, 1.0), "done": (1.0, 1.0)}
STAGE_TEXT = {"queued": "Waiting to start", "load": "Loading the model", "prepare": "Preparing the image",
              "infer": "Running the network", "postprocess": "Building the segments", "done": "Done"}

#: The engine call: ``UniversalSegLib.api.segment`` (tests may wrap it).
SegmentFunction = Callable[..., SegmentationResult]


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
        return replace(options, window=smaller, batch_size=1)

    def _model_window(self) -> tuple[int, int, int]:
        from ..api import load_model

        segmenter = load_model(self.run.model, device="cpu", catalog=self._catalog)
        return tuple(int(w) for w in segmenter.loaded.inference.get("patch_size", (96, 96, 96)))

    def _warn(self, text: str) -> None:
        with self._lock:
            self._warnings.append(text)


def _out_of_memory(error: BaseException) -> bool:
    """Whether an engine error means memory ran out (torch raises a RuntimeError saying so).

    >>> _out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    """
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


def _unexpected(err: BaseException) -> UniversalSegError:
    """An engine bug as an error the widget can show."""
    return UniversalSegError(f"segmentation failed ({type(err).__name__}: {err})",
                             "see the Python console for details and report it with the volume's size and spacing")
