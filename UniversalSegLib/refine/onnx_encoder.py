"""The TinyViT encoder run by ONNX Runtime, which is about twice as fast as torch on CPU here.

``benchmarks/refine_onnx.py`` measures it. The ONNX graph is exported from our torch encoder once
(about 10 s) and kept in a cache folder (``$UNIVERSALSEG_CACHE``, default ``~/.cache/universalseg``),
named by the hash of the weights and the versions that produced it.

>>> encoder = OnnxEncoder.create(model.image_encoder, weights_sha256)  # doctest: +SKIP
>>> embedding = encoder(torch.rand(1, 3, 256, 256))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .. import __version__
from .errors import MissingDependencyError


def cache_dir() -> Path:
    """Where exported graphs are kept."""
    return Path(os.environ.get("UNIVERSALSEG_CACHE", Path.home() / ".cache" / "universalseg"))


def available() -> bool:
    """Whether onnxruntime (and onnx, used by the export) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class OnnxEncoder:
    """Callable like the torch encoder: (B, 3, 256, 256) float32 -> (B, 256, 64, 64)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime is not installed",
                                         "pip install 'universalseg[refine]', or use encoder='torch'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    @classmethod
    def create(cls, encoder: torch.nn.Module, weights_sha256: str, threads: int | None = None) -> OnnxEncoder:
        """Export ``encoder`` unless a graph for these weights and versions is cached, then open it."""
        tag = f"{weights_sha256[:16]}-{torch.__version__.split('+')[0]}-{__version__}"
        path = cache_dir() / f"litemedsam_encoder-{tag}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".encoder.", suffix=".onnx", dir=path.parent)
            os.close(fd)
            try:
                torch.onnx.export(encoder.eval(), (torch.zeros(1, 3, 256, 256),), tmp, input_names=["image"],
                                  output_names=["embedding"], opset_version=17, dynamo=False,
                                  dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return cls(path, threads)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        output = self.session.run(None, {"image": images.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(output)
