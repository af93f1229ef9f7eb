"""ONNX Runtime backend: export, (optionally) quantise, cache and run our networks without torch.

Two networks go through here:

* the Hermes segmentation network (``segment --backend onnx``, the default ``auto`` where onnxruntime is
  installed and the device is the CPU): :func:`load_hermes` gives a :class:`OrtLoaded` that
  :class:`~UniversalSegLib.inference.Segmenter` drives like a torch ``LoadedModel``;
* the refiner's TinyViT image encoder (:class:`OnnxEncoder`, formerly ``refine/onnx_encoder.py``).

**Conditioning.** The task and modality indices are *inputs* of the Hermes graph (``task_idx`` [B, T] int64,
``modality_idx`` [B] int64; the prior-token gathers are inside the graph), with dynamic batch, task count and
window size. So one graph per weights file serves every task set and modality, and the graph computes exactly
what the torch forward computes (no baked-in prior tokens to go stale).

**Cache.** Graphs are exported on first use (a few seconds; this step needs torch) and kept in
``$UNIVERSALSEG_CACHE/onnx`` (default ``~/.cache/universalseg/onnx``: a user folder rather than the
working-directory ``cache`` of :func:`UniversalSegLib.paths.cache_root`, so a run from any folder finds them, and
rather than beside the weights, which may sit in a read-only site-packages). A graph is named by the SHA-256 of
the weights file (first 16 hex digits), the package version (the network code), the graph layout and the
precision: ``hermes-<sha16>-<version>-g<layout>-fp32.onnx``, with ``.json`` metadata beside it (task and modality
ids, inference settings) so that a later run needs neither torch nor the checkpoint's pickle. Files are written
to a temporary name and renamed, so a half-written graph is never used.

**Export-only forms.** The traced graph replaces three torch forms by equal ones (checked equal in torch):
the fusion's reshape with a constant channel count and the decoder's upsampling by a factor 2 (the legacy
exporter otherwise loses the channel count that InstanceNormalization needs), and instance norm as axis-by-axis
means (ONNX Runtime's own kernel was 1e-2 off on the logits; now 1.5e-4, as close as torch fp32 is to float64).

**Precision.** fp32 by default. ``precision="int8"`` makes a dynamically quantised copy (weights int8); it was
measured slower and less accurate on this 3-D convolution network (docs/benchmarks.md), so nothing uses it by default.

>>> loaded = load_hermes("UniversalSegLib/weights/universalseg-small.pt", threads=2)  # doctest: +SKIP
>>> loaded.model(windows, task_idx, modality_idx).shape  # numpy in, logits out  # doctest: +SKIP
(2, 8, 48, 64, 64)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import CheckpointError, UniversalSegError
from .paths import CACHE_ENV

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "int8")
OPSET = 17
GRAPH_LAYOUT = 3  # bump when the exported graph changes (also renames the cached files)


class OnnxUnavailableError(UniversalSegError):
    """onnxruntime is missing, or a graph would have to be exported and torch is missing."""


def available() -> bool:
    """Whether onnxruntime can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$UNIVERSALSEG_CACHE/onnx``, default ``~/.cache/universalseg/onnx``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "universalseg") / "onnx"


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxUnavailableError("onnxruntime is not installed",
                                   "pip install onnxruntime==1.31.1, or use --backend torch") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default (one per physical core)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle threads sleep instead of spinning: on the shared 2-core machine 15 % faster per window, 13 % less CPU
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path`` and rename it to ``path`` (kept if another won)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache may be shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Hermes segmentation network


class OrtHermes:
    """The Hermes network as an ONNX Runtime session: ``(windows [B, 1, D, H, W] float32, task_idx [B, T],
    modality_idx [B]) -> logits [B, T, D, H, W]`` (numpy in and out). ``null_task`` is the padding row."""

    def __init__(self, path: Path, null_task: int, threads: int | None = None) -> None:
        self.session = _session(path, threads)
        self.path = path
        self.null_task = null_task

    def __call__(self, windows: np.ndarray, task_idx: np.ndarray, modality_idx: np.ndarray) -> np.ndarray:
        feeds = {"image": np.ascontiguousarray(windows, dtype=np.float32),
                 "task_idx": np.ascontiguousarray(task_idx, dtype=np.int64),
                 "modality_idx": np.ascontiguousarray(modality_idx, dtype=np.int64)}
        return self.session.run(["logits"], feeds)[0]


