"""Supported Slicer versions: 5.10 and 5.12 (Python 3.12); an older Slicer gets one message, not a traceback.

- ``vermin`` (requirements-dev.txt) finds nothing newer than Python 3.9 in the module file and the small files
  it imports before its version check, and nothing newer than 3.10 (the engine's minimum) in the engine and the
  panel sections;
- the module file, run with a Python older than 3.10 (a real 3.9 interpreter when one is installed, else this one
  reporting 3.9.10) and stand-ins for Slicer's ``qt``/``slicer``, imports nothing of the engine or the sections,
  and its widget shows the one message naming the minimum version (its self-test says the same);
- the .s4ext, the module's help text and the README say which versions are supported.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

MODULE_DIR = REPO / "UniversalSeg"
SECTIONS = MODULE_DIR / "UniversalSegSections"
#: The module file and everything it imports before the version check: must run on Slicer 5.8's Python 3.9.
PY39_FILES = [MODULE_DIR / "UniversalSeg.py", SECTIONS / "__init__.py", SECTIONS / "versions.py"]
sys.path.insert(0, str(MODULE_DIR))
from UniversalSegSections.versions import MIN_PYTHON, MIN_SLICER, TESTED_SLICER, supported_text  # noqa: E402


def _vermin() -> str:
    found = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if found is None:
        pytest.skip("vermin is not installed (requirements-dev.txt)")
    return found


@pytest.mark.parametrize(("target", "paths"), [
    ("3.9-", PY39_FILES),
    (f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}-", [REPO / "UniversalSegLib", SECTIONS]),
], ids=["module-3.9", "engine-and-sections-3.10"])
def test_vermin_minimum_python(target, paths):
    out = subprocess.run([_vermin(), f"-t={target}", "--no-tips", "--violations", "--eval-annotations",
                          *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


RUN_OLD = textwrap.dedent("""
    import importlib.abc, importlib.util, json, sys, types

    if sys.argv[2] == "pretend":  # this interpreter is new enough: report Slicer 5.8's Python
        class VersionInfo(tuple):
            major, minor, micro = 3, 9, 10
        sys.version_info = VersionInfo((3, 9, 10, "final", 0))

    class TooNew(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            top, _, rest = name.partition(".")
            if top == "UniversalSegLib" or (top == "UniversalSegSections" and rest not in ("", "versions")):
                raise ImportError(name + " imported on an unsupported Python")
            return None

    sys.meta_path.insert(0, TooNew())
    shown = []

    class QLabel:
        def __init__(self, text):
            self.text, self.wordWrap = text, False

    class Layout:
        def addWidget(self, widget):
            shown.append(widget.text)

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def setup(self):
            self.layout = Layout()

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest:
        def delayDisplay(self, message, msec=None):
            shown.append(message)

    qt = types.ModuleType("qt")
    qt.QLabel = QLabel
    slicer = types.ModuleType("slicer")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    sys.modules.update({"qt": qt, "slicer": slicer, "slicer.ScriptedLoadableModule": slm})
    spec = importlib.util.spec_from_file_location("UniversalSeg", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parent = types.SimpleNamespace()
    module.UniversalSeg(parent)
    widget = module.UniversalSegWidget(parent)
    widget.setup()
    module.UniversalSegTest().runTest()
    print(json.dumps({"python": list(sys.version_info[:3]), "unsupported": module.UNSUPPORTED, "shown": shown,
                      "help": parent.helpText, "title": parent.title,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("UniversalSegLib",
                                                                                     "UniversalSegSections"))}))
""")


def _old_pythons() -> list[tuple[str, str]]:
    found = [(str(p), "real") for p in sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))[-1:]]
    return found + [(sys.executable, "pretend")]


@pytest.mark.parametrize(("python", "mode"), _old_pythons(), ids=lambda v: Path(v).name if "/" in v else v)
def test_old_slicer_shows_one_message(python, mode):
    out = subprocess.run([python, "-I", "-c", RUN_OLD, str(MODULE_DIR / "UniversalSeg.py"), mode],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["python"][:2] == [3, 9]
    message = result["unsupported"]
    assert message and f"3D Slicer {MIN_SLICER} or newer" in message and "Python 3.9" in message
    assert result["shown"] == [message, message]  # the panel's one label, the self-test's one line
    assert result["title"] == "UniversalSeg" and supported_text() in result["help"]
    assert result["loaded"] == ["UniversalSegSections", "UniversalSegSections.versions"]
    assert out.stderr == ""


def test_supported_versions_are_stated():
    assert MIN_SLICER == "5.10" and TESTED_SLICER == ("5.10", "5.12") and MIN_PYTHON == (3, 10)
    s4ext = (REPO / "UniversalSeg.s4ext").read_text(encoding="utf-8")
    assert re.search(r"^description .*Slicer 5\.10 or newer", s4ext, re.M)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Using it in 3D Slicer"):]
    section = section[:section.find("\n## ", 3)]
    assert "5.10" in section and "5.12" in section and "5.8" in section


def test_screenshot_and_icon_urls_point_at_files_of_this_repository():
    base = "https://raw.githubusercontent.com/universalseg/UniversalSeg/main/"
    s4ext = dict(line.split(" ", 1) for line in (REPO / "UniversalSeg.s4ext").read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = s4ext["screenshoturls"].split() + [s4ext["iconurl"].strip()]
    urls += re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', top).group(1).split()
    urls.append(re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', top).group(1))
    for url in urls:
        assert url.startswith(base), url
        path = url[len(base):]
        assert (REPO / path).is_file() and path.endswith(".png"), url
        if shutil.which("git"):  # in the repository, not ignored: it is committed with the rest
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
            assert ignored.returncode == 1, f"{path} is ignored by git"
