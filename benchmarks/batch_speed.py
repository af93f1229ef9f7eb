"""``universalseg batch``: serial in-process against ``--workers 2`` (a Dask LocalCluster), same threads.

Run from the repository root (about a minute on 2 quiet cores)::

    .venv/bin/python benchmarks/batch_speed.py [--cases 8] [--threads 1] [--size 96] [--keep DIR]

The cohort is ``--cases`` copies of ``samples/hippo_sample.nii.gz``, each shifted by a few voxels and
padded with background to ``--size`` voxels a side (so each case has several sliding windows). Both
runs are the command line a user types (``universalseg batch IN -o OUT --modality MR-T1 --group
Hippocampus --threads T``, the second with ``--workers 2``), timed end to end: interpreter start, model
loading and, for Dask, starting the cluster included. It prints both wall times and whether every
label map and sidecar (less its ``seconds``) is identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"


def make_cohort(folder: Path, cases: int, size: int) -> list[str]:
    """``cases`` shifted, background-padded copies of the sample MRI; returns their output names."""
    image = sitk.ReadImage(str(SAMPLE))
    background = float(sitk.GetArrayViewFromImage(image).min())
    names = []
    for i in range(cases):
        shift = [2 * i % 7, 3 * i % 5, i % 4]
        low = [s + (size - n) // 2 for s, n in zip(shift, image.GetSize(), strict=True)]
        high = [max(0, size - n - lo) for n, lo in zip(image.GetSize(), low, strict=True)]
        padded = sitk.ConstantPad(image, low, high, background)
        name = f"case{i:02d}_T1w.nii.gz"
        sitk.WriteImage(padded, str(folder / name))
        names.append(name)
    return names


def timed_batch(inputs: Path, output: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "batch", str(inputs), "-o", str(output),
                           "--modality", "MR-T1", "--group", "Hippocampus", "--quiet", *extra],
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"batch failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def same_outputs(a: Path, b: Path, names: list[str]) -> bool:
    for name in names:
        if not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / name)))):
            return False
        side = name.replace(".nii.gz", ".json")
        x, y = (json.loads((folder / side).read_text(encoding="utf-8")) for folder in (a, b))
        x.pop("seconds"), y.pop("seconds")
        if x != y:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case, both runs")
    parser.add_argument("--size", type=int, default=96, help="voxels a side of each padded case")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        (work / "in").mkdir(parents=True)
        names = make_cohort(work / "in", args.cases, args.size)
        threads = ["--threads", str(args.threads)]
        serial = timed_batch(work / "in", work / "serial", threads)
        dask = timed_batch(work / "in", work / "dask", [*threads, "--workers", "2"])
        same = same_outputs(work / "serial", work / "dask", names)
    print(f"{args.cases} cases of {args.size}^3, {args.threads} torch thread(s) per case")
    print(f"serial:      {serial:6.1f} s")
    print(f"--workers 2: {dask:6.1f} s  ({serial / dask:.2f}x)")
    print(f"outputs identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
