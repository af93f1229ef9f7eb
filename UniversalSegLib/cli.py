"""The ``universalseg`` command line.

    universalseg tasks [--modality M] [--json] [--model PATH] [--weak] [--all]
    universalseg segment IMAGE -o OUT [--format F] [--modality M] [--task T ...] [--group G ...] [--model PATH]
                         [--device cpu|cuda|auto] [--threads N] [--force] [--[no-]keep-largest]
                         [--probabilities DIR] [--window X Y Z] [--overlap F] [--windows-per-pass N]
                         [--blend gaussian|constant] [--threshold F] [--[no-]mirror] [--preview PNG] [--quiet]
                         [--refine] [--refine-task T ...] [--runtime auto|torch|onnx] [--profile JSON]
    universalseg batch (INPUT_DIR | --cases CSV) -o OUTPUT_DIR [--workers N | --scheduler ADDRESS] [--overwrite]
                       [every segment option]
    universalseg refine IMAGE (--mask COARSE | --box i0,j0,k0,i1,j1,k1) -o OUT [--modality M]  (see refine/cli.py)
    universalseg detect-segment IMAGE.png -o MASK.png [--boxes-out BOXES.json]  (2D; see detect/cli.py)
    universalseg evaluate DATASET_DIR [--model PATH] [--json OUT] [--limit N] [--split all|train|val]
                         [--[no-]keep-largest] [--[no-]mirror] [--refine ...]
    universalseg train CONFIG.yaml [--resume|--no-resume] [--iterations N] [--stop-after N] [--quiet]
    universalseg export CHECKPOINT -o OUT.pt [--version V] [--evaluation REPORT.json ...]
    universalseg add-task --name NAME --modality M --data DIR [--from MODEL] -o NEW.pt [--label V] [--code C]
                          [--iterations N] [--spacing X Y Z] [--patch X Y Z] [--overwrite]

Errors a user can fix print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .detect.cli import add_detect_parser, cmd_detect_segment
from .errors import UniversalSegError
from .refine.cli import add_refine_parser, add_segment_refine_options, cmd_refine, refine_result, refining_step


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(prog="universalseg", description="Universal medical image segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    tasks = sub.add_parser("tasks", help="list the structures the model can segment, with their validation Dice")
    tasks.add_argument("--modality", help="only tasks the model was trained on for this modality")
    tasks.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    tasks.add_argument("--model", help="list this model's tasks (its MODEL.json manifest; default: the bundled model)")
    tasks.add_argument("--weak", action="store_true", help="also the weak tasks (validation Dice below 0.5)")
    tasks.add_argument("--all", action="store_true",
                       help="the whole catalog: weak tasks and those not in the model (marked) too")

    seg = sub.add_parser("segment", help="segment one image (file or DICOM folder)")
    seg.add_argument("image", help="NIfTI, NRRD or MHA file, or a folder with one DICOM series")
    seg.add_argument("-o", "--output", required=True, help="OUT.nii.gz (label map + OUT.json) or OUT.seg.nrrd")
    add_segment_options(seg)
    seg.add_argument("--profile", metavar="JSON", help="also write per-stage seconds and peak memory (RSS) here "
                     "(process start to written outputs; see UniversalSegLib/profiling.py)")

    bat = sub.add_parser("batch", help="segment a cohort (every image of a folder or a CSV) serially or on Dask")
    bat.add_argument("input", nargs="?", help="folder of images (NIfTI, NRRD, MHA files; DICOM series folders)")
    bat.add_argument("-o", "--output", required=True, help="output folder: <input name> + <name>.json per case")
    bat.add_argument("--cases", metavar="CSV", help="a CSV listing the inputs (column 'image'; optional 'name')")
    bat.add_argument("--workers", type=int, help="start a local Dask cluster of N worker processes")
    bat.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask cluster (tcp://host:8786)")
    add_segment_options(bat, batch=True)

    ev = sub.add_parser("evaluate", help="segment a dataset's cases and report Dice and HD95 per label")
    ev.add_argument("dataset", help="folder with dataset.json (shared format or nnU-Net raw layout)")
    ev.add_argument("--model", help="checkpoint file (default: the bundled model)")
    ev.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json report")
    ev.add_argument("--limit", type=int, help="only the first N cases by id")
    ev.add_argument("--split", default="all", choices=["all", "train", "val"], help="cases of this split only")
    ev.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ev.add_argument("--threads", type=int, help="CPU threads for torch")
    ev.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                    help="as for segment (default: the model's policy)")
    ev.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True, help="as for segment")
    add_segment_refine_options(ev)
    add_refine_parser(sub)
    add_detect_parser(sub)

    tr = sub.add_parser("train", help="train a model from a YAML config (see configs/default.yaml)", add_help=False)
    tr.add_argument("rest", nargs=argparse.REMAINDER,
                    help="CONFIG.yaml [--resume/--no-resume] [--overwrite] [--iterations N] ...")

    ex = sub.add_parser("export", help="ship a trained checkpoint: weights without machine paths + manifest")
    ex.add_argument("checkpoint", help="best.pt or final.pt of a training run")
    ex.add_argument("-o", "--output", required=True, help="OUT.pt (the manifest goes to OUT.json)")
    ex.add_argument("--version", help="model version (default: the package version)")
    ex.add_argument("--evaluation", nargs="*", default=[], metavar="REPORT.json",
                    help="reports of `universalseg evaluate --split val --json` to record in the manifest")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT.pt / OUT.json")

    add = sub.add_parser("add-task", help="add a structure to a model: train its task prior only, the rest frozen")
    add.add_argument("--name", required=True, help="the structure: a catalog name or alias (e.g. liver) or a new name")
    add.add_argument("--modality", required=True, help="modality of the images (e.g. MR-T2, CT)")
    add.add_argument("--data", required=True, metavar="DIR",
                     help="DIR/images + DIR/labels (same file names), or a folder with a dataset.json")
    add.add_argument("--from", dest="parent", metavar="MODEL", help="the model to extend (default: the bundled one)")
    add.add_argument("-o", "--output", required=True, help="NEW_MODEL.pt (its manifest goes to NEW_MODEL.json)")
    add.add_argument("--label", type=int, help="label value of the structure in the masks (default: any non-zero, "
                     "or the dataset.json label named --name)")
    add.add_argument("--code", help="terminology SCHEME^VALUE^MEANING for a name the catalog does not know")
    add.add_argument("--iterations", type=int, default=60, help="training iterations (default 60)")
    add.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="grid in mm (default: the data's)")
    add.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), help="window, multiples of 16")
    add.add_argument("--overwrite", action="store_true", help="replace an existing NEW_MODEL.pt / .json")

    web = sub.add_parser("serve", help="segment from a browser (needs the web extra: pip install universalseg[web])")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default loopback; any other needs --token)")
    web.add_argument("--data", metavar="DIR", help="folder whose images the page lists to open")
    web.add_argument("--token", help="secret the browser must give once (?token=...); required off loopback")
    web.add_argument("--max-sessions", type=int, default=4, help="browser sessions at once; more are told to wait")
    web.add_argument("--upload-limit", default="1G", help="largest upload (e.g. 500M, 2G; default 1G)")
    web.add_argument("--idle-timeout", type=float, default=120.0,
                     help="seconds a session lives after its last tab closed (default 120)")
    return parser


def add_segment_options(parser: argparse.ArgumentParser, batch: bool = False) -> None:
    """The options of ``segment`` after IMAGE and -o, shared with ``batch`` (which applies them to every case)."""
    parser.add_argument("--modality",
                        help="CT, MR-T1, MR-T2, ... (guessed from DICOM tags or intensities if left out)")
    parser.add_argument("--task", action="append", default=[], help="task id or name; repeat for several")
    parser.add_argument("--group", action="append", default=[], help="task group, e.g. 'Hippocampus'")
    parser.add_argument("--model", help="checkpoint file (default: the bundled model)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    # not --backend: that names the refiner (litemedsam|medsam2)
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"],
                        help="what runs the network: onnx (ONNX Runtime, CPU; the graph is exported once and cached), "
                             "torch (the reference), auto (default: onnx where onnxruntime is installed and the device "
                             "is the CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--force", action="store_true", help="allow tasks that do not apply to the modality")
    parser.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                        help="keep only the largest connected component of every task (--no-keep-largest: of none; "
                             "default: of the tasks the model's inference policy marks keep_largest)")
    parser.add_argument("--probabilities", metavar="DIR",
                        help="also write one probability map per task here" + (" (batch: DIR/<case>/)" * batch))
    parser.add_argument("--window", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--windows-per-pass", type=int, default=2, help="windows per forward pass (default 2)")
    parser.add_argument("--batch", type=int, dest="windows_per_pass", action=_DeprecatedAlias,
                        help=argparse.SUPPRESS)  # renamed in 0.9 (clashed with `universalseg batch`); drop in 1.0
    parser.add_argument("--blend", default="gaussian", choices=["gaussian", "constant"], help="window weighting")
    parser.add_argument("--threshold", type=float, default=None,
                        help="one probability threshold for every task (default: each task's, from the model's policy)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="average with the left-right mirrored image, paired organs swapped, for the tasks the "
                             "model's inference policy gives a mirror (default; twice their time); --no-mirror: plain")
    parser.add_argument("--preview", metavar="DIR" if batch else "PNG",
                        help="also write three orthogonal slices with the overlay" + (" (batch: DIR/<case>.png)"
                                                                                       * batch))
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (never an input)")
    parser.add_argument("--format", choices=["nifti", "nrrd", "dicom-seg", "rtstruct"],
                        help="output format (default from the extension: .nii.gz nifti, .seg.nrrd nrrd, .dcm "
                             "dicom-seg, .rtstruct.dcm rtstruct); the DICOM formats need a DICOM folder as input")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_segment_refine_options(parser)


class _DeprecatedAlias(argparse.Action):
    """An old option spelling that still works for one release, with a warning on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"warning: {option_string} is deprecated, use {new} (the old name goes in 1.0)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def cmd_tasks(args: argparse.Namespace) -> int:
    """Print what the model can segment (optionally for one modality) with its validation Dice; torch-free."""
    from .catalog import Catalog
    from .model_tasks import WEAK_DICE, offered_tasks

    catalog = Catalog.load()
    show_weak = args.weak or args.all
    offered = offered_tasks(args.modality, show_weak=show_weak, model=args.model, catalog=catalog,
                            include_catalog=args.all)
    hidden = 0 if show_weak else len(offered_tasks(args.modality, True, args.model, catalog)) - len(offered)
    known = {t.id for t in catalog.tasks}

    def described(t) -> dict:  # a task added under a name the catalog does not know: its own code, or unknown
        if t.id in known:
            return catalog.task(t.id).to_dict()
        return {"id": t.id, "name": t.name, "group": "added (not in the catalog)", "modalities": [t.modality],
                "terminology": t.terminology or "unknown"}

    if args.json:
        rows = [{**described(t), "dice": t.dice, "weak": t.weak, "in_model": t.in_model,
                 "model_modality": t.modality, "dice_source": t.source, **({"added": True} if t.added else {})}
                for t in offered]
        print(json.dumps(rows, indent=2))
    elif offered:
        width = max(len(t.id) for t in offered)
        for t in offered:
            task = described(t)
            dice = "not in model" if not t.in_model else (f"Dice {t.dice:.2f}" if t.dice is not None else "no Dice")
            flag = ("  (weak)" if t.in_model and t.weak else "") + ("  (added)" if t.added else "")
            if t.added and t.id not in known:
                flag += f"  terminology {t.terminology or 'unknown'}"
            print(f"{t.id:<{width}}  {task['name']:<32}  {dice:<12}  {task['group']:<30}  "
                  f"{t.modality or ', '.join(task['modalities'])}{flag}")
    else:
        print("no task of this model for this modality", file=sys.stderr)
    if hidden:
        print(f"{hidden} weak task(s) hidden (validation Dice below {WEAK_DICE}); --weak shows them, --all shows "
              "the whole catalog", file=sys.stderr)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one image and write the result."""
    result, written = run_segment(args)
    print(f"segmented {len(result.tasks)} structure(s) ({result.modality.id}) in {result.seconds:.1f} s:")
    for value, task in enumerate(result.tasks, start=1):
        print(f"  {value}: {task.name}")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Segment a cohort: every case through :func:`run_segment`, serially or on Dask (see batch.py)."""
    from .batch import run_batch

    return run_batch(args)


