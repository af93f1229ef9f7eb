"""Training patches: foreground-biased crop from the cached arrays, then MONAI dictionary augmentations.

Scaled to the small CPU model: by default p=0.3 affine (scale 0.85-1.15, rotation +-15 deg; in-plane
only for anisotropic patches), brightness / contrast / gamma / noise / blur at p=0.1-0.15. A dataset
may widen the affine (``affine_prob``, ``scale_range``, ``rotate_deg``): ACDC's voxel grid is all we
know, and its pixel size varies about 2x between patients, so it needs in-plane zoom and full in-plane
rotation (as nnU-Net's 2-D setting uses). Mirror flips are off unless a dataset lists ``flip_axes``
(a flip turns a left parotid into a right one).

The crop is our own (not ``RandCropByPosNegLabeld``) because it reads only the patch from the
memory-mapped cache and centres on precomputed foreground points, instead of loading and scanning
the whole volume for every sample. When the affine is drawn, a larger window (at least 1.3x, more
for wide zoom-out or rotation) is cut first and ``RandAffined`` resamples the patch from its centre,
so rotated and zoomed-out corners hold real voxels.

Randomness comes from one integer seed per sample, so a sample is a pure function of
(case, seed): this is what makes a resumed run draw exactly the patches an uninterrupted one would.

>>> aug = PatchAugmenter(patch_zyx=(32, 32, 32))  # doctest: +SKIP
>>> image, label = aug(cached_case, seed=1234)  # float32 [32,32,32], uint8 [32,32,32]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from UniversalSegLib.training.config import AFFINE_PROB, ROTATE_DEG, SCALE_RANGE
from UniversalSegLib.training.data import CachedCase

AFFINE_MARGIN = 1.3
AXES = {"z": 0, "y": 1, "x": 2}  # flip axis name -> spatial axis of the (z, y, x) array


def crop(image: np.ndarray, label: np.ndarray, size: Sequence[int], pad_value: float,
         centre: Sequence[int] | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` window (z, y, x) of both arrays, padded where it leaves the volume.

    The window is centred on ``centre`` when given (kept inside the volume where possible), else
    placed uniformly at random; a volume smaller than the window sits at a random offset in it.
    """
    starts = []
    for dim, s, c in zip(image.shape, size, centre if centre is not None else [None] * 3, strict=True):
        lo, hi = min(0, dim - s), max(0, dim - s)
        start = int(rng.integers(lo, hi + 1)) if c is None else int(np.clip(int(c) - s // 2, lo, hi))
        starts.append(start)
    out_img = np.full(tuple(size), pad_value, dtype=np.float32)
    out_lab = np.zeros(tuple(size), dtype=np.uint8)
    src, dst = [], []
    for start, dim, s in zip(starts, image.shape, size, strict=True):
        a, b = max(start, 0), min(start + s, dim)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out_img[tuple(dst)] = image[tuple(src)]
    out_lab[tuple(dst)] = label[tuple(src)]
    return out_img, out_lab


class PatchAugmenter:
    """Cut and augment one training patch of a cached case: ``(image float32, label uint8)``, (z, y, x).

    Args:
        patch_zyx: patch size in (z, y, x) voxel order.
        flip_axes: axis names ("x", "y", "z") that may be mirrored, p=0.5 each.
        foreground_prob: chance of centring the patch on a voxel of a present label.
        augment: False gives plain crops (no affine, no intensity changes).
        affine_prob: chance of the random affine (rotation and scale).
        scale_range: (low, high) scale factor bounds; for anisotropic patches they apply in-plane and
            the through-plane axis keeps the default 0.85-1.15.
        rotate_deg: largest rotation in degrees (about the through-plane axis for anisotropic patches).
        invert_prob: chance of negating the patch's intensities after the other intensity changes (MONAI
            has no random contrast inversion); drawn only when above 0, so other configs keep their patches.
    """

    def __init__(self, patch_zyx: Sequence[int], flip_axes: Sequence[str] = (), foreground_prob: float = 0.5,
                 augment: bool = True, affine_prob: float = AFFINE_PROB,
                 scale_range: Sequence[float] = SCALE_RANGE, rotate_deg: float = ROTATE_DEG,
                 invert_prob: float = 0.0) -> None:
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandAffined,
            RandFlipd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandScaleIntensityd,
            RandScaleIntensityFixedMeand,
        )

        self.patch = tuple(int(s) for s in patch_zyx)
        self.foreground_prob = foreground_prob
        self.augment = augment
        self.affine_prob = affine_prob
        self.invert_prob = invert_prob
        anisotropic = min(self.patch) / max(self.patch) < 0.5
        rot = math.radians(rotate_deg)
        # A window holding the patch after the widest zoom-out and rotation (a square turned by r spans
        # cos r + sin r of its side, at most sqrt 2 at 45 degrees).
        spread = scale_range[1] * (math.cos(min(rot, math.pi / 4)) + math.sin(min(rot, math.pi / 4)))
        margins = [max(AFFINE_MARGIN, spread)] * 3
        if anisotropic:
            margins[0] = AFFINE_MARGIN
        self.big = tuple(int(math.ceil(s * m)) for s, m in zip(self.patch, margins, strict=True))
        # MONAI's rotate_range is per spatial axis of the array: (z, y, x) -> rotations about those axes;
        # its scale_range holds offsets from 1 per axis.
        rotate = (rot, 0.0, 0.0) if anisotropic else (rot, rot, rot)
        in_plane = (scale_range[0] - 1.0, scale_range[1] - 1.0)
        through = (SCALE_RANGE[0] - 1.0, SCALE_RANGE[1] - 1.0) if anisotropic else in_plane
        self.affine = RandAffined(keys=("image", "label"), spatial_size=self.patch, prob=1.0,
                                  rotate_range=rotate, scale_range=(through, in_plane, in_plane),
                                  mode=("bilinear", "nearest"), padding_mode="border")
        self.intensity = Compose([
            RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),  # brightness
            RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.15),  # contrast
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.15, retain_stats=True),  # gamma
            RandGaussianNoised(keys="image", std=0.1, prob=0.1),
            RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0),
                                prob=0.1),
        ])
        flips = [RandFlipd(keys=("image", "label"), spatial_axis=AXES[a], prob=0.5) for a in flip_axes]
        self.flips = Compose(flips) if flips else None

    def __call__(self, case: CachedCase, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        use_affine = self.augment and rng.random() < self.affine_prob
        size = self.big if use_affine else self.patch
        centre = None
        labelled = [v for v in case.present_labels if len(case.foreground.get(v, ())) > 0]
        if labelled and rng.random() < self.foreground_prob:
            points = case.foreground[labelled[int(rng.integers(len(labelled)))]]
            centre = points[int(rng.integers(len(points)))]
        image, label = crop(case.image(), case.label(), size, case.pad_value, centre, rng)
        if not self.augment and self.flips is None:
            return image, label
        data = {"image": image[None], "label": label[None]}
        monai_seed = int(rng.integers(2**31 - 1))
        if use_affine:
            self.affine.set_random_state(seed=monai_seed)
            data = self.affine(data)
        if self.augment:
            self.intensity.set_random_state(seed=monai_seed + 1)
            data = self.intensity(data)
        if self.flips is not None:
            self.flips.set_random_state(seed=monai_seed + 2)
            data = self.flips(data)
        image = np.asarray(_plain(data["image"])[0], dtype=np.float32)
        if self.augment and self.invert_prob > 0 and rng.random() < self.invert_prob:
            image = -image
        label = np.asarray(_plain(data["label"])[0]).round().astype(np.uint8)
        return image, label


def _plain(x: object) -> np.ndarray:
    """MetaTensor / tensor / array -> numpy array."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(x)
