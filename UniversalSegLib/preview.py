"""A PNG preview: three orthogonal slices of the image with the label map overlaid.

Slices go through the centre of the segmented voxels (the image centre when nothing was found),
shown in the canonical LPS orientation with true physical proportions.

>>> write_preview(image, result, "preview.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .inference import SegmentationResult
from .preprocess import canonical_grid, to_grid
from .volume import atomic_write


def write_preview(image: sitk.Image, result: SegmentationResult, path: str | Path) -> Path:
    """Write axial, coronal and sagittal slices with coloured labels and a legend to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    grid = canonical_grid(image)
    pixels = sitk.GetArrayFromImage(to_grid(image, grid))
    labels = sitk.GetArrayFromImage(to_grid(result.labels, grid, sitk.sitkNearestNeighbor, default=0))
    low, high = (-160.0, 240.0) if result.modality.kind == "CT" else tuple(np.percentile(pixels, [1, 99]))
    centre = [int(round(c.mean())) for c in np.nonzero(labels)] if labels.any() else [s // 2 for s in labels.shape]
    sx, sy, sz = grid.GetSpacing()
    views = [  # (title, image slice, label slice, aspect = row spacing / column spacing); LPS arrays are (z, y, x)
        ("axial", pixels[centre[0]], labels[centre[0]], sy / sx),
        ("coronal", pixels[:, centre[1]][::-1], labels[:, centre[1]][::-1], sz / sx),
        ("sagittal", pixels[:, :, centre[2]][::-1], labels[:, :, centre[2]][::-1], sz / sy),
    ]
    colours = ListedColormap([(0, 0, 0, 0)] + [(*t.color_float(), 0.55) for t in result.tasks])
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6), dpi=100)
    for ax, (title, pix, lab, aspect) in zip(axes, views, strict=True):
        ax.imshow(pix, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
        ax.imshow(lab, cmap=colours, vmin=0, vmax=len(result.tasks), aspect=aspect, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    found = [t for v, t in enumerate(result.tasks, start=1) if (labels == v).any()]
    handles = [Patch(color=t.color_float(), label=t.name) for t in found] or [Patch(color="w", label="nothing found")]
    figure.legend(handles=handles,
                  loc="lower center", ncol=min(len(found) or 1, 7), fontsize=8, frameon=False)
    figure.suptitle(f"UniversalSeg: {result.modality.name} - {result.model}")
    path = Path(path)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
