"""The Slicer module's files without the Slicer application: .ui files, module script, sections, packaging.

- each section's .ui (``Resources/UI/*.ui``) loads offscreen with PySide6 (Slicer's own widget classes become
  placeholders) and holds every widget its section file names (``self.ui.<name>``); the parameters they bind
  are fields of the parameter node; widget names are unique across the .ui files;
- ``UniversalSeg/UniversalSeg.py`` and the sections compile, and ``UniversalSegLib.slicer_logic`` imports where
  Qt is absent;
- the CMake lists name every file of the Lib, the module resources and the sample case (a new file that is
  not listed fails here), and configure with a model of Slicer's macros puts them where Slicer looks.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO

MODULE_DIR = REPO / "UniversalSeg"
MODULE = MODULE_DIR / "UniversalSeg.py"
SECTIONS = MODULE_DIR / "UniversalSegSections"
UI_FILES = sorted((MODULE_DIR / "Resources" / "UI").glob("*.ui"))
PARAMETERS = SECTIONS / "parameters.py"
CMAKE = MODULE_DIR / "CMakeLists.txt"
LIB = REPO / "UniversalSegLib"


def ui_widgets(*files: Path) -> dict[str, str]:
    """name -> class of every widget in the .ui files (default: all of them)."""
    return {w.get("name"): w.get("class") for ui in files or UI_FILES for w in ET.parse(ui).getroot().iter("widget")}


def module_tree(path: Path = MODULE) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def module_files() -> list[Path]:
    """The module script and its section files."""
    return [MODULE, *sorted(SECTIONS.glob("*.py"))]


def loaded_ui_files(path: Path) -> list[Path]:
    """The .ui files a module file loads (``resourcePath("UI/<Name>.ui")``)."""
    names = {n.value.rsplit("/", 1)[-1] for n in ast.walk(module_tree(path)) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and n.value.endswith(".ui")}
    return [ui for ui in UI_FILES if ui.name in names]


def ui_uses(path: Path) -> set[str]:
    """Widget names ``<x>.ui.<name>`` in a module file."""
    return {node.attr for node in ast.walk(module_tree(path)) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"}


def lib_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def cmake_list(name: str) -> list[str]:
    """The items of ``set(<name> ...)`` in UniversalSeg/CMakeLists.txt."""
    found = re.search(rf"set\({name}\s+(.*?)\)", CMAKE.read_text(encoding="utf-8"), re.S)
    assert found, f"set({name} ...) missing from {CMAKE}"
    return [line.split("#")[0].strip() for line in found.group(1).splitlines() if line.split("#")[0].strip()]


# ---------------------------------------------------------------------------------------------------- .ui
LOAD_UI = textwrap.dedent("""
    import json, sys
    from PySide6.QtWidgets import QApplication, QWidget
    from PySide6.QtUiTools import QUiLoader

    class Loader(QUiLoader):
        placeholders = {}

        def createWidget(self, class_name, parent=None, name=""):
            if class_name in self.availableWidgets():
                return super().createWidget(class_name, parent, name)
            widget = QWidget(parent)  # a Slicer/CTK class: stands in for it
            widget.setObjectName(name)
            self.placeholders[name] = class_name
            return widget

    app = QApplication([])
    loader = Loader()
    root = loader.load(sys.argv[1])
    if root is None:
        print(json.dumps({"error": loader.errorString()}))
        sys.exit(1)
    widgets = {w.objectName(): w.metaObject().className() for w in root.findChildren(QWidget)}
    check = root.findChild(QWidget, "useBundledModelCheckBox")
    path = root.findChild(QWidget, "modelPathLineEdit")
    enabled_unticked = None
    if check is not None:  # Inputs.ui
        check.setChecked(False)
        enabled_unticked = path.isEnabled()
        check.setChecked(True)
    print(json.dumps({"root": [root.objectName(), root.metaObject().className()], "widgets": widgets,
                      "placeholders": loader.placeholders, "error": loader.errorString(),
                      "path_enabled": [enabled_unticked, path.isEnabled() if path is not None else None]}))
