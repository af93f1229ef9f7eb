"""How the network does on left-right mirrored images: is a dataset's anatomy one it can mirror-average?

Reproduce with (about 3 minutes for ACDC's validation split on 2 threads):
    .venv/bin/python benchmarks/mirrored_input.py ../shared/data/mri_cardiac_acdc \
        [--model PATH] [--json reports/mirrored/mri_cardiac_acdc.json]

Each validation case is mirrored along its first voxel axis (x: the left-right axis in the shared sets,
whose directions are the identity or, for the hippocampus, x and y reversed), segmented without mirror
averaging (``InferenceOptions(mirror=False)``), and its label map mirrored back before scoring, so
the Dice is comparable with ``universalseg evaluate --no-mirror``. Labels are not swapped: use it on
datasets without left/right pairs. A score far below the plain one means that the network relies on
the anatomy's handedness there (the heart), and the catalog must give those tasks no ``mirror``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk
import torch

from UniversalSegLib.api import segment
from UniversalSegLib.inference import InferenceOptions
from UniversalSegLib.training.evaluate import evaluate_dataset, markdown_table, write_report


def mirrored_segment(image: str | Path | sitk.Image, **kwargs: object):
    """``segment`` on the x-mirrored image, its label map mirrored back onto the original voxels."""
    original = image if isinstance(image, sitk.Image) else sitk.ReadImage(str(image))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(original)[:, :, ::-1].copy())
    flipped.CopyInformation(original)
    result = segment(flipped, **kwargs)
    labels = sitk.GetImageFromArray(sitk.GetArrayFromImage(result.labels)[:, :, ::-1].copy())
    labels.CopyInformation(result.labels)
    result.labels = labels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with dataset.json")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--split", default="val", help="val, train or all (default: val)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    report = evaluate_dataset(args.dataset, model=args.model, split=args.split, segment_fn=mirrored_segment,
                              options=InferenceOptions(mirror=False))
    report["input"] = "mirrored along x, labels mirrored back"
    print(markdown_table(report))
    if args.json:
        write_report(report, args.json)
    print(f"mean Dice {report['mean_dice']:.3f} over {len(report['cases'])} cases")


if __name__ == "__main__":
    main()
