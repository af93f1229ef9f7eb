"""Record refine-by-default decisions in a model manifest from ``universalseg evaluate --refine`` reports.

    universalseg evaluate ../shared/data/ct_headneck_openkbp --split val --limit N --refine-task all \
        --json reports/refine/openkbp.json                  # coarse and refined Dice per label, same cases
    .venv/bin/python benchmarks/refine_policy.py reports/refine/*.json \
        [--manifest UniversalSegLib/weights/universalseg-small.json] [--dry-run]

Each task is refined by default when refinement raised its Dice by at least ``REFINE_GAIN`` (0.01) on the
report's cases and the refined Dice is not below the coarse figure on record
(:mod:`UniversalSegLib.refine.decision`). The manifest's ``inference_policy`` is validated before it is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from UniversalSegLib.api import DEFAULT_MODEL
from UniversalSegLib.refine.decision import record_decisions
from UniversalSegLib.safe_write import atomic_output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MODEL.with_suffix(".json"))
    parser.add_argument("--dry-run", action="store_true", help="print the decisions, write nothing")
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text(encoding="utf-8"))
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in args.reports]
    print("| task | dataset | cases | coarse | refined | change | refined by default |\n|---|---|---|---|---|---|---|")
    for d in record_decisions(manifest, reports):
        print(f"| {d.task} | {d.dataset} | {d.cases} | {d.coarse_dice:.3f} | {d.refined_dice:.3f} | {d.gain:+.3f} | "
              f"{'yes' if d.refine else 'no'} |")
    if not args.dry_run:
        with atomic_output(args.manifest, overwrite=True) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.manifest}")


if __name__ == "__main__":
    main()