@dataclass
class OrtLoaded:
    """What :class:`~UniversalSegLib.inference.Segmenter` needs of a loaded model, with an ONNX Runtime network."""

    model: OrtHermes
    task_ids: list[str]
    modality_ids: list[str]
    catalog_version: str | None
    inference: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    source_format: str = "universalseg"
    backend: str = "onnx"


def graph_path(weights_sha256: str, precision: str = "fp32", folder: Path | None = None) -> Path:
    """The cached graph of a weights file (see the module doc for the naming)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return (folder or cache_dir()) / f"hermes-{weights_sha256[:16]}-{__version__}-g{GRAPH_LAYOUT}-{precision}.onnx"


def export_hermes(weights: str | Path, path: Path) -> dict[str, Any]:
    """Export the checkpoint ``weights`` to the ONNX graph ``path`` (+ ``.json`` metadata); needs torch.

    Returns the metadata written beside the graph.
    """
    import torch

    from .models import load_checkpoint

    loaded = load_checkpoint(weights)
    net = loaded.model.eval()
    for fusion in net.fusions:
        fusion.forward = _static_width_forward(fusion)  # type: ignore[method-assign]
    for stage in (net.up1, net.up2, net.up3, net.up4):
        stage.forward = _doubling_forward(stage)  # type: ignore[method-assign]
    for module in net.modules():
        if isinstance(module, torch.nn.InstanceNorm3d):
            module.forward = _two_pass_instance_norm(module)  # type: ignore[method-assign]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image, task_idx, modality_idx):  # noqa: ANN001
            return self.net(image, task_idx, modality_idx).logits

    rows = min(2, net.null_task + 1)
    example = (torch.zeros(2, net.config.in_channels, 32, 32, 32),
               torch.tensor([[0, net.null_task][:rows]] * 2), torch.zeros(2, dtype=torch.long))
    spatial = {0: "batch", 2: "depth", 3: "height", 4: "width"}

    def write(tmp: str) -> None:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about the input checks, which run on the example
            torch.onnx.export(Logits().eval(), example, tmp, input_names=["image", "task_idx", "modality_idx"],
                              output_names=["logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"image": spatial, "task_idx": {0: "batch", 1: "tasks"},
                                            "modality_idx": {0: "batch"},
                                            "logits": {0: "batch", 1: "tasks", 2: "depth", 3: "height", 4: "width"}})

    meta = {"graph_layout": GRAPH_LAYOUT, "universalseg": __version__, "torch": torch.__version__,
            "weights": Path(weights).name, "null_task": int(net.null_task), "task_ids": list(loaded.task_ids),
            "modality_ids": list(loaded.modality_ids), "catalog_version": loaded.catalog_version,
            "inference": loaded.inference, "metadata": _plain(loaded.metadata), "source_format": loaded.source_format,
            "precision": "fp32"}
    _atomic(path, write)
    _atomic(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1), "utf-8"))
    return meta


def _static_width_forward(fusion: Any) -> Callable:
    """``PriorFusion.forward`` with the channel count as a constant: the tracer would record it as a dynamic size,
    and the instance norm after the fusion cannot be exported with an unknown channel count. Same operations."""
    import torch

    width = int(fusion.task_prior.shape[1])

    def forward(features, task_idx, modality_idx):  # noqa: ANN001, ANN202
        b, _, d, h, w = features.shape
        queried = task_idx.shape[1]
        priors = torch.cat([fusion.task_prior[task_idx], fusion.modality_prior[modality_idx]], dim=1)
        voxels = features.flatten(2).transpose(1, 2)
        for layer in fusion.attn_layers:
            voxels, priors = layer(voxels, priors)
        return voxels.transpose(1, 2).reshape(b, width, d, h, w).contiguous(), priors[:, :queried], priors[:, queried:]

    return forward


def _doubling_forward(stage: Any) -> Callable:
    """``UpStage.forward`` upsampling by a factor 2 instead of to the skip's size: the same grid (window sizes
    are multiples of 16 and align_corners sampling depends on the sizes only), but the traced size would lose the
    channel count too. Same operations otherwise."""
    import torch
    import torch.nn.functional as F

    def forward(x, skip):  # noqa: ANN001, ANN202
        up = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=True)
        return stage.conv(torch.cat([skip, up], dim=1))

    return forward


def _two_pass_instance_norm(norm: Any) -> Callable:
    """``InstanceNorm3d`` as two passes of means taken one axis at a time. ONNX Runtime's InstanceNormalization
    (and a ReduceMean over a whole window) sums 200,000 voxels in float32 one after the other: off by up to 7e-4 on
    the stem's features (torch: 6e-7, against float64), 1e-2 on the logits. Averaging axis by axis keeps every
    sum short, as torch's pairwise sums do; the means are the same numbers."""
    import torch

    eps, affine = float(norm.eps), bool(norm.affine)

    def mean(x):  # noqa: ANN001, ANN202
        for dim in range(x.dim() - 1, 1, -1):
            x = x.mean(dim=dim, keepdim=True)
        return x

    def forward(x):  # noqa: ANN001, ANN202
        centred = x - mean(x)
        out = centred / torch.sqrt(mean(centred * centred) + eps)
        if affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = out * norm.weight.view(shape) + norm.bias.view(shape)
        return out

    return forward


