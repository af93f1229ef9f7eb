"""Universal model vs task-specific baselines on the validation splits, per dataset and label.

Reproduce with:
    .venv/bin/python benchmarks/universal_vs_specific.py \
        --universal UniversalSegLib/weights/universalseg-small.pt \
        --baseline runs/baseline/baseline.json          # from: universalseg train configs/baseline.yaml
        [--datasets ct_headneck_openkbp mri_hippocampus_msd ...] [--limit N] [--reports reports/]
        [--keep-largest | --no-keep-largest]        # default: the catalog's keep_largest tasks, both sides

Both sides run the same `evaluate` path (the `segment` inference on each validation case, Dice and
HD95 over the cases where the label is present). Without --baseline only the universal column is
filled. With --reports the universal model's per-dataset JSON reports are written there, ready for
`universalseg export --evaluation reports/*.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from UniversalSegLib.inference import InferenceOptions
from UniversalSegLib.training.evaluate import evaluate_dataset, write_report

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATASETS = ["ct_headneck_openkbp", "mri_hippocampus_msd", "mri_cardiac_acdc", "mri_leftatrium_la2018",
                    "mri_braintumor_brats2015"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--universal", type=Path, default=None, help="universal checkpoint (default: bundled)")
    parser.add_argument("--baseline", type=Path, help="baseline.json of a `mode: baseline` training run")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    parser.add_argument("--limit", type=int, help="first N validation cases per dataset")
    parser.add_argument("--reports", type=Path, help="folder for the universal model's JSON reports")
    parser.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                        help="largest connected component of every task / of none (default: catalog flags)")
    args = parser.parse_args()
    baselines = json.loads(args.baseline.read_text())["checkpoints"] if args.baseline else {}
    if args.reports:
        args.reports.mkdir(parents=True, exist_ok=True)
    print("| dataset | label | universal Dice | task-specific Dice | universal HD95 | n |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        options = InferenceOptions(keep_largest=args.keep_largest)
        ours = evaluate_dataset(SHARED / name, model=args.universal, split="val", limit=args.limit, options=options)
        theirs = (evaluate_dataset(SHARED / name, model=baselines[name], split="val", limit=args.limit,
                                   options=options)
                  if name in baselines else None)
        if args.reports:
            write_report(ours, args.reports / f"{name}.json")
        for label, value in ours["labels"].items():
            other = f"{theirs['labels'][label]['dice']:.3f}" if theirs else "-"
            print(f"| {name} | {label} | {value['dice']:.3f} | {other} | {value['hd95']:.2f} | {value['n']} |")
        other = f"**{theirs['mean_dice']:.3f}**" if theirs else "-"
        print(f"| {name} | **mean** | **{ours['mean_dice']:.3f}** | {other} | | |")


if __name__ == "__main__":
    main()
