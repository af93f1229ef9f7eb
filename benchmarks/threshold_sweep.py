"""Dice per label against the probability threshold: would another threshold than 0.5 serve a task better?

Reproduce with (about 15 minutes for 24 head-and-neck training CTs on one thread):
    .venv/bin/python benchmarks/threshold_sweep.py ../shared/data/ct_headneck_openkbp --split train --limit 24 \
        --model runs/stage15/final.pt --thresholds 0.3 0.4 0.5 0.6 [--json reports/thresholds/headneck.json]

Each case is segmented once (the ``segment`` path with its defaults, probabilities kept); for every threshold
the label map is then built again from those probabilities as ``segment`` builds it (a voxel goes to the most
probable task at or above the threshold, then the catalog's largest-piece step) and scored by ``evaluate``'s
code. Choose thresholds on training cases and confirm them on the validation split: both are one flag apart.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from UniversalSegLib.api import segment
from UniversalSegLib.inference import InferenceOptions, Segmenter, vote
from UniversalSegLib.training.evaluate import evaluate_dataset, write_report


class CachedProbabilities:
    """A ``segment`` stand-in for ``evaluate_dataset`` that runs the network once per image and thresholds its
    kept probabilities at ``threshold`` on every later call.

    >>> cached = CachedProbabilities()  # doctest: +SKIP
    >>> cached.threshold = 0.4; evaluate_dataset(folder, segment_fn=cached)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.threshold = 0.5
        self.results: dict[str, object] = {}

    def __call__(self, image: Path, *, tasks: list[str], options: InferenceOptions | None = None, **kwargs: object):
        key = str(image)
        if key not in self.results:
            options = replace(options or InferenceOptions(), probabilities=True)
            self.results[key] = (segment(image, tasks=tasks, options=options, **kwargs), options)
        result, options = self.results[key]
        best = labels = None
        for value, task in enumerate(result.tasks, start=1):
            prob = sitk.GetArrayFromImage(result.probabilities[task.id])
            if labels is None:
                best, labels = np.zeros(prob.shape, np.float32), np.zeros(prob.shape, np.uint8)
            vote(prob, value, self.threshold, best, labels)
        labels_image = Segmenter._keep_largest(labels, result.labels, options, result.tasks)
        return replace(result, labels=labels_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with dataset.json")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--split", default="train", help="train, val or all (default: train)")
    parser.add_argument("--limit", type=int, help="only the first N cases by id")
    parser.add_argument("--json", type=Path, help="also write {threshold: report} here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cached, reports = CachedProbabilities(), {}
    for threshold in args.thresholds:
        cached.threshold = threshold
        reports[threshold] = evaluate_dataset(args.dataset, model=args.model, split=args.split, limit=args.limit,
                                              segment_fn=cached)
    names = list(reports[args.thresholds[0]]["labels"])
    print("| label | n | " + " | ".join(f"{t:g}" for t in args.thresholds) + " |")
    print("|---|---|" + "---|" * len(args.thresholds))
    for name in [*names, "mean"]:
        cells = [r["mean_dice"] if name == "mean" else r["labels"][name]["dice"] for r in reports.values()]
        n = "" if name == "mean" else reports[args.thresholds[0]]["labels"][name]["n"]
        print(f"| {name} | {n} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_report({str(t): r for t, r in reports.items()}, args.json)


if __name__ == "__main__":
    main()