def quantise_hermes(fp32: Path, path: Path) -> None:
    """A dynamically quantised (int8 weights) copy of the fp32 graph ``fp32`` at ``path`` (+ its metadata)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _atomic(path, lambda tmp: quantize_dynamic(str(fp32), tmp, weight_type=QuantType.QInt8))
    meta = json.loads(fp32.with_suffix(".json").read_text("utf-8"))
    meta["precision"] = "int8"
    _atomic(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1), "utf-8"))


def _plain(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into a string (checkpoint metadata is plain already)."""
    return json.loads(json.dumps(value, default=str))


def load_hermes(weights: str | Path, threads: int | None = None, precision: str = "fp32", export: bool = True,
                folder: Path | None = None) -> OrtLoaded:
    """The ONNX Runtime model of the checkpoint ``weights``: the cached graph, exported first if ``export``.

    Torch-free when the graph is cached. Raises :class:`OnnxUnavailableError` without onnxruntime, or
    when the graph is missing and ``export`` is false.
    """
    from .volume import file_sha256

    if not available():
        raise OnnxUnavailableError("onnxruntime is not installed", "pip install onnxruntime==1.31.1, or use "
                                   "--backend torch")
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"model checkpoint '{weights}' does not exist", "pass --model PATH with a checkpoint")
    sha = file_sha256(weights)
    path = graph_path(sha, precision, folder)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        if not export:
            raise OnnxUnavailableError(f"no exported ONNX graph of '{weights.name}' in {path.parent}",
                                       "run once with --backend auto or onnx where torch is installed")
        fp32 = graph_path(sha, "fp32", folder)
        if not (fp32.is_file() and fp32.with_suffix(".json").is_file()):
            if importlib.util.find_spec("torch") is None:
                raise OnnxUnavailableError(f"'{weights.name}' has no exported ONNX graph yet and torch, which "
                                           "exports it, is not installed", "install torch once, or --backend torch")
            export_hermes(weights, fp32)
        if precision == "int8":
            quantise_hermes(fp32, path)
    meta = json.loads(meta_path.read_text("utf-8"))
    return OrtLoaded(OrtHermes(path, int(meta["null_task"]), threads), list(meta["task_ids"]),
                     list(meta["modality_ids"]), meta.get("catalog_version"), dict(meta.get("inference") or {}),
                     dict(meta.get("metadata") or {}), meta.get("source_format", "universalseg"))


def choose_backend(backend: str, device: str = "cpu") -> str:
    """``"torch"`` or ``"onnx"`` for a requested backend: ``auto`` is onnx on the CPU where onnxruntime is installed.

    >>> choose_backend("torch")
    'torch'
    """
    if backend not in BACKENDS:
        from .errors import InputError

        raise InputError(f"unknown backend '{backend}'", f"use one of {', '.join(BACKENDS)}")
    if backend == "onnx" and device == "cuda":
        from .errors import InputError

        raise InputError("--backend onnx runs on the CPU only", "use --device cpu, or --backend torch on the GPU")
    if backend == "auto":
        return "onnx" if device == "cpu" and available() else "torch"
    return backend


