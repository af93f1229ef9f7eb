"""2D structure detector (boxes with class and confidence) and the detect -> LiteMedSAM pipeline.

:mod:`.model`: the network (:class:`~.model.BoxNet`), box decoding and NMS, loading shipped weights.
:mod:`.pipeline`: PNG in, boxes + mask out (``universalseg detect-segment``; :func:`~.pipeline.detect_segment`
from Python). Training lives in ``UniversalSegLib/training/detector.py``; nothing here imports it. Nothing is
imported with the package (the CLI loads without torch); the names below load their module on first use.
"""

from __future__ import annotations

from typing import Any

_NAMES = {"BoxNet": "model", "Detection": "model", "Detector": "model", "box_iou": "model", "nms": "model",
          "DetectSegmenter": "pipeline", "detect_segment": "pipeline", "read_grey_png": "pipeline"}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
