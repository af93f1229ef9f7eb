"""BoxNet: a small anchor-free 2D detector (our code, trained from scratch; no pretrained weights).

A plain conv backbone (five stride-2 stages) with one top-down merge gives a stride-16 feature map; per cell
the head predicts a centre heat map per class (CenterNet-style) and the distances ``(l, t, r, b)`` from
the cell centre to the box sides (FCOS-style). Decoding keeps heat-map peaks above ``score_threshold``,
turns them into boxes and applies per-class NMS. Input: a grey image resized to ``size`` x ``size``
(aspect not kept; boxes are mapped back), standardised per image.

>>> detector = Detector.load()  # doctest: +SKIP
>>> detector(image_0_1)  # doctest: +SKIP
[Detection(box=(58.1, 3.0, 224.7, 189.2), label=1, name='fetal_head', score=0.93)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "boxnet_hc18.pt"
FORMAT = "universalseg-boxnet"
STRIDE = 16


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BoxNet(nn.Module):
    """(B, 1, S, S) standardised images -> heat logits (B, C, S/16, S/16) and ltrb distances in pixels (B, 4, ...)."""

    def __init__(self, num_classes: int = 1, widths: tuple[int, ...] = (16, 32, 64, 96, 128)) -> None:
        super().__init__()
        w = list(widths)
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.stages = nn.ModuleList()
        cin = 1
        for cout in w:
            self.stages.append(nn.Sequential(_conv(cin, cout, 2), _conv(cout, cout)))
            cin = cout
        self.lateral = nn.Conv2d(w[4], w[3], 1)
        self.merge = _conv(w[3], w[3])
        self.head = nn.Sequential(_conv(w[3], w[3]), _conv(w[3], w[3]))
        self.heat = nn.Conv2d(w[3], num_classes, 1)
        self.reg = nn.Conv2d(w[3], 4, 1)
        with torch.no_grad():
            self.heat.bias.fill_(-2.19)  # type: ignore[union-attr]  # prior 0.1, as in focal-loss detectors
            self.reg.weight.zero_()
            self.reg.bias.zero_()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        s16, s32 = feats[3], feats[4]
        top = F.interpolate(self.lateral(s32), size=s16.shape[-2:], mode="nearest")
        f = self.head(self.merge(s16 + top))
        ltrb = torch.exp(self.reg(f).clamp(-6.0, 6.0)) * (4 * STRIDE)
        return self.heat(f), ltrb


def standardise(image: np.ndarray, size: int) -> torch.Tensor:
    """A 2D float image -> (1, 1, size, size) resized (bilinear, antialiased) and standardised."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (t - t.mean()) / t.std().clamp_min(1e-3)


def cell_centres(h: int, w: int, stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) of the cell centres of an h x w feature map, each (h, w)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    return xs[None, :].expand(h, w), ys[:, None].expand(h, w)


def ltrb_to_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) distances -> (B, 4, h, w) boxes x0, y0, x1, y1 in input pixels."""
    cx, cy = cell_centres(ltrb.shape[-2], ltrb.shape[-1])
    return torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of boxes (x0, y0, x1, y1).

    >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [0, 0, 2, 2]])).round(3).tolist()
    [[0.333, 1.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first.

    >>> nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]), np.array([0.9, 0.8, 0.7]))
    [0, 2]
    """
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep: list[int] = []
    while order:
        i = int(order.pop(0))
        keep.append(i)
        if order:
            ious = box_iou(boxes[i:i + 1], boxes[order])[0]
            order = [j for j, v in zip(order, ious, strict=True) if v <= iou_threshold]
    return keep


@dataclass(frozen=True)
class Detection:
    """One detected structure: box (x0, y0, x1, y1) in the image's pixels (x = column), class and confidence."""

    box: tuple[float, float, float, float]
    label: int
    name: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box], "label": self.label, "name": self.name,
                "score": round(self.score, 4)}


