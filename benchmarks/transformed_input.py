"""How the network does on mirrored, turned or contrast-inverted images: can results be averaged over such views?

Reproduce with (about 3 minutes for ACDC's validation split on 2 threads):
    .venv/bin/python benchmarks/transformed_input.py ../shared/data/mri_cardiac_acdc [--mirror] [--turns K] \
        [--invert] [--model PATH] [--json reports/mirrored/mri_cardiac_acdc.json]

Each validation case is mirrored along its first voxel axis (``--mirror``; x: the left-right axis in the
shared sets, whose directions are the identity or, for the hippocampus, x and y reversed) and/or turned by
K quarter turns in its x-y voxel plane (``--turns``; about z, the through-plane axis of ACDC's stacks),
and/or its intensities negated (``--invert``; what ``invert_prob`` does to training patches: the
2nd-98th percentile clip and z-score of MR inputs commute with it), segmented without mirror averaging
(``InferenceOptions(mirror=False)``), and its label map transformed back before scoring, so the Dice is
comparable with ``universalseg evaluate --no-mirror``. Labels are not
swapped: use it on datasets without left/right pairs. A score far below the plain one means that the
network relies on that orientation (it has learnt the heart's handedness and its pose on the frames), so
averaging over such views would hurt there.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from UniversalSegLib.api import segment
from UniversalSegLib.inference import InferenceOptions
from UniversalSegLib.training.evaluate import evaluate_dataset, markdown_table, write_report


def transform(array: np.ndarray, mirror: bool, turns: int, inverse: bool = False) -> np.ndarray:
    """A (z, y, x) array mirrored along x and turned by ``turns`` quarter turns in (y, x); ``inverse`` undoes it.

    >>> a = np.arange(24).reshape(2, 3, 4)
    >>> bool((transform(transform(a, True, 1), True, 1, inverse=True) == a).all())
    True
    """
    if inverse:
        array = np.rot90(array, -turns, axes=(1, 2))
        return np.ascontiguousarray(array[:, :, ::-1] if mirror else array)
    array = array[:, :, ::-1] if mirror else array
    return np.ascontiguousarray(np.rot90(array, turns, axes=(1, 2)))


def transformed_segment(image: str | Path | sitk.Image, mirror: bool = False, turns: int = 0, invert: bool = False,
                        **kwargs: object):
    """``segment`` on the transformed image, its label map transformed back onto the original voxels.

    A turned image keeps the origin, spacing and direction of the original (its in-plane spacing is
    equal on the data this is meant for), so only the voxels move."""
    original = image if isinstance(image, sitk.Image) else sitk.ReadImage(str(image))
    voxels = transform(sitk.GetArrayFromImage(original), mirror, turns)
    moved = sitk.GetImageFromArray(-voxels.astype(np.float32) if invert else voxels)
    moved.SetOrigin(original.GetOrigin())
    moved.SetSpacing(original.GetSpacing())
    moved.SetDirection(original.GetDirection())
    result = segment(moved, **kwargs)
    labels = sitk.GetImageFromArray(transform(sitk.GetArrayFromImage(result.labels), mirror, turns, inverse=True))
    labels.CopyInformation(original)
    result.labels = labels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with dataset.json")
    parser.add_argument("--mirror", action="store_true", help="mirror each case along its x axis")
    parser.add_argument("--turns", type=int, default=0, choices=range(4), help="quarter turns in the x-y plane")
    parser.add_argument("--invert", action="store_true", help="negate each case's intensities")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--split", default="val", help="val, train or all (default: val)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    report = evaluate_dataset(args.dataset, model=args.model, split=args.split,
                              segment_fn=partial(transformed_segment, mirror=args.mirror, turns=args.turns,
                                                 invert=args.invert),
                              options=InferenceOptions(mirror=False))
    report["input"] = (f"mirror {args.mirror}, {args.turns} quarter turns in x-y, inverted {args.invert}; "
                       "labels transformed back")
    print(markdown_table(report))
    if args.json:
        write_report(report, args.json)
    print(f"mean Dice {report['mean_dice']:.3f} over {len(report['cases'])} cases")


if __name__ == "__main__":
    main()
