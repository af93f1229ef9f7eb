"""The engine as a child process: one request folder in, JSON lines on stdout, results in the same folder.

Run by :class:`~UniversalSegLib.slicer_logic.runner.ProcessJob` (never imports Qt or ``slicer``)::

    python -m UniversalSegLib.worker JOB_FOLDER

The folder holds ``request.json`` (``kind``: ``"segment"`` or ``"refine"``) and the input files it names.
Every line the worker prints on stdout is one JSON event::

    {"event": "progress", "stage": "infer", "fraction": 0.4}
    {"event": "warning", "text": "Out of memory: retrying with smaller sliding windows ..."}
    {"event": "device", "device": "cpu"}          # after the GPU ran out of memory
    {"event": "done"}                             # results written: labels.nrrd + result.json, or masks
    {"event": "error", "type": "CheckpointError", "problem": "...", "hint": "..."}

The out-of-memory fall-back lives here (GPU -> CPU, then ever smaller sliding windows down to
:data:`MIN_WINDOW`). The engine call is ``request["engine"]`` (``"module:function"``, default
``UniversalSegLib.api:segment``) and the refiner factory ``request["refiner"]`` (default
:func:`default_refiner`), so tests can inject faults without touching the engine.

    >>> event_line("progress", stage="load", fraction=0.0)
    '{"event": "progress", "stage": "load", "fraction": 0.0}'
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import UniversalSegError

#: The smallest sliding window (voxels per axis) the out-of-memory fall-back goes down to.
MIN_WINDOW = 32
DEFAULT_ENGINE = "UniversalSegLib.api:segment"


def event_line(event: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    return json.dumps({"event": event, **fields})


def emit(event: str, **fields: Any) -> None:
    """Print one event and flush, so the parent sees it at once."""
    sys.stdout.write(event_line(event, **fields) + "\n")
    sys.stdout.flush()


def load_callable(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (the engine or refiner factory to call)."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def out_of_memory(error: BaseException) -> bool:
    """Whether an engine error means memory ran out (torch raises a RuntimeError saying so).

    >>> out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    """
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


def unexpected(err: BaseException, what: str = "segmentation") -> UniversalSegError:
    """An engine bug as an error the widget can show (the traceback goes to the worker's stderr).

    >>> str(unexpected(ValueError("bad"), "refinement")).split(". What")[0]
    'refinement failed (ValueError: bad)'
    """
    return UniversalSegError(f"{what} failed ({type(err).__name__}: {err})",
                             "report it with the volume's size and spacing")


# ------------------------------------------------------------------------------------------ segmentation
def smaller_options(options, device: str, model_window: Callable[[], tuple[int, int, int]]):
    """(device, options, warning) to retry with after running out of memory; raise when nothing smaller is left."""
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        return "cpu", options, ("The GPU ran out of memory: segmenting on the CPU instead (slower). "
                                "A GPU with more memory, or closing other GPU programs, avoids this.")
    window = options.window or model_window()
    smaller = tuple(max(MIN_WINDOW, (w // 2) // 16 * 16) for w in window)
    if tuple(window) == smaller and options.batch_size == 1:
        raise UniversalSegError(
            f"out of memory on the CPU even with {'x'.join(map(str, smaller))}-voxel windows",
            "close other programs, crop the volume to the region of interest (Crop Volume module), "
            "or use a computer with more memory")
    return device, replace(options, window=smaller, batch_size=1), (
        f"Out of memory: retrying with smaller sliding windows ({'x'.join(map(str, smaller))} voxels, "
        "one at a time); results may differ slightly near window borders.")


def run_segment(folder: Path, request: dict) -> None:
    """Segment ``folder/input.nrrd`` and write ``labels.nrrd`` + ``result.json``."""
    import SimpleITK as sitk

    from .catalog import Catalog
    from .inference import InferenceOptions
    from .volume import read_image, same_grid

    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    catalog = Catalog.load()
    image, _ = read_image(folder / request["image"])
    fields = dict(request.get("options") or {})
    if fields.get("window") is not None:
        fields["window"] = tuple(fields["window"])
    options = InferenceOptions(**fields)
    device, model = request.get("device", "cpu"), request.get("model")
    engine = load_callable(request.get("engine") or DEFAULT_ENGINE)

    def model_window() -> tuple[int, int, int]:
        from .api import load_model

        segmenter = load_model(model, device="cpu", catalog=catalog)
        i, j, k = (int(w) for w in segmenter.loaded.inference.get("patch_size", (96, 96, 96)))
        return i, j, k

    while True:
        emit("progress", stage="load", fraction=0.0)
        try:
            result = engine(image, tasks=request["tasks"], modality=request["modality"], model=model, device=device,
                            options=options, progress=lambda stage, f: emit("progress", stage=stage, fraction=float(f)),
                            catalog=catalog)
            break
        except (RuntimeError, MemoryError) as err:
            if not out_of_memory(err):
                raise
            device, options, warning = smaller_options(options, device, model_window)
            emit("warning", text=warning)
            emit("device", device=device)
    if not same_grid(result.labels, image):
        raise UniversalSegError("the engine returned a label map on another grid than the input",
                                "report this as a bug with the volume's size and spacing")
    sitk.WriteImage(result.labels, str(folder / "labels.nrrd"))
    (folder / "result.json").write_text(json.dumps({
        "tasks": [t.id for t in result.tasks], "modality": result.modality.id, "seconds": result.seconds,
        "model": result.model, "device": device}))


# -------------------------------------------------------------------------------------------- refinement
def default_refiner(request: dict):
    """The backend a refinement request asks for (LiteMedSAM with our fine-tuned decoder, or MedSAM2)."""
    if request["backend"] == "MedSAM2":
        from .refine.medsam2 import MedSAM2Refiner

        return MedSAM2Refiner(request["medsam2_checkpoint"])
    from .refine.refiner import LiteMedSAMRefiner

    return LiteMedSAMRefiner()


def refine_one(image, mask, boxes, points, task, kind: str, mode: str, refiner):
    """Refine one segment: from its boxes when it has some, else from its own voxels.

    Returns ``(mask (k, j, i) bool, boxes, derived)``; ``derived``: the boxes came from the voxels.
    """
    import numpy as np
    import SimpleITK as sitk

    from .refine.pipeline import refine_labelmap
    from .refine.prompts import Prompts

    if boxes:
        objects = [Prompts(box=b, points=tuple(p for p in points if b.holds(p.index))) for b in boxes]
        masks = refiner.refine(image, objects, kind=kind, task=task)
        return np.logical_or.reduce(masks), list(boxes), False
    coarse = sitk.GetImageFromArray(np.asarray(mask).astype(np.uint8))
    coarse.CopyInformation(image)
    result = refine_labelmap(image, coarse, {1: task}, refiner=refiner, kind=kind, mode=mode, points=points)
    return sitk.GetArrayViewFromImage(result.labels) == 1, result.boxes[1], True


def run_refine(folder: Path, request: dict) -> None:
    """Refine each planned segment; write ``refined_<n>.npy`` and ``result.json`` (boxes, derived)."""
    import numpy as np

    from .refine.prompts import Box3D, Point
    from .volume import read_image

    image, _ = read_image(folder / request["image"])
    points = [Point(tuple(p[:3]), bool(p[3])) for p in request["points"]]
    total = max(1, sum(p["slices"] for p in request["plans"]))
    done = 0
    emit("progress", stage="load", fraction=0.0)
    factory = load_callable(request["refiner"]) if request.get("refiner") else default_refiner
    refiner = factory(request)

    def tick() -> None:
        nonlocal done
        done += 1
        emit("progress", stage="refine", fraction=min(1.0, done / total))

    refiner.on_slice = tick
    out = []
    for number, plan in enumerate(request["plans"]):
        mask = np.load(folder / plan["mask"])
        boxes = [Box3D(tuple(lo), tuple(hi)) for lo, hi in plan["boxes"]]
        refined, used, derived = refine_one(image, mask, boxes, points, plan["task"], request["image_kind"],
                                            request["mode"], refiner)
        np.save(folder / f"refined_{number}.npy", np.asarray(refined, bool))
        out.append({"segment_id": plan["segment_id"], "mask": f"refined_{number}.npy", "derived": derived,
                    "boxes": [[list(map(int, b.lo)), list(map(int, b.hi))] for b in used]})
    (folder / "result.json").write_text(json.dumps({"segments": out}))


KINDS = {"segment": run_segment, "refine": run_refine}


def main(argv: list[str] | None = None) -> int:
    """Run the request in ``argv[0]`` (a folder); 0 on success, 1 after printing an error event."""
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0])
    started = time.perf_counter()
    kind = "segmentation"
    try:
        request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
        kind = "refinement" if request["kind"] == "refine" else "segmentation"
        KINDS[request["kind"]](folder, request)
    except UniversalSegError as err:
        emit("error", type=type(err).__name__, problem=err.problem, hint=err.hint)
        return 1
    except BaseException as err:  # noqa: BLE001 - any engine bug must end as a message, not a hang
        traceback.print_exc()  # stderr: kept in the job folder for the bug report
        error = unexpected(err, kind)
        emit("error", type="UniversalSegError", problem=error.problem, hint=error.hint)
        return 1
    emit("done", seconds=time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