""")


@pytest.fixture(scope="module", params=UI_FILES, ids=[ui.name for ui in UI_FILES])
def loaded_ui(request) -> tuple[Path, dict]:
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials (requirements-dev.txt) is needed")
    out = subprocess.run([sys.executable, "-c", LOAD_UI, str(request.param)], capture_output=True, text=True,
                         timeout=120, env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    return request.param, json.loads(out.stdout.strip().splitlines()[-1])


def test_ui_loads_offscreen(loaded_ui):
    ui, loaded = loaded_ui
    root = ET.parse(ui).getroot().find("widget")
    assert loaded["error"] == ""
    assert loaded["root"] == [root.get("name"), "QWidget"] and root.get("class") == "qMRMLWidget"
    expected = ui_widgets(ui)
    assert set(expected) - {root.get("name")} <= set(loaded["widgets"])  # Qt adds unnamed/internal ones
    slicer_classes = {n: c for n, c in expected.items() if c.startswith(("qMRML", "ctk"))}
    assert loaded["placeholders"] == slicer_classes
    for name, cls in expected.items():  # Qt's own classes are really created as themselves
        if name in loaded["widgets"] and name not in loaded["placeholders"]:
            assert loaded["widgets"][name] == cls, name
    if ui.name == "Inputs.ui":
        assert loaded["path_enabled"] == [True, False]  # the .ui's own signal connection works


def test_each_section_has_its_ui_and_names_are_unique():
    assert {ui.name for ui in UI_FILES} == {"Inputs.ui", "Roi.ui", "Run.ui", "Refine.ui", "Dependencies.ui"}
    names = [w.get("name") for ui in UI_FILES for w in ET.parse(ui).getroot().iter("widget")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    loaders = {ui.name: [p.name for p in module_files() if ui in loaded_ui_files(p)] for ui in UI_FILES}
    assert all(len(files) == 1 for files in loaders.values()), loaders  # one section file per .ui
    assert not loaded_ui_files(MODULE)  # the module file builds sections, it loads no .ui itself


def test_every_widget_the_module_uses_is_in_the_ui():
    used_anywhere = set()
    for path in module_files():
        used = ui_uses(path)
        used_anywhere |= used
        own = ui_widgets(*loaded_ui_files(path)) if loaded_ui_files(path) else ui_widgets()
        missing = sorted(used - set(own))
        assert not missing, f"{path.name} uses ui.{missing} that its .ui does not have"
    assert {"inputSelector", "taskTree", "taskWarningLabel", "segmentButton", "cancelButton", "refineButton",
            "progressBar", "statusLabel", "installButton"} <= used_anywhere  # the parse finds them at all


def test_ui_parameter_bindings_match_the_parameter_node():
    fields = {}
    for node in ast.walk(module_tree(PARAMETERS)):
        if isinstance(node, ast.ClassDef) and node.name == "UniversalSegParameterNode":
            fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    assert {"inputVolume", "modality", "tasks", "showWeakTasks", "device", "modelPath", "roi", "refineBackend",
            "outputSegmentation"} <= fields
    bound = {}
    for ui in UI_FILES:
        for widget in ET.parse(ui).getroot().iter("widget"):
            for prop in widget.findall("property"):
                if prop.get("name") == "SlicerParameterName":
                    bound[widget.get("name")] = prop.find("string").text
    assert set(bound.values()) <= fields, set(bound.values()) - fields
    assert bound["inputSelector"] == "inputVolume" and bound["outputSelector"] == "outputSegmentation"
    assert bound["roiSelector"] == "roi" and bound["showWeakTasksCheckBox"] == "showWeakTasks"
    for ui in UI_FILES:  # a .ui connection stays inside its own file
        names = set(ui_widgets(ui))
        for connection in ET.parse(ui).getroot().iter("connection"):
            assert {connection.findtext("sender"), connection.findtext("receiver")} <= names, ui.name


def test_roi_selector():
    roi = next(w for ui in UI_FILES for w in ET.parse(ui).getroot().iter("widget") if w.get("name") == "roiSelector")
    props = {p.get("name"): p for p in roi.findall("property")}
    assert roi.get("class") == "qMRMLNodeComboBox"
    assert [s.text for s in props["nodeTypes"].iter("string")] == ["vtkMRMLMarkupsROINode"]
    assert props["noneEnabled"].findtext("bool") == "true"


# ------------------------------------------------------------------------------------------------ module
def test_module_compiles_and_names_its_sources(tmp_path):
    for path in module_files():
        py_compile.compile(str(path), cfile=str(tmp_path / f"{path.stem}.pyc"), doraise=True)
    assert len(MODULE.read_text().splitlines()) <= 150  # glue only: behaviour lives in the sections and the Lib
    text = " ".join(n.value for n in ast.walk(module_tree()) if isinstance(n, ast.Constant)
                    and isinstance(n.value, str))
    for needed in ("README", "research use only", "Gao et al.", "CVPR 2024", "Ma et al.",
                   "Nature Communications 2024", "LiteMedSAM", "OpenKBP", "hippocampus", "ACDC", "LA 2018",
                   "BraTS 2015", "Segmentation"):
        assert needed in text, needed
    classes = {n.name for n in module_tree().body if isinstance(n, ast.ClassDef)}
    assert {"UniversalSeg", "UniversalSegWidget", "UniversalSegLogic", "UniversalSegTest"} <= classes


NO_QT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoQt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("qt", "ctk", "PySide6", "PyQt5", "PyQt6", "PythonQt"):
                raise ImportError(f"{name} is blocked: Qt must not be needed")
            return None

    sys.meta_path.insert(0, NoQt())
    import UniversalSegLib.slicer_logic as sl
    import slicer
    print(json.dumps({"slicer": "slicer" in sys.modules, "app": hasattr(slicer, "app"),
                      "heavy": sorted(m for m in ("torch", "monai") if m in sys.modules),
                      "logic": hasattr(sl, "SlicerSegmentationLogic")}))
""")


