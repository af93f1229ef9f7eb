"""Smoke test inside a real 3D Slicer: dependencies, the sample, Segment, Refine, Undo; exit status 0 or 1.

Run from the repository root (or anywhere, with this file's path)::

    Slicer --no-main-window --python-script Testing/slicer_smoke.py            # dependencies already installed
    Slicer --no-main-window --python-script Testing/slicer_smoke.py --install  # install them first (no question)

What it does, with the same logic the module panel drives (``UniversalSegLib.slicer_logic``):

1. with ``--install``: :func:`~UniversalSegLib.slicer_logic.dependencies.ensure_dependencies` for the engine and
   the LiteMedSAM Refine backend (torch through the PyTorch extension, the rest with pip ``--no-deps``);
   without it, missing packages fail the run;
2. loads the bundled sample MRI (``slicer.util.loadVolume``) and segments its structures with the bundled model
   (``SlicerSegmentationLogic.run``), mean Dice against the stored reference >= the self-test's floor;
3. refines the first segment (``SlicerSegmentationLogic.refine``, LiteMedSAM) and checks the segment changed;
4. undoes the refinement (``SlicerSegmentationLogic.undo``) and checks the segment is back voxel for voxel,
   and that the input volume was never modified;

then prints one line, ``SMOKE PASSED: ...`` or ``SMOKE FAILED: ...``, and exits with ``slicer.util.exit``.
Importing this file does nothing (tests compile it and check its Slicer calls against Slicer's sources).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKEND = "LiteMedSAM"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slicer_smoke.py", description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install missing Python packages first")
    args, _ = parser.parse_known_args(argv)  # Slicer may pass its own arguments through
    return args


def smoke(args: argparse.Namespace, log=print) -> str:
    """The smoke run; returns the summary (without the PASSED prefix), raises on any failure."""
    import numpy as np
    import SimpleITK as sitk
    import slicer

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from UniversalSegLib.slicer_logic import RefinementRequest, SlicerSegmentationLogic, segment_arrays
    from UniversalSegLib.slicer_logic import dependencies as deps
    from UniversalSegLib.slicer_logic import self_test as st
    from UniversalSegLib.slicer_logic.refinement import backend_dependencies

    needed = backend_dependencies(BACKEND, deps.DEPENDENCIES)
    if args.install:
        if not deps.ensure_dependencies(lambda question: True, log, dependencies=needed, log=log):
            raise RuntimeError("the dependencies are still missing after the installation")
    missing = deps.missing_dependencies(needed)
    if missing:
        raise deps.dependency_error(missing)

    module_dir = REPO / "UniversalSeg"
    volume = slicer.util.loadVolume(str(st.sample_file(module_dir, st.SAMPLE)))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(st.sample_file(module_dir, st.SAMPLE_LABEL))))
    before = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    logic = SlicerSegmentationLogic(slicer.mrmlScene)

    start = time.perf_counter()
    applied, scores = st.sample_scores(logic, volume, reference)
    segment_seconds = time.perf_counter() - start
    mean = float(np.mean(list(scores.values())))
    floor, source = st.dice_floor(None, logic.catalog)
    log(f"Segment: {applied.message} {st.dice_text(scores)}")
    if mean < floor:
        raise AssertionError(f"mean Dice {mean:.3f} under the floor {floor:.3f} ({source})")

    node, segment_id = applied.segmentation, applied.segment_ids[0]
    unrefined = segment_arrays(node, [segment_id], volume) > 0
    refined = logic.refine(RefinementRequest(volume, node, [segment_id], modality=st.SAMPLE_MODALITY,
                                             backend=BACKEND))
    log(f"Refine: {refined.message}")
    after = segment_arrays(node, [segment_id], volume) > 0
    if not after.any():
        raise AssertionError(f"the refined segment {segment_id} is empty")
    changed = int(np.count_nonzero(after != unrefined))

    undone = logic.undo()
    log(f"Undo: {undone}")
    restored = segment_arrays(node, [segment_id], volume) > 0
    if not np.array_equal(restored, unrefined):
        raise AssertionError(f"Undo did not restore {segment_id}: {int(np.count_nonzero(restored != unrefined))} "
                             f"voxels differ")
    if not np.array_equal(slicer.util.arrayFromVolume(volume), before):
        raise AssertionError("the input volume was modified")
    return (f"{st.dice_text(scores)} (mean {mean:.3f} >= {floor:.3f}) in {segment_seconds:.1f} s; "
            f"refined {segment_id} ({changed} voxels changed, {refined.seconds:.1f} s, {BACKEND}); "
            f"undo restored it")


def main(argv: list[str]) -> int:
    """Run the smoke test and print its one-line summary; the exit status (0: passed)."""
    try:
        summary = smoke(parse(argv))
    except Exception as exc:  # noqa: BLE001 - every failure is one summary line (traceback above it)
        traceback.print_exc()
        print(f"SMOKE FAILED: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"SMOKE PASSED: {summary}", flush=True)
    return 0


if __name__ == "__main__":  # Slicer's --python-script runs this file as __main__, sys.argv[1:] its arguments
    status = main(sys.argv[1:])
    import slicer

    slicer.util.exit(status)
