"""The module's self-test (what ``UniversalSegTest.runTest`` calls) in a real MRML scene (``slicer-core`` wheel)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import py_compile
from pathlib import Path

import pytest
from conftest import REPO

from UniversalSegLib.slicer_logic import self_test
from UniversalSegLib.slicer_logic.dependencies import DEPENDENCIES, Dependency, DependencyError
from UniversalSegLib.slicer_logic.self_test import (
    BUNDLED_MODEL,
    MIN_MEAN_DICE,
    SKIPPED,
    SelfTestFailure,
    dice_floor,
    run_self_test,
)

MODULE_DIR = REPO / "UniversalSeg"
NO_TORCH = (Dependency("us_absent_torch", "torch", "pytorch"), Dependency("us_absent_monai", "monai==1.6.1", "pip"))


def _nodes(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_skipped_without_torch_and_monai(scene):
    """An extension build machine: nothing is installed, nothing runs, the scene is untouched, the test passes."""
    before, lines = _nodes(scene), []
    line = run_self_test(MODULE_DIR, scene, lines.append, dependencies=NO_TORCH)
    assert line == f"{SKIPPED} (torch, monai==1.6.1): the bundled model was not run"
    assert line.startswith("skipped: dependencies not installed (")
    assert lines == [line] and _nodes(scene) == before


def test_missing_dependencies_can_be_an_error_instead(scene):
    with pytest.raises(DependencyError, match="monai==1.6.1"):
        run_self_test(MODULE_DIR, scene, print, dependencies=NO_TORCH, skip_missing=False)


def test_floor_comes_from_the_manifest_when_it_has_the_figures(tmp_path):
    manifest = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text(encoding="utf-8"))
    floor, source = dice_floor(manifest)
    assert source.startswith("model manifest") and 0.5 < floor < 0.95
    assert dice_floor({"task_ids": ["hippocampus_anterior"]}) == (
        MIN_MEAN_DICE, "MIN_MEAN_DICE (no validation Dice in the model manifest)")
    assert dice_floor(tmp_path / "absent.json")[0] == MIN_MEAN_DICE


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"bundled model not installed ({BUNDLED_MODEL})")
def test_self_test_segments_the_sample(scene):
    lines = []
    line = run_self_test(MODULE_DIR, scene, lines.append)
    floor, _ = dice_floor()
    assert line.startswith("passed: Dice: hippocampus_anterior ") and f">= {floor:.3f}" in line, line
    assert lines[0].startswith("Segmenting the sample") and lines[-1] == line
    mean = float(line.split("(mean ")[1].split(" ")[0])
    assert mean >= floor
    segmentations = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
                     if scene.GetNthNode(i).IsA("vtkMRMLSegmentationNode")]
    assert len(segmentations) == 1 and segmentations[0].GetSegmentation().GetNumberOfSegments() == 2


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"bundled model not installed ({BUNDLED_MODEL})")
def test_self_test_fails_under_the_floor(scene, monkeypatch):
    monkeypatch.setattr(self_test, "dice_floor", lambda *a: (0.999, "a floor no model reaches"))
    with pytest.raises(SelfTestFailure, match=r"failed: Dice: .*under the floor 0\.999 \(a floor no model reaches\)"):
        run_self_test(MODULE_DIR, scene, print)


def test_sample_is_found_installed_or_in_the_source_tree(tmp_path):
    installed = tmp_path / "Resources" / "Samples" / "UniversalSeg"
    installed.mkdir(parents=True)
    (installed / self_test.SAMPLE).write_bytes(b"x")
    assert self_test.sample_file(tmp_path, self_test.SAMPLE) == installed / self_test.SAMPLE
    assert self_test.sample_file(MODULE_DIR, self_test.SAMPLE) == REPO / "samples" / self_test.SAMPLE


# ------------------------------------------------------------------------------ Testing/slicer_smoke.py
SMOKE = REPO / "Testing" / "slicer_smoke.py"
UTIL = Path(os.environ.get("SLICER_API", "/work/shared/slicer-api")) / "Slicer/Base/Python/slicer/util.py"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("slicer_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # import-safe: nothing runs, slicer is not even imported
    return module


def test_smoke_script_compiles_and_imports_without_running(tmp_path):
    py_compile.compile(str(SMOKE), cfile=str(tmp_path / "smoke.pyc"), doraise=True)
    module = _smoke_module()
    assert module.parse([]).install is False and module.parse(["--install", "--foo"]).install is True


@pytest.mark.skipif(not UTIL.is_file(), reason="no slicer-api copy")
def test_smoke_script_calls_only_real_slicer_util_functions():
    """Every slicer.util.NAME(...) in the script exists in Slicer 5.12.3's util.py and takes those arguments."""
    real = {n.name: n for n in ast.parse(UTIL.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
    calls = [n for n in ast.walk(ast.parse(SMOKE.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and ast.unparse(n.func.value) == "slicer.util"]
    assert {c.func.attr for c in calls} == {"loadVolume", "arrayFromVolume", "exit"}
    for call in calls:
        fn = real.get(call.func.attr)
        assert fn is not None, f"slicer.util.{call.func.attr} is not in Slicer's util.py"
        params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        required = len(params) - len(fn.args.defaults)
        assert required <= len(call.args) <= len(params) or fn.args.vararg, ast.unparse(call)
        assert {k.arg for k in call.keywords} <= {*params, *(a.arg for a in fn.args.kwonlyargs)} or fn.args.kwarg


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"bundled model not installed ({BUNDLED_MODEL})")
def test_smoke_run_in_a_real_scene(scene, monkeypatch):
    """The smoke run itself (segment, refine, undo) in the slicer-core scene; only the application's file reader,
    slicer.util.loadVolume (it needs slicer.app), is replaced by Slicer's storage-node reader."""
    import slicer

    from UniversalSegLib.slicer_logic.dependencies import missing_dependencies
    from UniversalSegLib.slicer_logic.refinement import backend_dependencies

    module = _smoke_module()
    if missing_dependencies(backend_dependencies(module.BACKEND, DEPENDENCIES)):
        pytest.skip("the LiteMedSAM backend is not installed here")
    monkeypatch.setattr(slicer.util, "loadVolume", lambda path: self_test.load_sample(scene, Path(path), "sample"),
                        raising=False)
    lines = []
    summary = module.smoke(module.parse([]), lines.append)
    assert summary.startswith("Dice: hippocampus_anterior") and "undo restored it" in summary, summary
    assert [line.split(":")[0] for line in lines] == ["Segment", "Refine", "Undo"]


def test_smoke_main_reports_one_failure_line(capsys, monkeypatch):
    module = _smoke_module()
    monkeypatch.setattr(module, "smoke", lambda args: (_ for _ in ()).throw(RuntimeError("no sample")))
    assert module.main([]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "SMOKE FAILED: RuntimeError: no sample"
