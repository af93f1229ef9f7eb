"""Adding a structure to the bundled model by training its task prior only (``universalseg add-task``, issue 30).

Adds the CHAOS liver (MR T2-SPIR, label 1) to ``weights/universalseg-small.pt``: trained on the CHAOS training
split (``splits/mri_abdomen_chaos.json``, subject-level, made by the training code's hash rule), validated on its
validation split through the run-time inference path, with a bounded iteration budget on the CPU. Target: Dice
>= 0.85 held out. Prints one JSON line per run.

    .venv/bin/python benchmarks/incremental.py --iterations 200 --out out/incremental   # Dice 0.33, 3 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from UniversalSegLib.training.add_task import add_task  # noqa: E402
from UniversalSegLib.training.data import load_or_make_split, read_dataset  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mri_abdomen_chaos"
TARGET = 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 7.7))
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 64, 32))
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--out", default="out/incremental")
    args = parser.parse_args(argv)
    train, val = load_or_make_split(read_dataset(DATA), ROOT / "splits")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def progress(i: int, n: int, loss: float) -> None:
        if i % 10 == 0 or i == n:
            print(f"iteration {i}/{n} loss {loss:.3f} {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    report = add_task("liver", "MR-T2", DATA, out / "universalseg-small-liver.pt", iterations=args.iterations,
                      spacing=args.spacing, patch=args.patch, lr=args.lr, split=(train, val), overwrite=True,
                      measure_untrained=True, progress=progress)
    print(json.dumps({"task": "liver", "mode": "prior only", "iterations": args.iterations, "train_cases": len(train),
                      "val_cases": len(val), "spacing": args.spacing, "patch": args.patch,
                      "untrained_dice": report.untrained_dice, "val_dice": report.dice,
                      "val_dice_per_case": report.dice_per_case, "target": TARGET,
                      "reached": report.dice is not None and report.dice >= TARGET,
                      "seconds": round(report.seconds, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
