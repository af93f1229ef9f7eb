"""Whole-process time, peak memory and stage breakdown of `universalseg segment` on the two samples.

Reproduce with:  .venv/bin/python benchmarks/profile_segment.py [--cases hippo kbp] [--runtimes torch onnx]
                     [--mirror on off] [--threads 2] [--runs 1] [--json OUT.json]

Each configuration runs the real CLI in a fresh process (``--threads 2 --profile``), so the figures include
interpreter start, imports, model loading and writing. The ONNX graph is exported (and cached) once before the
timed runs; that export time is printed apart. For every run the table gives the wall time measured from outside,
the process's CPU seconds (user + system; less sensitive to a busy machine, about twice a quiet 2-core run's
wall time in the network-bound part), the peak RSS the profile recorded, the mean Dice against the sample's
reference labels and, for onnx, the number of voxels whose label differs from the torch run of the same
configuration. The stage table follows.

Targets (issue 27): head-and-neck CT sample <= 5 s and <= 800 MB, Dice within 0.003 of torch; hippocampus <= 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "hippo": (REPO / "samples" / "hippo_sample.nii.gz", REPO / "samples" / "hippo_sample_label.nii.gz",
              ["--modality", "MR-T1", "--group", "Hippocampus"]),
    "kbp": (REPO / "samples" / "kbp_sample.nii.gz", REPO / "samples" / "kbp_sample_label.nii.gz",
            ["--modality", "CT", "--group", "Head and neck organs at risk"]),
}
SHOWN = ("import", "setup", "read", "load_model", "resample", "normalise", "sliding_window", "network", "mirror",
         "mirror_network", "resample_back", "vote", "keep_largest", "write")


def mean_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over the reference's labels (a label absent from both counts 1)."""
    scores = []
    for value in (int(v) for v in np.unique(reference) if v):
        a, b = labels == value, reference == value
        total = int(a.sum() + b.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return float(np.mean(scores))


def run(case: str, runtime: str, mirror: bool, threads: int, workdir: Path, env: dict) -> dict:
    image, _, extra = CASES[case]
    out = workdir / f"{case}-{runtime}-{'mirror' if mirror else 'plain'}.nii.gz"
    profile = out.with_suffix("").with_suffix(".profile.json")
    command = [sys.executable, "-m", "UniversalSegLib.cli", "segment", str(image), "-o", str(out), *extra,
               "--runtime", runtime, "--threads", str(threads), "--quiet", "--overwrite", "--profile", str(profile),
               "--mirror" if mirror else "--no-mirror"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    report = json.loads(profile.read_text(encoding="utf-8"))
    return {"case": case, "runtime": runtime, "mirror": mirror, "wall_s": wall, "report": report,
            "labels": sitk.GetArrayFromImage(sitk.ReadImage(str(out)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["hippo", "kbp"], choices=sorted(CASES))
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--mirror", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="runs per configuration (the fastest is kept)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if "onnx" in args.runtimes:  # export outside the timed runs
        from UniversalSegLib.api import DEFAULT_MODEL
        from UniversalSegLib.onnx_runtime import load_hermes

        started = time.perf_counter()
        load_hermes(DEFAULT_MODEL)
        print(f"ONNX graph ready (export or cache lookup) in {time.perf_counter() - started:.1f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            reference = sitk.GetArrayFromImage(sitk.ReadImage(str(CASES[case][1])))
            for mirror in (m == "on" for m in args.mirror):
                torch_labels = None
                for runtime in args.runtimes:
                    best = min((run(case, runtime, mirror, args.threads, Path(tmp), env) for _ in range(args.runs)),
                               key=lambda r: r["wall_s"])
                    best["dice"] = mean_dice(best["labels"], reference)
                    if runtime == "torch":
                        torch_labels = best["labels"]
                    best["differs"] = None if torch_labels is None else int((best["labels"] != torch_labels).sum())
                    rows.append(best)
                    print(f"  {case} {runtime} mirror={mirror}: {best['wall_s']:.2f} s", file=sys.stderr)
    print(f"\n{args.threads} threads, one process per run, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| case | runtime | mirror | wall s | CPU s | peak RSS MB | network calls | mean Dice | voxels != torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rep = r["report"]
        differs = "" if r["differs"] is None or r["runtime"] == "torch" else str(r["differs"])
        print(f"| {r['case']} | {r['runtime']} | {'on' if r['mirror'] else 'off'} | {r['wall_s']:.2f} | "
              f"{rep.get('cpu_seconds', float('nan')):.1f} | {rep['peak_rss_mb']:.0f} | {len(rep['network_calls'])} | "
              f"{r['dice']:.4f} | {differs} |")
    print("\nStage seconds (exclusive; `other`: in no stage):\n")
    print("| case | runtime | mirror | " + " | ".join(SHOWN) + " | other |")
    print("|---|---|---|" + "---|" * (len(SHOWN) + 1))
    for r in rows:
        stages = r["report"]["stages"]
        cells = [f"{stages[s]['seconds']:.2f}" if s in stages else "-" for s in SHOWN]
        print(f"| {r['case']} | {r['runtime']} | {'on' if r['mirror'] else 'off'} | " + " | ".join(cells)
              + f" | {r['report']['other_seconds']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "labels"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
