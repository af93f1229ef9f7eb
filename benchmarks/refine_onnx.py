"""Is ONNX Runtime faster than torch for LiteMedSAM's image encoder on this CPU? (It decides ``encoder="auto"``.)

Reproduce with:  .venv/bin/python benchmarks/refine_onnx.py [--runs 5]

Exports our TinyViT to ONNX (opset 17), checks that both give the same embedding, then times
one 256 x 256 slice per call with 1 and 2 threads, alternating the two runtimes so that load from
other processes hits both alike. Prints a markdown table with the median seconds per slice.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from UniversalSegLib.onnx_runtime import OnnxEncoder
from UniversalSegLib.refine.litemedsam import LiteMedSAM, wheel_checkpoint
from UniversalSegLib.volume import file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    model = LiteMedSAM.load("original", encoder="torch")
    x = torch.rand(1, 3, 256, 256)
    print("| threads | torch s/slice | ONNX Runtime s/slice | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        onnx = OnnxEncoder.create(model.image_encoder, file_sha256(wheel_checkpoint()), threads=threads)
        with torch.inference_mode():
            reference = model.image_encoder(x)
            difference = float(np.abs(onnx(x).numpy() - reference.numpy()).max())
            times: dict[str, list[float]] = {"torch": [], "onnx": []}
            for _ in range(args.runs):
                for name, run in (("torch", model.image_encoder), ("onnx", onnx)):
                    start = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - start)
        t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
        print(f"| {threads} | {t:.2f} | {o:.2f} | {t / o:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
