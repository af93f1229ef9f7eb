"""Time `universalseg segment` on one OpenKBP CT case for each model preset (fp32, CPU, 2 threads).

Reproduce with:  .venv/bin/python benchmarks/segment_presets.py [--case PATH] [--presets paper small]

Each preset is built with random weights (speed and memory do not depend on the values), saved in
our checkpoint format, and run through the real CLI in a child process; the table reports wall
time, the child's peak RSS, the parameter count and the checkpoint size.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.models import HermesNet, preset, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO.parent / "shared" / "data" / "ct_headneck_openkbp" / "images" / "kbp_001.nii.gz"
PATCH = {"paper": [128, 128, 128], "small": [96, 96, 96]}


def run_preset(name: str, case: Path, workdir: Path) -> dict:
    catalog = Catalog.load()
    task_ids = [t.id for t in catalog.tasks]
    modality_ids = list(catalog.modalities)
    model = HermesNet(preset(name, len(task_ids), len(modality_ids)))
    checkpoint = workdir / f"{name}.pt"
    save_checkpoint(checkpoint, model, task_ids=task_ids, modality_ids=modality_ids,
                    catalog_version=catalog.version, inference={"spacing": None, "patch_size": PATCH[name]})
    command = [sys.executable, "-m", "UniversalSegLib.cli", "segment", str(case), "-o", str(workdir / f"{name}.nii.gz"),
               "--group", "Head and neck organs at risk", "--modality", "CT", "--model", str(checkpoint),
               "--threads", "2", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children run so far
    return {"preset": name, "seconds": seconds, "peak_rss_mib": peak_kib / 1024,
            "parameters": sum(p.numel() for p in model.parameters()),
            "file_mib": checkpoint.stat().st_size / 2**20, "window": PATCH[name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])  # smallest first: RSS is a running max
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            rows.append(run_preset(name, args.case, Path(tmp)))
    print(f"case: {args.case.name}, 7 head-and-neck tasks, CPU, 2 threads, torch {torch.__version__}\n")
    print("| preset | parameters | checkpoint MiB | window | wall s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['parameters']:,} | {r['file_mib']:.1f} | {'x'.join(map(str, r['window']))} "
              f"| {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
