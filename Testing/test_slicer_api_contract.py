"""Contract: every Slicer, CTK, Qt, MRML/VTK and PyTorchUtils name the module and its glue use exists in the real API.

The checker (``Testing/slicer_api.py``) finds the files by glob (``UniversalSeg/**/*.py``, the ``.ui`` files,
``UniversalSegLib/slicer_logic/**/*.py``, ``Testing/slicer_smoke.py``) and checks them against
``/work/shared/slicer-api`` (Slicer's ``util.py``, ``ScriptedLoadableModule.py``, ``parameterNodeWrapper/``,
``PyTorchUtils.py``, CTK/qMRML headers), PySide6 metaobjects and the slicer-core wheel's MRML/VTK classes.
Refreshing slicer-api is the only upkeep. ``pytest -s`` prints what was checked and what could not be, with reasons.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_api  # noqa: E402

pytestmark = pytest.mark.skipif(not slicer_api.API.is_dir(), reason="no slicer-api copy")
pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("slicer")  # the slicer-core wheel: MRML/VTK classes
ROOT = slicer_api.ROOT
UI_DIR = ROOT / "UniversalSeg/Resources/UI"
SECTION_UIS = ("Inputs.ui", "Roi.ui", "Run.ui", "Refine.ui", "Dependencies.ui")  # one per panel section
UI = UI_DIR / "Run.ui"  # the widgets the deliberately wrong module below uses


@pytest.fixture(scope="module")
def report():
    return slicer_api.check()


def test_module_and_glue_use_only_existing_slicer_api(report, tmp_path_factory):
    text = report.text()
    out = tmp_path_factory.mktemp("contract") / "slicer_api_report.txt"
    out.write_text(text + "\n")
    print(f"\n{text}\n(report written to {out})")
    assert not report.errors, "\n".join(map(str, report.errors))


def test_discovers_the_module_glue_and_ui_files():
    py, ui = slicer_api.discover()
    names = {p.relative_to(ROOT).as_posix() for p in py}
    assert "UniversalSeg/UniversalSeg.py" in names
    assert "UniversalSegLib/slicer_logic/widget_glue.py" in names
    assert {f"UniversalSeg/UniversalSegSections/{n}.py" for n in ("inputs", "roi", "run", "refine",
                                                                  "dependencies")} <= names
    assert {UI_DIR / name for name in SECTION_UIS} <= set(ui)


def test_coverage_lists_what_was_checked_and_what_was_not(report):
    covered, uncovered = slicer_api.coverage(report)
    names = {name for _, name in covered}
    for expected in ("slicer.util.loadUI(path)", "QTimer.timeout.connect", "qMRMLWidget.setMRMLScene",
                     "ScriptedLoadableModule.parent.title", "@parameterNodeWrapper.connectGui(gui)",
                     "slicer.parameterNodeWrapper.Choice", "vtkCommand.ModifiedEvent"):
        assert expected in names, expected
    assert any(n.startswith("PyTorchUtilsLogic.installTorch(") for n in names)
    assert any(n.startswith("vtkMRMLScene.AddNewNodeByClass()") for n in names)
    assert any(n.startswith("slicer.util.errorDisplay(") for n in names)
    assert all(reason for _, reason in uncovered)


WRONG = '''
    import PyTorchUtils
    import qt
    import slicer
    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
    from slicer.util import NoSuchMixin  # ERR


    @parameterNodeWrapper
    class P:
        size: int = Choice()  # ERR (Choice needs its choices)


    class M(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "ok"


    class W(ScriptedLoadableModuleWidget):
        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            ui = slicer.util.loadUI(self.resourcePath("UI/Run.ui"))
            self.resourcePath()  # ERR (missing filename)
            self.ui = slicer.util.childWidgetVariables(ui)
            self.ui.segmentButton.clicked.connect(self.setup)
            self.ui.segmentButton.clickedd.connect(self.setup)  # ERR
            self.ui.progressBar.value.connect(self.setup)  # ERR (a property, not a signal)
            self.ui.noSuchWidget.enabled = False  # ERR
            self.timer = qt.QTimer()
            self.timer.setIntervall(200)  # ERR
            self.node = P(self.logic().getParameterNode())
            self.node.size = 3
            self.node.sise = 3  # ERR
            self.node.connectGuii(self.ui)  # ERR
            Section(self.ui).wire()
            ask(slicer.util.confirmOkCancelDisplay)
            getattr(slicer.mrmlScene, "NoSuchOptionalMethod", None)  # probed: not an error

        def logic(self):
            return None

        def load(self, path):
            slicer.util.loadVolume(path)
            slicer.util.loadVolume(path, nonexistent_kw=1)  # ERR
            slicer.util.loadVolume()  # ERR
            slicer.util.noSuchFunction(path)  # ERR
            slicer.util.errorDisplay("text", windowTitle="t", anything=1)  # kwargs are accepted
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            seg.GetSegmentation().GetNumberOfSegments()
            seg.GetSegmentationn()  # ERR
            slicer.mrmlScene.GetNodeByID()  # ERR (takes one argument)
            slicer.mrmlScene.AddNewNodeByClas("vtkMRMLScalarVolumeNode")  # ERR
            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmaton=False)  # ERR
            qt.Qt.ItemIsUserCheckabl  # ERR


    class Section:  # a panel section handed the widgets (the split module panel)
        def __init__(self, ui):
            self.ui = ui

        def wire(self):
            self.ui.undoButton.clicked.connect(self.wire)
            self.ui.undoButton.clickd.connect(self.wire)  # ERR
            self.ui.outputSelector.currentNodeChanged.connect(self.onNode)

        def onNode(self, node):
            node.GetID()  # a vtkMRMLNode, from the signal's C++ signature
            node.GetIDD()  # not an error: some subclass may have it (reported as not checked)


    def ask(confirm):
        confirm("Install?")
        confirm()  # ERR (slicer.util.confirmOkCancelDisplay needs its text)
'''


def test_deliberately_wrong_calls_are_caught(tmp_path):
    module = tmp_path / "Wrong.py"
    module.write_text(textwrap.dedent(WRONG))
    report = slicer_api.check([module], [UI])
    expected = {i for i, line in enumerate(module.read_text(encoding="utf-8").splitlines(), start=1) if "# ERR" in line}
    found = {e.line for e in report.errors}
    assert found == expected, "\n".join(map(str, report.errors))
    by_line = {e.line: e.detail for e in report.errors}
    kw_line = next(i for i in expected if "nonexistent_kw" in module.read_text(encoding="utf-8").splitlines()[i - 1])
    assert by_line[kw_line] == "no keyword argument 'nonexistent_kw'"
    names = {name for _, name in report.covered()}
    assert "vtkMRMLNode.GetID() (0 args)" in names  # the slot's parameter typed from the signal
    assert ("vtkMRMLNode.GetIDD", "value typed as vtkMRMLNode (a base class); its subclass is known only at run "
            "time") in report.uncovered()
    assert any(name.startswith("getattr(slicer.mrmlScene") for name, _ in report.uncovered())


def test_signature_rules():
    sig = slicer_api.Sig(("filename", "properties", "returnNode"), 1, False)
    assert sig.problem(1, [], False, False) is None
    assert sig.problem(0, ["filename"], False, False) is None
    assert sig.problem(0, [], False, False) == "missing required argument(s) filename"
    assert sig.problem(4, [], False, False) == "4 positional arguments, accepts at most 3"
    assert sig.problem(1, ["filename"], False, False) == "'filename' given twice"
    assert sig.problem(0, [], True, False) is None  # f(*args): counts unknown


def test_the_module_before_the_signal_fix_fails(tmp_path):
    """The module and .ui of 8affdf5 (before the fixes) connected a signal qMRMLSegmentSelectorWidget lacks."""
    git = shutil.which("git")
    files = {"UniversalSeg.py": "UniversalSeg/UniversalSeg.py",
             "UniversalSeg.ui": "UniversalSeg/Resources/UI/UniversalSeg.ui"}
    for name, path in files.items():
        shown = subprocess.run([git or "git", "show", f"8affdf5:{path}"], cwd=ROOT, capture_output=True, text=True) \
            if git else None
        if shown is None or shown.returncode:
            pytest.skip("commit 8affdf5 is not in this checkout")
        (tmp_path / name).write_text(shown.stdout)
    report = slicer_api.check([tmp_path / "UniversalSeg.py"], [tmp_path / "UniversalSeg.ui"])
    assert [(e.line, e.name) for e in report.errors] == [(94, "qMRMLSegmentSelectorWidget.selectionChanged")]