def decode(heat_logits: torch.Tensor, ltrb: torch.Tensor, score_threshold: float, top_k: int = 20
           ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes [n, 4] in input pixels, class indices [n], scores [n]) of the heat-map peaks, before NMS."""
    heat = torch.sigmoid(heat_logits)
    peaks = heat == F.max_pool2d(heat, 3, 1, 1)
    boxes = ltrb_to_boxes(ltrb)
    out = []
    for b in range(heat.shape[0]):
        scores = (heat[b] * peaks[b]).flatten()
        k = min(top_k, scores.numel())
        values, index = scores.topk(k)
        keep = values >= score_threshold
        values, index = values[keep], index[keep]
        cells = heat.shape[-2] * heat.shape[-1]
        cls, cell = index // cells, index % cells
        flat = boxes[b].flatten(1)  # (4, h*w)
        out.append((flat[:, cell].T.numpy().astype(np.float32), cls.numpy(), values.numpy()))
    return out


class Detector:
    """A trained :class:`BoxNet` with its input size, class names and thresholds; call it on a 2D image."""

    def __init__(self, net: BoxNet, size: int = 256, class_names: list[str] | None = None,
                 score_threshold: float = 0.3, iou_threshold: float = 0.5, max_detections: int = 10,
                 metadata: dict | None = None) -> None:
        self.net = net.eval()
        self.size = size
        self.class_names = class_names or [f"class_{i + 1}" for i in range(net.num_classes)]
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.metadata = metadata or {}
        self.onnx_session: Any = None  # set by :meth:`use_onnx`

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS, **overrides: Any) -> Detector:
        """Read a weights file written by ``training/detector.py`` (checks its manifest version if beside it)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"detector weights '{path}' do not exist",
                                  "reinstall UniversalSeg or pass --detector")
        from .. import check_manifest_beside

        check_manifest_beside(path, "detector")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a foreign file fails in many ways
            raise CheckpointError(f"cannot read detector weights '{path}' ({err})",
                                  "give a file written by training/detector.py") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"'{path}' is not a UniversalSeg detector ({FORMAT})",
                                  "give a file written by training/detector.py")
        config = dict(saved["config"])
        net = BoxNet(int(config["num_classes"]), tuple(config["widths"]))
        try:
            net.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
        except RuntimeError as err:
            raise CheckpointError(f"'{path}' does not fit BoxNet ({str(err)[:200]})", "give a matching file") from None
        settings: dict[str, Any] = {"size": int(config["size"]), "class_names": list(config["class_names"]),
                    "score_threshold": float(config.get("score_threshold", 0.3)),
                    "iou_threshold": float(config.get("iou_threshold", 0.5)),
                    "metadata": {"weights": path.name, **dict(saved.get("metadata") or {})}}
        settings.update(overrides)
        return cls(net, **settings)

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs for (B, 1, size, size) standardised inputs (ONNX Runtime after :meth:`use_onnx`)."""
        if self.onnx_session is not None:
            heat, ltrb = self.onnx_session.run(None, {"image": batch.numpy()})
            return torch.from_numpy(heat), torch.from_numpy(ltrb)
        with torch.inference_mode():
            return self.net(batch)

    def use_onnx(self, precision: str = "fp32", threads: int | None = None) -> Detector:
        """Run the network with ONNX Runtime (``"int8"``: statically quantised; :mod:`UniversalSegLib.onnx_runtime`)."""
        from ..onnx_runtime import load_boxnet

        self.onnx_session = load_boxnet(self, precision, threads)
        return self

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """Detections on a 2D image (any range; it is standardised), best first, after per-class NMS."""
        h, w = image.shape
        heat, ltrb = self.raw(standardise(image, self.size))
        boxes, classes, scores = decode(heat, ltrb, self.score_threshold)[0]
        sx, sy = w / self.size, h / self.size
        found: list[Detection] = []
        for c in np.unique(classes):
            idx = np.nonzero(classes == c)[0]
            for i in (idx[j] for j in nms(boxes[idx], scores[idx], self.iou_threshold)):
                x0, y0, x1, y1 = boxes[i] * np.array([sx, sy, sx, sy], np.float32)
                box = (float(np.clip(x0, 0, w)), float(np.clip(y0, 0, h)), float(np.clip(x1, 0, w)),
                       float(np.clip(y1, 0, h)))
                if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                    found.append(Detection(box, int(c) + 1, self.class_names[int(c)], float(scores[i])))
        found.sort(key=lambda d: -d.score)
        return found[:self.max_detections]
