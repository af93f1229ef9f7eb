"""Cohorts: ``universalseg batch`` runs every case of a folder (or a CSV) through ``segment``'s own code path.

    universalseg batch cases/ -o seg/ --group Hippocampus                      # serial, in this process
    universalseg batch cases/ -o seg/ --group Hippocampus --workers 4 --threads 2   # local Dask cluster
    universalseg batch --cases cohort.csv -o seg/ --scheduler tcp://head:8786  # a running Dask cluster

Every ``segment`` option applies to every case. Each case writes ``seg/<input name>`` (a DICOM folder or
another ``--format``: ``<name>.nii.gz``, ``.seg.nrrd``, ``.dcm``, ``.rtstruct.dcm``) and its JSON sidecar,
whose ``batch`` key records the model's sha256 and the options. A rerun skips the cases whose output and
sidecar match them; an existing output made with another model or other options is refused, before any
work, unless ``--overwrite``. A case that fails (unreadable file, wrong modality, ...) is listed with its
error in ``seg/batch_summary.csv`` and ``seg/batch_summary.json`` and does not stop the others; the exit
status is then 1. Writes go through :mod:`UniversalSegLib.safe_write` (atomic; never onto an input).

``--workers N`` starts a Dask ``LocalCluster`` on loopback with N worker processes, each running one case
at a time with ``--threads`` torch threads (default: the CPU count divided by N); ``--scheduler`` submits
to an existing cluster instead (dask-jobqueue, the Dask Kubernetes operator, ``dask scheduler``), whose
workers must reach the same paths and should run one task at a time (``dask worker --nthreads 1``). The
cases run the same in-process ``run_segment`` call as the serial path, so the outputs are the same.
Dask is imported only here, and only with ``--workers`` or ``--scheduler``.

A CSV for ``--cases`` has a header with an ``image`` column (paths relative to the CSV's folder) and an
optional ``name`` column (the output's name without extension).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError, UniversalSegError
from .safe_write import atomic_output, check_outputs, same_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SUMMARY = "batch_summary"
# Options that change how fast a case runs or what is printed, not what it writes: not part of the record.
RUN_CONTROL = frozenset({"command", "input", "output", "cases", "workers", "scheduler", "threads", "quiet",
                         "overwrite", "image", "sidecar_extra", "profile"})
HASHED = ("model", "weights", "medsam2_checkpoint")  # file options recorded by their sha256

Row = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One input of the cohort and where its results go."""

    name: str
    image: Path
    output: Path
    sidecar: Path


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stem(path: Path) -> str:
    lower = path.name.lower()
    for suffix in (".seg.nrrd", *IMAGE_SUFFIXES):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def output_name(image: Path, fmt: str | None, name: str | None = None) -> str:
    """The output file name of a case: the input's name, or its stem with the extension ``fmt`` needs.

    >>> output_name(Path("a/case1.nii.gz"), None), output_name(Path("a/CT_DIR"), None)
    ('case1.nii.gz', 'CT_DIR.nii.gz')
    >>> output_name(Path("a/case1.mha"), "nrrd"), output_name(Path("CT_DIR"), "rtstruct", "p01")
    ('case1.seg.nrrd', 'p01.rtstruct.dcm')
    """
    stem = name or _stem(image)
    lower = image.name.lower()
    if fmt in ("dicom-seg", "rtstruct", "nrrd"):
        return stem + {"dicom-seg": ".dcm", "rtstruct": ".rtstruct.dcm", "nrrd": ".seg.nrrd"}[fmt]
    kept = IMAGE_SUFFIXES if fmt is None else (".nii.gz", ".nii", ".mha", ".mhd")
    suffix = next((s for s in kept if lower.endswith(s)), ".nii.gz") if not image.is_dir() else ".nii.gz"
    return stem + (image.name[len(image.name) - len(suffix):] if lower.endswith(suffix) else suffix)


def find_cases(args: argparse.Namespace) -> list[Case]:
    """The cases of INPUT_DIR (image files and DICOM series folders, sorted) or of ``--cases CSV``."""
    from .writers import sidecar_path

    out_dir = Path(args.output)
    if bool(args.input) == bool(args.cases):
        raise InputError("batch needs INPUT_DIR or --cases CSV (one of them)",
                         "universalseg batch cases/ -o seg/   or   universalseg batch --cases cohort.csv -o seg/")
    named: list[tuple[Path, str | None]] = []
    if args.cases:
        named = _read_csv(Path(args.cases))
    else:
        folder = Path(args.input)
        if not folder.is_dir():
            raise InputError(f"input folder '{folder}' does not exist", "pass a folder of images, or --cases CSV")
        skip = [p for p in (out_dir, args.probabilities, args.preview) if p]
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or any(same_file(path, s) for s in skip):
                continue
            if path.is_dir() or (path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)):
                named.append((path, None))
        if not named:
            raise InputError(f"no image in '{folder}'", f"put {', '.join(IMAGE_SUFFIXES)} files or DICOM folders there")
    cases = []
    for image, name in named:
        output = out_dir / output_name(image, args.format, name)
        cases.append(Case(name=_stem(output), image=image, output=output, sidecar=sidecar_path(output)))
    return cases


