"""Universal model vs task-specific baselines on the validation splits, per dataset and label.

Reproduce with:
    .venv/bin/python benchmarks/universal_vs_specific.py \
        --universal UniversalSegLib/weights/universalseg-small.pt \
        --baseline runs/baseline/baseline.json          # from: universalseg train configs/baseline.yaml
        [--datasets ct_headneck_openkbp mri_hippocampus_msd ...] [--limit N] [--reports reports/]
        [--keep-largest | --no-keep-largest]        # default: the catalog's keep_largest tasks, both sides
        [--mirror | --no-mirror]                    # default: mirror averaging of the catalog's tasks, both sides

Both sides run the same `evaluate` path (the `segment` inference on each validation case, Dice and
HD95 over the cases where the label is present). Without --baseline only the universal column is
filled. --baseline also takes a baseline run's folder (e.g. runs/baseline_equal), whose finished
datasets (`baseline/<dataset>/best.pt`) are compared while the others still train.
With --reports the universal model's per-dataset JSON reports are written there, ready for
`universalseg export --evaluation reports/*.json`; --universal-reports reads them back instead of
evaluating the universal model again (they must match --limit, --split, --keep-largest and --mirror;
a report older than mirror averaging counts as --no-mirror).
--baseline-reports writes the baselines' reports; --baseline-from-reports reads them back instead of
evaluating the baselines again (same checks), so a table of two finished evaluations costs nothing:
    .venv/bin/python benchmarks/universal_vs_specific.py --universal-reports reports/v070 \
        --baseline-from-reports reports/baseline_full --datasets mri_hippocampus_msd ...
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


def baseline_checkpoints(path: Path) -> dict[str, Path]:
    """Dataset name -> baseline checkpoint, from a ``baseline.json`` or a baseline run's output folder.

    A folder gives its ``baseline.json`` when the run finished, else each ``baseline/<dataset>/best.pt``
    that exists (a dataset whose baseline is still training has none yet).
    """
    if path.is_dir() and not (path / "baseline.json").is_file():
        return {best.parent.name: best for best in sorted((path / "baseline").glob("*/best.pt"))}
    manifest = path / "baseline.json" if path.is_dir() else path
    if not manifest.is_file():
        raise SystemExit(f"error: no baseline manifest at {manifest}. What to do: pass the baseline.json or the "
                         "output folder of a `mode: baseline` training run")
    return {name: Path(p) for name, p in json.loads(manifest.read_text(encoding="utf-8"))["checkpoints"].items()}


def read_report(folder: Path, name: str, split: str, limit: int | None, keep_largest: bool | None,
                mirror: bool = True) -> dict:
    """The report written earlier for ``name`` in ``folder``, checked against this run's split, limit,
    keep_largest and mirror."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"error: no report {path}. What to do: run once with --reports / --baseline-reports "
                         f"{folder}, or `universalseg evaluate ... --json {path}`")
    report = json.loads(path.read_text(encoding="utf-8"))
    wanted = {"split": split, "keep_largest": "catalog" if keep_largest is None else keep_largest, "mirror": mirror}
    for key, value in wanted.items():
        if report.get(key, False if key == "mirror" else None) != value:
            raise SystemExit(f"error: {path} has {key} = {report.get(key)!r}, this run asks for {value!r}. "
                             "What to do: evaluate again (--reports) with these settings")
    recorded = report.get("limit", len(report["cases"]))  # older reports lack "limit": count their cases
    if recorded != limit:
        raise SystemExit(f"error: {path} was made with --limit {recorded}, this run asks for --limit {limit}. "
                         "What to do: evaluate again (--reports) with this limit")
    return report


def table_rows(name: str, ours: dict, theirs: dict | None) -> list[str]:
    """Markdown rows of one dataset: one per label, then the means in bold."""
    rows = []
    for label, value in ours["labels"].items():
        other = f"{theirs['labels'][label]['dice']:.3f}" if theirs else "-"
        rows.append(f"| {name} | {label} | {value['dice']:.3f} | {other} | {value['hd95']:.2f} | {value['n']} |")
    other = f"**{theirs['mean_dice']:.3f}**" if theirs else "-"
    rows.append(f"| {name} | **mean** | **{ours['mean_dice']:.3f}** | {other} | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--universal", type=Path, default=None, help="universal checkpoint (default: bundled)")
    parser.add_argument("--baseline", type=Path,
                        help="baseline.json or output folder of a `mode: baseline` training run")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    parser.add_argument("--data-root", type=Path, default=SHARED, help="folder holding the datasets")
    parser.add_argument("--split", default="val", help="val, train or all (default: val)")
    parser.add_argument("--limit", type=int, help="first N validation cases per dataset")
    parser.add_argument("--reports", type=Path, help="folder for the universal model's JSON reports")
    parser.add_argument("--universal-reports", type=Path,
                        help="read the universal side from the reports an earlier --reports run wrote here")
    parser.add_argument("--baseline-reports", type=Path, help="folder for the baselines' JSON reports")
    parser.add_argument("--baseline-from-reports", type=Path,
                        help="read the task-specific side from the reports written earlier here")
    parser.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                        help="largest connected component of every task / of none (default: catalog flags)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="mirror averaging of the tasks the catalog gives a mirror (default) / of none")
    args = parser.parse_args()
    baselines = baseline_checkpoints(args.baseline) if args.baseline else {}
    for folder in (args.reports, args.baseline_reports):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    options = InferenceOptions(keep_largest=args.keep_largest, mirror=args.mirror)

    def evaluate(name: str, model: Path | None) -> dict:
        return evaluate_dataset(args.data_root / name, model=model, split=args.split, limit=args.limit,
                                options=options)

    print("| dataset | label | universal Dice | task-specific Dice | universal HD95 | n |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        if args.universal_reports:
            ours = read_report(args.universal_reports, name, args.split, args.limit, args.keep_largest,
                               args.mirror)
        else:
            ours = evaluate(name, args.universal)
        if args.baseline_from_reports:
            theirs = read_report(args.baseline_from_reports, name, args.split, args.limit, args.keep_largest,
                                 args.mirror)
        else:
            theirs = evaluate(name, baselines[name]) if name in baselines else None
        if args.reports:
            write_report(ours, args.reports / f"{name}.json")
        if args.baseline_reports and theirs:
            write_report(theirs, args.baseline_reports / f"{name}.json")
        print("\n".join(table_rows(name, ours, theirs)), flush=True)


if __name__ == "__main__":
    main()