# --------------------------------------------------------------------------------------------------------------
# Sliding window in numpy (MONAI's sliding_window_inference, same windows, weights and padding)


def importance_map(roi: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's ``compute_importance_map``: a separable Gaussian (sigma = 0.125 x size), floor 1e-3, or ones.

    >>> importance_map((3, 3), "constant").tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    if mode == "constant":
        return np.ones(tuple(roi), dtype=np.float32)
    weights: np.ndarray | None = None
    for size in roi:
        x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x ** 2 / np.float32(-2 * (size * sigma_scale) ** 2)).astype(np.float32)
        weights = g if weights is None else weights[..., None] * g
    assert weights is not None
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis, as MONAI's ``dense_patch_slices`` (the last window flush with the end).

    >>> window_starts(100, 64, 0.5)
    [0, 32, 36]
    """
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    count = 1
    for d in range(math.ceil(size / interval)):
        if d * interval + roi >= size:
            count = d + 1
            break
    return [i * interval - max(i * interval + roi - size, 0) for i in range(count)]


def windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> Iterator[tuple[slice, ...]]:
    """The window slices over an (already padded) volume, in MONAI's order."""
    starts = [window_starts(s, r, overlap) for s, r in zip(shape, roi, strict=True)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                yield (slice(z, z + roi[0]), slice(y, y + roi[1]), slice(x, x + roi[2]))


def sliding_window(volume: np.ndarray, roi: Sequence[int], batch_size: int,
                   predictor: Callable[[np.ndarray], np.ndarray], overlap: float = 0.5, mode: str = "gaussian",
                   cval: float = 0.0) -> np.ndarray:
    """Blend ``predictor`` over windows of ``volume`` [z, y, x] -> [channels, z, y, x] float32.

    As MONAI's ``sliding_window_inference`` with constant padding ``cval`` where the volume is smaller than
    ``roi`` (split evenly, the odd voxel after), ``batch_size`` windows per call and ``mode`` weighting.
    """
    pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(volume.shape, roi, strict=True)]
    padded = np.pad(volume, pad, constant_values=cval) if any(sum(p) for p in pad) else volume
    weight = importance_map(roi, mode)
    slices = list(windows(padded.shape, roi, overlap))
    out: np.ndarray | None = None
    count = np.zeros(padded.shape, dtype=np.float32)
    for s in slices:
        count[s] += weight
    for first in range(0, len(slices), batch_size):
        batch = slices[first:first + batch_size]
        predicted = predictor(np.stack([padded[s] for s in batch])[:, None])
        if out is None:
            out = np.zeros((predicted.shape[1], *padded.shape), dtype=np.float32)
        for s, p in zip(batch, predicted, strict=True):
            p *= weight
            out[(slice(None), *s)] += p
    assert out is not None
    out /= count
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pad, volume.shape, strict=True))
    return out[(slice(None), *crop)]


# --------------------------------------------------------------------------------------------------------------
# The refiner's image encoder (LiteMedSAM's TinyViT)