def _read_csv(path: Path) -> list[tuple[Path, str | None]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise InputError(f"cannot read cases file '{path}' ({err.strerror})", "pass an existing CSV") from None
    if not rows or "image" not in rows[0]:
        raise InputError(f"cases file '{path}' has no 'image' column", "a header line 'image' (and optionally "
                         "'name'), then one input per line")
    return [(path.parent / row["image"].strip(), (row.get("name") or "").strip() or None)
            for row in rows if (row.get("image") or "").strip()]


def run_record(args: argparse.Namespace) -> dict:
    """What the sidecar's ``batch`` key must hold for a case to count as done: model sha256 and options."""
    from .api import DEFAULT_MODEL

    options = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_CONTROL and k not in HASHED}
    files = {"model": args.model or DEFAULT_MODEL, **{k: getattr(args, k, None) for k in HASHED[1:]}}
    record: dict = {}
    for key, value in files.items():
        if value is not None and Path(value).is_file():
            record[f"{key}_sha256"] = sha256(value)
        elif key == "model" or value is not None:
            record[key] = str(value)  # e.g. --weights finetuned; a missing model fails in the cases
    record["model_name"] = Path(args.model or DEFAULT_MODEL).name
    record["options"] = json.loads(json.dumps(options, default=str))
    return record


def case_state(case: Case, record: dict) -> str:
    """``"todo"`` (nothing there), ``"done"`` (output and a matching sidecar), else why the output conflicts."""
    have_out, have_side = case.output.exists(), case.sidecar.is_file()
    if not have_out and not case.sidecar.exists():
        return "todo"
    if not (have_out and have_side):
        return f"incomplete: '{case.output if have_out else case.sidecar}' without its pair"
    try:
        found = json.loads(case.sidecar.read_text(encoding="utf-8")).get("batch")
    except (OSError, ValueError, AttributeError):
        return f"sidecar '{case.sidecar}' is unreadable"
    if found == record:
        return "done"
    if not isinstance(found, dict):
        return "not written by universalseg batch"
    if found.get("model_sha256") != record.get("model_sha256"):
        return f"made with another model ({found.get('model_name')}, sha256 {str(found.get('model_sha256'))[:12]})"
    old, new = found.get("options", {}), record["options"]
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "made with other options (" + ("; ".join(diff) or "refinement weights") + ")"


def case_args(args: argparse.Namespace, case: Case, overwrite: bool, threads: int | None, record: dict
              ) -> argparse.Namespace:
    """The ``segment`` arguments of one case (quiet; its own probability folder and preview)."""
    ns = argparse.Namespace(**vars(args))
    ns.image, ns.output, ns.quiet = str(case.image), str(case.output), True
    ns.overwrite, ns.threads = overwrite, threads
    ns.probabilities = str(Path(args.probabilities) / case.name) if args.probabilities else None
    ns.preview = str(Path(args.preview) / f"{case.name}.png") if args.preview else None
    ns.sidecar_extra = {"batch": record}
    return ns