def run_segment(args: argparse.Namespace) -> tuple:
    """``segment``'s work without the printing: (result, written paths). ``batch`` calls it for every case.

    ``args.sidecar_extra`` (batch only) is merged into the JSON sidecar.
    """
    import contextlib

    from .profiling import Profile, seconds_since_process_start

    profile_path = getattr(args, "profile", None)
    profile: Profile | None = None
    if profile_path:  # the span starts at process start; interpreter, imports and parsing count as "import"
        since_start = seconds_since_process_start()
        import time

        profile = Profile(None if since_start is None else time.perf_counter() - since_start)
        profile.add("import", since_start or 0.0)

    def stage(name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if profile is None else profile.stage(name)

    with stage("setup"):
        from .api import InferenceOptions, segment
        from .safe_write import atomic_output, check_outputs
        from .volume import read_image
        from .writers import sidecar_path

        inputs = [args.image, args.model, getattr(args, "weights", None)]
        fmt = _segment_format(args)
        plain = fmt in ("nifti", "nrrd") and not str(args.output).lower().endswith(".seg.nrrd")
        sidecar = sidecar_path(args.output) if plain else None
        # fail before minutes of inference
        check_outputs([args.output, sidecar, args.preview, profile_path], inputs, args.overwrite)
    with stage("read"):
        image, info = read_image(args.image)
    options = InferenceOptions(
        window=tuple(args.window) if args.window else None, overlap=args.overlap, batch_size=args.windows_per_pass,
        blend=args.blend, threshold=args.threshold, keep_largest=args.keep_largest,
        probabilities=bool(args.probabilities), mirror=args.mirror,
    )
    with _ProgressBar(disabled=args.quiet) as bar:
        result = segment(
            image, info=info, tasks=args.task, groups=args.group, modality=args.modality, model=args.model,
            device=args.device, threads=args.threads, force=args.force, options=options, progress=bar.update,
            backend=getattr(args, "runtime", "auto"), profile=profile,
        )
    if args.refine or args.refine_task:
        with stage("refine"):
            result = refine_result(image, result, args)
    with stage("write"):
        written = _write_segment(args, image, result, fmt, inputs)
    if profile is not None:
        report = {"command": "segment", "image": str(args.image), "size": list(image.GetSize()),
                  "tasks": [t.id for t in result.tasks], "mirror": args.mirror, "threads": args.threads,
                  **profile.to_dict()}
        with atomic_output(profile_path, args.overwrite, filter(None, inputs)) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        written.append(profile_path)
    return result, written


def _write_segment(args: argparse.Namespace, image, result, fmt: str, inputs: list) -> list:
    """Write ``segment``'s outputs (label map or DICOM, sidecar, probabilities, preview); the written paths."""
    from .api import write_result
    from .safe_write import check_outputs, commit, temp_path

    if fmt in ("dicom-seg", "rtstruct"):
        from .dicom_out import write_dicom

        written = [write_dicom(result, args.image, args.output, fmt, model=args.model, overwrite=args.overwrite,
                               inputs=tuple(filter(None, inputs)))]
    else:
        written = write_result(result, args.output, probabilities_dir=args.probabilities, source=str(args.image),
                               overwrite=args.overwrite, inputs=tuple(filter(None, inputs)),
                               extra=getattr(args, "sidecar_extra", None))
    if args.preview:
        from .preview import write_preview

        check_outputs([args.preview], filter(None, inputs), args.overwrite)
        tmp = temp_path(args.preview)
        try:
            write_preview(image, result, tmp)
            written.append(commit(tmp, args.preview, args.overwrite))
        finally:
            tmp.unlink(missing_ok=True)
    return written


def _segment_format(args: argparse.Namespace) -> str:
    """``--format`` or the one the output's extension names; a DICOM format needs a DICOM folder (checked now)."""
    from .dicom_out import DICOM_FORMATS, check_dicom_input, output_format
    from .errors import OutputError

    fmt = output_format(args.output, args.format)
    if fmt in DICOM_FORMATS:
        check_dicom_input(args.image, fmt)
        if args.probabilities:
            raise OutputError(f"--probabilities is not written with --format {fmt}",
                              "leave --probabilities out, or write .nii.gz")
    return fmt


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on a dataset folder; print the Markdown table."""
    from pathlib import Path

    from .inference import InferenceOptions
    from .safe_write import check_outputs
    from .training.evaluate import evaluate_dataset, markdown_table, write_report

    inputs = [Path(args.dataset) / "dataset.json", args.model, getattr(args, "weights", None)]
    check_outputs([args.json], filter(None, inputs), args.overwrite)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    refining = args.refine or args.refine_task
    refine_fn = refining_step(args, log=lambda text: print(text, file=sys.stderr)) if refining else None
    options = InferenceOptions(keep_largest=args.keep_largest, mirror=args.mirror)
    report = evaluate_dataset(args.dataset, model=args.model, limit=args.limit, split=args.split, device=args.device,
                              refine_fn=refine_fn, options=options,
                              progress=lambda i, n, case: print(f"[{i + 1}/{n}] {case}", file=sys.stderr))
    if refining:
        from .refine.cli import prompt_options
        from .refine.prompts import COARSE_MARGIN, MASK_PROMPT

        report["refinement"] = {"backend": args.backend, "weights": args.weights, "mode": args.mode,
                                "tasks": args.refine_task or "the model's policy",
                                **{"margin": COARSE_MARGIN, "mask_prompt": MASK_PROMPT, **prompt_options(args)}}
    print(markdown_table(report))
    for failure in report["failed"]:
        print(f"failed: {failure['case']}: {failure['error']}")
    if args.json:
        write_report(report, args.json, overwrite=args.overwrite, inputs=tuple(filter(None, inputs)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Hand over to the trainer's own parser (it also runs under torchrun)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep, not spin
    rest = [a for a in args.rest if a != "--overwrite"]
    if "--no-resume" in rest and "--overwrite" not in args.rest and rest and not rest[0].startswith("-"):
        _check_fresh_run_dir(rest[0])
    from .training.__main__ import main as main_train  # a single config or a multi-stage recipe

    return main_train(rest)


def _check_fresh_run_dir(config_path: str) -> None:
    """``train --no-resume`` starts over: refuse when the run folder already holds checkpoints (unless --overwrite)."""
    from .errors import OutputError
    from .training.config import run_folders

    for folder in run_folders(config_path):  # a recipe: every stage's
        if folder.is_dir() and any(folder.rglob("*.pt")):
            raise OutputError(f"training run folder '{folder}' already holds checkpoints; --no-resume would replace "
                              "them", "pass --overwrite to start over there, drop --no-resume to continue, or set "
                              "another output_dir in the config")


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint and its manifest."""
    from . import __version__
    from .training.export import export_model

    reports = {}
    for path in args.evaluation:
        report = json.loads(open(path, encoding="utf-8").read())
        keys = ("split", "limit", "keep_largest", "mirror", "labels", "mean_dice", "seconds_per_case")
        reports[report["dataset"]] = {k: report[k] for k in keys if k in report}
    manifest = export_model(args.checkpoint, args.output, args.version or __version__, reports,
                            overwrite=args.overwrite, inputs=(*args.evaluation,))
    print(f"wrote {args.output} (sha256 {manifest['sha256']}) and its manifest; usage: {manifest['usage']}")
    return 0


def cmd_add_task(args: argparse.Namespace) -> int:
    """Add a structure to a model by training its task prior only."""
    from .training.add_task import add_task

    def progress(i: int, n: int, loss: float) -> None:
        if i == n or i % max(1, n // 10) == 0:
            print(f"iteration {i}/{n}  loss {loss:.3f}", file=sys.stderr, flush=True)

    report = add_task(args.name, args.modality, args.data, args.output, parent=args.parent, label=args.label,
                      code=args.code, iterations=args.iterations, overwrite=args.overwrite, spacing=args.spacing,
                      patch=args.patch, progress=progress)
    dice = f"{report.dice:.3f}" if report.dice is not None else "not measured"
    print(f"wrote {args.output} with task '{report.task_id}' (validation Dice {dice} on "
          f"{len(report.dice_per_case)} held-out case(s)) and its manifest; usage: {report.manifest['usage']}")
    return 0


class _ProgressBar:
    """A tqdm bar driven by the engine's ``progress(stage, fraction)`` callback."""

    def __init__(self, disabled: bool = False) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=100, disable=disabled, file=sys.stderr, mininterval=1.0,
                         bar_format="{desc:<11} {bar} {n:3.0f}% [{elapsed}<{remaining}]")
        self._stage = ""

    def update(self, stage: str, fraction: float) -> None:
        weights = {"prepare": (0, 5), "infer": (5, 90), "postprocess": (95, 5)}
        start, span = weights.get(stage, (0, 100))
        if self._stage != stage:
            self._stage = stage
            self._bar.set_description_str(stage, refresh=False)
        self._bar.update(start + span * fraction - self._bar.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """The browser front end (imported only here: trame is not needed for the other commands)."""
    from .web.state import parse_size

    try:
        from .web.sessions import serve
    except ImportError as err:
        raise UniversalSegError(f"the web extra is not installed ({err})",
                                "pip install 'universalseg[web]' (or run make web)") from None
    try:
        limit = parse_size(args.upload_limit)
    except ValueError as err:
        raise UniversalSegError(str(err), "pass --upload-limit like 1G or 500M") from None
    return serve(host=args.host, port=args.port, data=args.data, token=args.token, max_sessions=args.max_sessions,
                 upload_limit=limit, idle_timeout=args.idle_timeout)


COMMANDS = {"tasks": cmd_tasks, "segment": cmd_segment, "batch": cmd_batch, "evaluate": cmd_evaluate,
            "refine": cmd_refine, "detect-segment": cmd_detect_segment, "train": cmd_train, "export": cmd_export,
            "serve": cmd_serve, "add-task": cmd_add_task}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``universalseg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UniversalSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
