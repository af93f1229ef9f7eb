"""Detect, then refine: a 2D grey PNG -> detector boxes -> LiteMedSAM box prompts -> label mask. No manual prompt.

>>> result = detect_segment("us.png")  # doctest: +SKIP
>>> result.mask.shape, [d.as_dict() for d in result.detections]  # doctest: +SKIP
((270, 400), [{'box': [58.1, 3.0, 224.7, 189.2], 'label': 1, 'name': 'fetal_head', 'score': 0.93}])

Inputs are checked before any model is loaded (:func:`read_grey_png`): not a PNG / corrupt, colour,
16-bit, too small or too large each raise :class:`~UniversalSegLib.errors.InputError` with what to do.
Nothing detected is no error: the mask is empty and ``result.message`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .model import DEFAULT_WEIGHTS, Detection, Detector

#: Largest image accepted (pixels); LiteMedSAM sees 256 px anyway, and the detector 192.
MAX_PIXELS = 4096 * 4096
MIN_SIDE = 16


def read_grey_png(path: str | Path) -> np.ndarray:
    """An 8-bit grey PNG as float32 0-1 [h, w]; grey stored as RGB(A) with equal channels is accepted."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image '{path}' does not exist", "give the path of a PNG file")
    try:
        with Image.open(path) as im:
            fmt, mode, (w, h) = im.format, im.mode, im.size
            if fmt != "PNG":
                raise InputError(f"'{path.name}' is a {fmt or 'unknown'} image, not a PNG",
                                 "convert it to an 8-bit grey PNG")
            if w * h > MAX_PIXELS:
                raise InputError(f"'{path.name}' is {w} x {h} pixels, more than the {MAX_PIXELS:,} accepted",
                                 "downsample it (the models work at 256 px)")
            if min(w, h) < MIN_SIDE:
                raise InputError(f"'{path.name}' is {w} x {h} pixels, too small", f"give an image at least "
                                 f"{MIN_SIDE} px on each side")
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise InputError(f"'{path.name}' is a 16-bit (or 32-bit) image (mode {mode}); the detector was "
                                 "trained on 8-bit ultrasound", "convert it to an 8-bit grey PNG")
            if mode == "P":
                im = im.convert("RGBA")
            array = np.asarray(im)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"'{path.name}' is too large to open safely", "downsample it (the models work at 256 px)"
                         ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read '{path.name}' as a PNG ({err})", "check the file is a complete PNG") from None
    if array.ndim == 3:
        colour = array[..., :3].astype(np.int16)
        if np.abs(colour - colour[..., :1]).max() > 2:
            raise InputError(f"'{path.name}' is a colour image", "give a grey (single-channel) ultrasound PNG, "
                             "e.g. converted with PIL's Image.convert('L')")
        array = colour[..., 0]
    return array.astype(np.float32) / 255.0


@dataclass
class DetectSegmentResult:
    """The label mask (uint8, the detections' class values), the detections used, and a note when none."""

    mask: np.ndarray
    detections: list[Detection]
    message: str = ""
    timings: dict[str, float] | None = None

    def boxes_json(self, image: str = "", detector: str = "", refiner: str = "") -> dict[str, Any]:
        return {"image": image, "shape": list(self.mask.shape), "detector": detector, "refiner": refiner,
                "box_convention": "x0, y0, x1, y1 in pixels, x = column, end exclusive",
                "detections": [d.as_dict() for d in self.detections], "message": self.message}


class DetectSegmenter:
    """The detector and the refiner loaded once; call :meth:`run` per image."""

    def __init__(self, detector: str | Path | Detector = DEFAULT_WEIGHTS, refiner_weights: str | Path = "finetuned",
                 precision: str = "fp32", encoder: str = "auto", score_threshold: float | None = None,
                 threads: int | None = None) -> None:
        from ..refine.litemedsam import LiteMedSAM, SlicePredictor

        self.detector = detector if isinstance(detector, Detector) else Detector.load(detector)
        if score_threshold is not None:
            self.detector.score_threshold = score_threshold
        if precision != "fp32" or encoder == "onnx":
            self.detector.use_onnx(precision, threads)
        model = LiteMedSAM.load(refiner_weights, encoder=encoder)
        if precision == "int8":  # the image encoder too: it is most of the time
            from ..onnx_runtime import encoder_int8
            from ..refine.litemedsam import wheel_checkpoint
            from ..volume import file_sha256

            model.onnx_encoder = encoder_int8(model.image_encoder, file_sha256(wheel_checkpoint()), threads)
        self.predictor = SlicePredictor(model)
        self.refiner_name = str(self.predictor.model.weights_name)

    def run(self, image: np.ndarray, boxes: Sequence[Detection] | None = None) -> DetectSegmentResult:
        """Mask of the image's detections (or of the given ``boxes``, e.g. ground truth, bypassing the detector)."""
        import time

        t0 = time.perf_counter()
        detections = list(self.detector(image)) if boxes is None else list(boxes)
        t1 = time.perf_counter()
        mask = np.zeros(image.shape, np.uint8)
        if not detections:
            return DetectSegmentResult(mask, [], "nothing detected: the mask is empty",
                                       {"detect_s": t1 - t0, "refine_s": 0.0})
        inclusive = [[d.box[0], d.box[1], max(d.box[0], d.box[2] - 1), max(d.box[1], d.box[3] - 1)]
                     for d in detections]  # LiteMedSAM's box corners are inclusive pixels
        logits, _ = self.predictor.predict(image, boxes=inclusive)
        for d, lg in sorted(zip(detections, logits, strict=True), key=lambda p: p[0].score):
            mask[lg > 0] = d.label  # the most confident detection wins where two overlap
        t2 = time.perf_counter()
        return DetectSegmentResult(mask, detections, "", {"detect_s": t1 - t0, "refine_s": t2 - t1})


def detect_segment(image: str | Path | np.ndarray, detector: str | Path = DEFAULT_WEIGHTS,
                   refiner_weights: str | Path = "finetuned", precision: str = "fp32") -> DetectSegmentResult:
    """One call: a PNG path (or a 2D array, 0-1 grey) -> :class:`DetectSegmentResult`; no prompt needed."""
    array = read_grey_png(image) if isinstance(image, (str, Path)) else np.asarray(image, np.float32)
    if array.ndim != 2:
        raise InputError(f"detect-segment needs a 2D grey image, not an array of shape {array.shape}",
                         "give one 2D image")
    return DetectSegmenter(detector, refiner_weights, precision).run(array)