class OnnxEncoder:
    """The TinyViT encoder under ONNX Runtime, about twice as fast as torch on CPU (``benchmarks/refine_onnx.py``).

    Callable like the torch encoder: (B, 3, 256, 256) float32 -> (B, 256, 64, 64); takes and gives torch tensors.
    Its graph is cached as ``litemedsam_encoder-<sha16>-<torch>-<version>.onnx`` in :func:`cache_dir`.

    >>> encoder = OnnxEncoder.create(model.image_encoder, weights_sha256)  # doctest: +SKIP
    >>> embedding = encoder(torch.rand(1, 3, 256, 256))  # doctest: +SKIP
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            from .refine.errors import MissingDependencyError

            raise MissingDependencyError("onnxruntime is not installed",
                                         "pip install 'universalseg[refine]', or use encoder='torch'") from None
        import torch

        self.session = _session(path, threads or torch.get_num_threads())
        self.path = path

    @classmethod
    def create(cls, encoder: Any, weights_sha256: str, threads: int | None = None) -> OnnxEncoder:
        """Export ``encoder`` (a torch module) unless a graph for these weights and versions is cached, then open it."""
        import torch

        tag = f"{weights_sha256[:16]}-{torch.__version__.split('+')[0]}-{__version__}"
        path = cache_dir() / f"litemedsam_encoder-{tag}.onnx"
        if not path.is_file():
            _atomic(path, lambda tmp: torch.onnx.export(
                encoder.eval(), (torch.zeros(1, 3, 256, 256),), tmp, input_names=["image"],
                output_names=["embedding"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}))
        return cls(path, threads)

    def __call__(self, images: Any) -> Any:
        import torch

        output = self.session.run(None, {"image": images.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(output)


# --------------------------------------------------------------------------------------------------------------
# Static INT8 (calibrated activations) and the 2D detector (BoxNet)


def quantise_static(fp32: Path, path: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """A statically quantised copy of the fp32 graph ``fp32`` at ``path``: QDQ format, int8 weights (per channel)
    and uint8 activations whose ranges are calibrated (MinMax) on the ``calibration`` feeds (input name -> array),
    two feeds at a time (collecting every intermediate output of all feeds at once took 10 GB for TinyViT)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(list(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process, printed on every call
    try:
        _atomic(path, lambda tmp: quantize_static(str(fp32), tmp, Reader(), quant_format=QuantFormat.QDQ,
                                                  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                                  per_channel=True,
                                                  extra_options={"CalibMaxIntermediateOutputs": 2}))
    finally:
        root.setLevel(level)


#: Calibration images for static INT8 (16 HC18 training images, 8-bit grey; CC BY 4.0, see its manifest).
CALIBRATION = Path(__file__).resolve().parent / "weights" / "hc18_calibration.npz"


def calibration_images(path: Path = CALIBRATION) -> list[np.ndarray]:
    """The shipped calibration images as float32 0-1 2D arrays."""
    with np.load(path) as data:
        return [data[k].astype(np.float32) / 255.0 for k in sorted(data.files)]


def load_boxnet(detector: Any, precision: str = "fp32", threads: int | None = None) -> Any:
    """An ONNX Runtime session of a :class:`~UniversalSegLib.detect.model.Detector`'s network (``image`` [B, 1, S, S]
    -> ``heat``, ``ltrb``), exported (and for ``"int8"`` statically quantised on :data:`CALIBRATION`) on first use
    and cached as ``boxnet-<sha16>-<version>-<precision>.onnx``."""
    import hashlib

    import torch

    from .detect.model import standardise

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if not available():
        raise OnnxUnavailableError("onnxruntime is not installed", "pip install onnxruntime==1.31.1, or use fp32")
    state = detector.net.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().numpy().tobytes())
    tag = f"{digest.hexdigest()[:16]}-{__version__}-{detector.size}"
    fp32 = cache_dir() / f"boxnet-{tag}-fp32.onnx"
    if not fp32.is_file():
        example = torch.zeros(1, 1, detector.size, detector.size)
        _atomic(fp32, lambda tmp: torch.onnx.export(
            detector.net.eval(), (example,), tmp, input_names=["image"], output_names=["heat", "ltrb"],
            opset_version=OPSET, dynamo=False, dynamic_axes={"image": {0: "batch"}, "heat": {0: "batch"},
                                                             "ltrb": {0: "batch"}}))
    path = fp32
    if precision == "int8":
        path = cache_dir() / f"boxnet-{tag}-int8.onnx"
        if not path.is_file():
            feeds = [{"image": standardise(im, detector.size).numpy()} for im in calibration_images()]
            quantise_static(fp32, path, feeds)
    return _session(path, threads)


def encoder_int8(encoder: Any, weights_sha256: str, threads: int | None = None) -> OnnxEncoder:
    """LiteMedSAM's image encoder statically quantised to INT8, calibrated on :data:`CALIBRATION` (as the
    refiner's preprocessing gives them), cached as ``litemedsam_encoder-<sha16>-<torch>-<version>-int8.onnx``."""
    from .refine.slices import slice_input

    fp32 = OnnxEncoder.create(encoder, weights_sha256, threads).path
    path = fp32.with_name(fp32.stem + "-int8.onnx")
    if not path.is_file():
        feeds = [{"image": slice_input(im)[0].numpy()} for im in calibration_images()]
        quantise_static(fp32, path, feeds)
    return OnnxEncoder(path, threads)