def run_case(ns: argparse.Namespace) -> Row:
    """Segment one case (on a Dask worker or in this process); never raises for a failed case."""
    from .cli import run_segment
    from .writers import sidecar_path

    start = time.perf_counter()
    row: Row = {"case": Path(ns.output).name, "image": ns.image, "output": ns.output, "status": "done", "error": ""}
    try:
        if ns.probabilities:
            Path(ns.probabilities).mkdir(parents=True, exist_ok=True)
        _, written = run_segment(ns)
        sidecar = sidecar_path(ns.output)
        if sidecar not in written:  # .seg.nrrd and DICOM outputs have no sidecar of their own: write the record
            with atomic_output(sidecar, ns.overwrite, inputs=[ns.image]) as tmp:
                tmp.write_text(json.dumps({"source_image": ns.image, "output": Path(ns.output).name,
                                           **ns.sidecar_extra}, indent=2))
    except UniversalSegError as err:
        row.update(status="failed", error=str(err))
    except Exception as err:  # noqa: BLE001 - a broken case is reported, the cohort goes on
        row.update(status="failed", error=f"{type(err).__name__}: {err}".strip())
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def run_batch(args: argparse.Namespace) -> int:
    """``universalseg batch``: plan, refuse conflicts, run the cases, write the summary; 1 if any case failed."""
    from tqdm import tqdm

    out_dir = Path(args.output)
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1", "pass --workers 2, or leave it out to run serially")
    if args.workers and args.scheduler:
        raise InputError("--workers and --scheduler exclude each other", "start a local cluster or join one")
    cases = find_cases(args)
    for folder in filter(None, (out_dir, args.preview)):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create folder '{folder}' ({err.strerror})", "choose another path") from None
    summary = [out_dir / f"{SUMMARY}.csv", out_dir / f"{SUMMARY}.json"]
    inputs = [c.image for c in cases] + [p for p in (args.model, args.cases, getattr(args, "weights", None)) if p]
    extra = [Path(args.preview) / f"{c.name}.png" for c in cases] if args.preview else []
    # Every path at once: none may be an input (output folder == input folder), none two cases' (same names).
    check_outputs([*summary, *(p for c in cases for p in (c.output, c.sidecar)), *extra], inputs, overwrite=True)
    record = run_record(args)
    states = {c: case_state(c, record) for c in cases}
    conflicts = [f"{c.output.name}: {s}" for c, s in states.items() if s not in ("todo", "done")]
    if conflicts and not args.overwrite:
        more = f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise OutputError(f"{len(conflicts)} existing output(s) in '{out_dir}' were not made with this model and "
                          f"these options ({'; '.join(conflicts[:5])}{more})",
                          "pass --overwrite to redo them, or choose another -o folder")
    workers = args.workers or 0
    threads = args.threads or (max(1, (os.cpu_count() or 1) // workers) if workers else None)
    jobs = [(c, case_args(args, c, states[c] != "todo", threads, record)) for c in cases if states[c] != "done"]
    skipped = len(cases) - len(jobs)
    if skipped and not args.quiet:
        print(f"{skipped} case(s) already done with this model and these options: skipped", file=sys.stderr)
    start = time.perf_counter()
    with tqdm(total=len(jobs), desc="cases", unit="case", disable=args.quiet, file=sys.stderr) as bar:
        def done(row: Row) -> None:
            bar.update()
            if row["status"] == "failed":
                bar.write(f"failed: {row['case']}: {row['error']}", file=sys.stderr)
        if args.workers or args.scheduler:
            rows = _run_dask([ns for _, ns in jobs], args.scheduler, workers, threads or 1, done)
        else:
            rows = []
            for _, ns in jobs:
                rows.append(run_case(ns))
                done(rows[-1])
    seconds = time.perf_counter() - start
    by_output = {row["output"]: row for row in rows}
    table = [by_output.get(str(c.output)) or {"case": c.output.name, "image": str(c.image), "output": str(c.output),
                                              "status": "skipped", "error": "", "seconds": 0.0} for c in cases]
    counts = {s: sum(r["status"] == s for r in table) for s in ("done", "skipped", "failed")}
    report = {"output_folder": str(out_dir), "cases": table, "counts": counts, "seconds": round(seconds, 2),
              "workers": workers or None, "scheduler": args.scheduler, "threads": threads, "record": record}
    _write_summary(summary, table, report, inputs)
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed in {seconds:.1f} s; "
          f"summary: {summary[0]}")
    return 1 if counts["failed"] else 0


def _run_dask(jobs: list[argparse.Namespace], scheduler: str | None, workers: int, threads: int,
              done: Callable[[Row], None]) -> list[Row]:
    """Run ``run_case`` for every job on a Dask cluster: a new local one (``workers``) or ``scheduler``'s."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError("--workers and --scheduler need Dask distributed", 'pip install "universalseg[batch]", '
                         "or leave both out to run the cases one after another") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as err:
            raise InputError(f"cannot reach the Dask scheduler at '{scheduler}' ({err})",
                             "check the address (tcp://HOST:8786) and that the scheduler runs") from None
        resources = None
    else:  # one case per worker process at a time; its torch uses `threads` threads (the worker has as many)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                               dashboard_address=None, resources={"case": 1}, silence_logs=logging.ERROR)
        client = Client(cluster)
        resources = {"case": 1}
    rows: list[Row] = []
    try:
        futures = {client.submit(run_case, ns, pure=False, resources=resources): ns for ns in jobs}
        for future in as_completed(futures):
            ns = futures[future]
            try:
                row = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. the worker died (out of memory): report the case
                row = {"case": Path(ns.output).name, "image": ns.image, "output": ns.output, "status": "failed",
                       "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
            rows.append(row)
            done(row)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return rows


def _write_summary(paths: list[Path], table: list[Row], report: dict, inputs: Iterable[Path | str]) -> None:
    """``batch_summary.csv`` (one line per case) and ``.json`` (also counts, timing, model and options)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["case", "status", "error", "seconds", "image", "output"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    with atomic_output(paths[0], overwrite=True, inputs=inputs) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    with atomic_output(paths[1], overwrite=True, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