def test_lib_imports_without_qt_or_the_slicer_app():
    pytest.importorskip("slicer", reason="the slicer-core wheel is needed")
    out = subprocess.run([sys.executable, "-c", NO_QT], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"slicer": True, "app": False, "heavy": [],
                                                               "logic": True}


def test_requirements_pinned_without_torch():
    lines = [ln.strip() for ln in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", ln) for ln in lines), lines
    assert not any(ln.lower().startswith("torch") for ln in lines)
    engine = dict(ln.split("==") for ln in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
                  if "==" in ln and not ln.startswith("#"))
    for line in lines:
        name, version = line.split("==")
        assert engine.get(name) == version, f"{line} differs from requirements.txt"
    from UniversalSegLib.slicer_logic import DEPENDENCIES

    assert {d.requirement for d in DEPENDENCIES if d.route == "pip"} == set(lines)


def test_icon_is_128_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "UniversalSeg.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


# ----------------------------------------------------------------------------------------------- packaging
def test_cmake_lists_every_file():
    scripts = cmake_list("UNIVERSALSEGLIB_SCRIPTS")
    resources = cmake_list("UNIVERSALSEGLIB_RESOURCES")
    weights = cmake_list("UNIVERSALSEGLIB_WEIGHTS")
    tree = [p.relative_to(REPO).as_posix() for p in lib_files()]
    assert sorted(scripts) == sorted(p for p in tree if p.endswith(".py")), \
        "UNIVERSALSEGLIB_SCRIPTS must list exactly the .py files of UniversalSegLib"
    data = sorted(p for p in tree if not p.endswith(".py"))
    assert sorted(p for p in resources + weights if (REPO / p).exists()) == data, \
        "UNIVERSALSEGLIB_RESOURCES/_WEIGHTS must list every data file of UniversalSegLib"
    assert all((REPO / p).is_file() for p in resources) and all(p.startswith("UniversalSegLib/weights/")
                                                              for p in weights)
    module_resources = cmake_list("MODULE_PYTHON_RESOURCES")
    assert sorted(module_resources) == sorted(p.relative_to(MODULE_DIR).as_posix()
                                              for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())
    samples = cmake_list("UNIVERSALSEG_SAMPLES")
    assert sorted(samples) == sorted(p.relative_to(REPO).as_posix() for p in (REPO / "samples").iterdir()
                                     if p.is_file())
    assert cmake_list("MODULE_PYTHON_SCRIPTS") == ["${MODULE_NAME}.py", *(
        p.relative_to(MODULE_DIR).as_posix() for p in sorted(SECTIONS.glob("*.py")))]
    text = CMAKE.read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


# A model of Slicer's slicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript (Slicer 5.x): the
# same existence check and the same destination rules (relative script/resource -> DEST/<path>; absolute
# script -> DEST/<path relative to the current binary dir>).
FAKE_SLICER = """
cmake_minimum_required(VERSION 3.16)
project(FakeSlicerExtension NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  set(_dest ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
  foreach(_value IN LISTS MY_SLICER_SCRIPTS MY_SLICER_RESOURCES)
    if(IS_ABSOLUTE ${_value})
      set(_abs ${_value})
    else()
      set(_abs ${CMAKE_CURRENT_SOURCE_DIR}/${_value})
    endif()
    if(NOT EXISTS ${_abs})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${_value}'")
    endif()
  endforeach()
  foreach(_file IN LISTS MY_SLICER_SCRIPTS)
    if(IS_ABSOLUTE ${_file})
      file(RELATIVE_PATH _tgt ${CMAKE_CURRENT_BINARY_DIR} ${_file})
      set(_src ${_file})
    else()
      set(_tgt ${_file})
      set(_src ${CMAKE_CURRENT_SOURCE_DIR}/${_file})
    endif()
    file(APPEND ${CMAKE_BINARY_DIR}/manifest.txt "script|${_src}|${_dest}/${_tgt}\\n")
  endforeach()
  foreach(_file IN LISTS MY_SLICER_RESOURCES)
    file(APPEND ${CMAKE_BINARY_DIR}/manifest.txt "resource|${CMAKE_CURRENT_SOURCE_DIR}/${_file}|${_dest}/${_file}\\n")
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/manifest.txt "generic_tests|${MY_SLICER_WITH_GENERIC_TESTS}|\\n")
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/manifest.txt "unittest|${MY_SCRIPT}|\\n")
endfunction()
add_subdirectory(${REPO}/UniversalSeg UniversalSeg)
"""


def test_cmake_configures_files_where_slicer_looks(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(FAKE_SLICER.replace("${REPO}", REPO.as_posix()))
    out = subprocess.run([cmake, "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    dest = tmp_path / "build" / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    rows = [line.split("|") for line in (tmp_path / "build" / "manifest.txt").read_text(encoding="utf-8").splitlines()]
    copied = {Path(target).relative_to(dest).as_posix(): Path(source) for kind, source, target in rows
              if kind in ("script", "resource")}
    # Scripts: the module and every Lib file, under their package path beside the module.
    for path in lib_files():
        rel = path.relative_to(REPO).as_posix()
        if path.suffix == ".py":
            assert copied[rel].read_bytes() == path.read_bytes(), rel
        elif "weights" not in path.parts:
            assert (dest / rel).read_bytes() == path.read_bytes(), rel  # data copied into the build tree
        else:
            assert (dest / rel).is_file(), rel
    assert copied["UniversalSeg.py"] == MODULE
    for path in [*SECTIONS.glob("*.py"), *UI_FILES]:  # beside the module: found by resourcePath and sys.path
        rel = path.relative_to(MODULE_DIR).as_posix()
        assert copied[rel] == path, rel
    for sample in (REPO / "samples").iterdir():
        assert (dest / "Resources" / "Samples" / "UniversalSeg" / sample.name).read_bytes() == sample.read_bytes()
    assert ["generic_tests", "TRUE", ""] in rows and ["unittest", "UniversalSeg.py", ""] in rows


def test_extension_description_fields():
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', top), field
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top and 'set(EXTENSION_DEPENDS "PyTorch")' in top
    for needed in ("find_package(Slicer REQUIRED)", "add_subdirectory(UniversalSeg)",
                   "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        assert needed in top
    s4ext = {}
    for line in (REPO / "UniversalSeg.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    assert s4ext["scm"] == "git" and s4ext["depends"] == "PyTorch" and s4ext["category"] == "Segmentation"
    assert s4ext["build_subdirectory"] == "." and s4ext["enabled"] == "1"
    for key in ("scmurl", "scmrevision", "homepage", "contributors", "iconurl", "status", "description",
                "screenshoturls"):
        assert s4ext.get(key), key
