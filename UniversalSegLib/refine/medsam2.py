"""MedSAM2 (optional): the volume as a video, prompted on each object's key slice and propagated both ways.

Needs the ``sam2`` package (``SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0``
plus ``hydra-core``, ``omegaconf`` and ``iopath``; ``pip install 'universalseg[medsam2]'``) and a
MedSAM2 checkpoint the user supplies (none can be fetched here). MedSAM2 was trained from SAM2.1
Hiera-tiny at 512 pixels, the default ``config="sam2.1_hiera_t512"``; any SAM2 config file works with
a checkpoint made for it. Frames are the image's axial-like slices in display range, resized to the
model's square input and normalised like SAM2's video frames.

>>> refiner = MedSAM2Refiner("MedSAM2_latest.pt")  # doctest: +SKIP
>>> [mask] = refiner.refine(image, [Prompts(box=Box3D.parse("10,12,30,40,44,52"))], kind="CT")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import CheckpointError, InputError
from .errors import MissingDependencyError
from .prompts import Prompts, SliceSpace, grow_box
from .refiner import BOX_SLACK, Refiner, slice_points, walk_plan

#: Named configs: (config file inside the sam2 package, image size, memory-attention feature size).
CONFIGS = {
    "sam2.1_hiera_t512": ("configs/sam2.1/sam2.1_hiera_t.yaml", 512),
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", 1024),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", 1024),
}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
INSTALL_HINT = ("SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0 && "
                "pip install hydra-core omegaconf iopath (or pip install 'universalseg[medsam2]')")


def _import_sam2():
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from sam2 import sam2_video_predictor
    except ImportError as err:
        raise MissingDependencyError(f"the MedSAM2 backend needs the sam2 package ({err.name} is missing)",
                                     INSTALL_HINT) from None
    return instantiate, OmegaConf, sam2_video_predictor


def build_model(config: str = "sam2.1_hiera_t512", image_size: int | None = None) -> torch.nn.Module:
    """A SAM2 video predictor with random weights, from a named config or a SAM2 YAML file."""
    instantiate, omegaconf, predictor_module = _import_sam2()
    if config in CONFIGS:
        relative, size = CONFIGS[config]
        path = Path(predictor_module.__file__).parent / relative
    else:
        path, size = Path(config), None
        if not path.is_file():
            raise InputError(f"unknown MedSAM2 config '{config}'",
                             f"use one of {', '.join(CONFIGS)} or the path of a SAM2 YAML config")
    cfg = omegaconf.load(path)
    size = image_size or size or cfg.model.image_size
    cfg.model.image_size = size
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    feat = size // 16  # memory attention runs on the stride-16 features
    layer = cfg.model.memory_attention.layer
    layer.self_attention.feat_sizes = [feat, feat]
    layer.cross_attention.feat_sizes = [feat, feat]
    cfg.model.fill_hole_area = 0  # needs sam2's CUDA extension
    cfg.model.binarize_mask_from_pts_for_mem_enc = True
    cfg.model.compile_image_encoder = False
    return instantiate(cfg.model, _recursive_=True).eval()


def load_checkpoint(model: torch.nn.Module, path: str | Path, config: str) -> None:
    """Load a MedSAM2/SAM2 checkpoint ({"model": state} or a bare state); :class:`CheckpointError` unless it fits."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MedSAM2 checkpoint '{path}' does not exist", "check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on a foreign file with all kinds of errors
        raise CheckpointError(f"cannot read MedSAM2 checkpoint '{path}' ({err})",
                              "give a SAM2/MedSAM2 .pt file") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds no state dict", "give a SAM2/MedSAM2 .pt file")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{n} {what} (e.g. {keys[0]})" for n, what, keys in
                           ((len(missing), "missing", missing), (len(unexpected), "unexpected", unexpected),
                            (len(wrong), "with another shape", wrong)) if keys)
        raise CheckpointError(f"MedSAM2 checkpoint '{path.name}' does not fit config {config}: {detail}",
                              "pass the --medsam2-config the checkpoint was trained with")
    model.load_state_dict(state, strict=True)


class MedSAM2Refiner(Refiner):
    """MedSAM2 behind the :class:`~.refiner.Refiner` interface; ``checkpoint=None`` keeps random weights (tests)."""

    name = "medsam2"

    def __init__(self, checkpoint: str | Path | None, config: str = "sam2.1_hiera_t512",
                 image_size: int | None = None) -> None:
        self.model = build_model(config, image_size)
        if checkpoint is not None:
            load_checkpoint(self.model, checkpoint, config)

    def _frames(self, slices: np.ndarray) -> torch.Tensor:
        size = self.model.image_size
        tensor = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        return (tensor - IMAGENET_MEAN) / IMAGENET_STD

    def refine_slices(self, slices: np.ndarray, objects: Sequence[Prompts], space: SliceSpace) -> list[np.ndarray]:
        return [self._one(slices, prompts, space) for prompts in objects]

    def _one(self, slices: np.ndarray, prompts: Prompts, space: SliceSpace) -> np.ndarray:
        key, key_boxes, first, last = walk_plan(prompts, space, slices)
        if prompts.slice_boxes:  # never beyond the coarse mask's extent
            first, last = max(first, min(prompts.slice_boxes)), min(last, max(prompts.slice_boxes))
        frames = self._frames(slices[first:last + 1])
        h, w = slices.shape[1:]
        out = np.zeros(slices.shape, bool)
        points = slice_points(prompts, space).get(key)
        with torch.inference_mode(), self._video(frames, h, w) as state:
            # one SAM2 object per piece of the structure on the key slice; clicks go with the first
            for number, box in enumerate([None] if key_boxes is None else key_boxes, start=1):
                clicks = points if number == 1 else None
                self.model.add_new_points_or_box(state, frame_idx=key - first, obj_id=number,
                                                 box=None if box is None else np.asarray(box, np.float32),
                                                 points=None if clicks is None else clicks[0],
                                                 labels=None if clicks is None else clicks[1])
            for reverse in (False, True):
                for index, _, masks in self.model.propagate_in_video(state, start_frame_idx=key - first,
                                                                     reverse=reverse):
                    self._next_slice()
                    out[first + index] = (masks[:, 0] > 0).any(dim=0).numpy()
        limit = space.slice_box(prompts.box)[None] if prompts.box is not None else None
        for z in range(first, last + 1):
            boxes = prompts.slice_boxes.get(z, limit)
            if boxes is not None:
                keep = np.zeros((h, w), bool)
                for x0, y0, x1, y1 in np.round(grow_box(np.reshape(boxes, (-1, 4)), BOX_SLACK, (h, w))).astype(int):
                    keep[y0:y1 + 1, x0:x1 + 1] = True
                out[z] &= keep
        return out

    @contextlib.contextmanager
    def _video(self, frames: torch.Tensor, height: int, width: int):
        """SAM2's inference state for in-memory frames (``init_state`` reads JPEG folders); no progress bars."""
        _, _, module = _import_sam2()
        with (mock.patch.object(module, "load_video_frames", lambda **_: (frames, height, width)),
              mock.patch.object(module, "tqdm", lambda iterable, **_: iterable)):
            yield self.model.init_state(video_path="<in memory>")
