"""The module panel's glue against a real MRML scene and Slicer's own ``parameterNodeWrapper`` (no Qt, no app).

The slicer-core wheel has no ``slicer.parameterNodeWrapper``, so the pinned copy in ``slicer-api`` (Slicer 5.12.3)
is imported with ``qt``/``ctk`` stand-ins. Its real ``qMRMLNodeComboBox`` and ``QComboBox`` connectors bind to
small fakes that behave like the widgets do for it: ``setCurrentNode`` / ``currentIndex`` emit their signal at
once, slots run in connection order. What this covers:

- ``widget_glue.PanelBinding``: ``connectGui`` before the input selector's guess is connected (a picked volume
  stays picked), the guess disconnected before ``disconnectGui``, and a stored modality not guessed over;
- the parameter node's ``roi`` (a real ``vtkMRMLMarkupsROINode``) reaching ``SegmentationRequest.roi``;
- the task tree only offering what the model was trained on, weak tasks behind "Show weak tasks".
"""


import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest

slicer = pytest.importorskip("slicer.util", reason="the slicer-core wheel is needed") and sys.modules["slicer"]

from UniversalSegLib.catalog import Catalog  # noqa: E402
from UniversalSegLib.slicer_logic import guess_modality  # noqa: E402
from UniversalSegLib.slicer_logic import widget_glue as glue  # noqa: E402

API = Path("/work/shared/slicer-api/Slicer/Base/Python/slicer/parameterNodeWrapper")
CATALOG = Catalog.load()


# ------------------------------------------------------------------------------------------------ fakes
class Signal:
    """A Qt signal as PythonQt shows it: connect/disconnect a slot; emitting runs the slots at once, in connection
    order (direct connections, as between widgets of the GUI thread)."""

    def __init__(self, log=None, name=""):
        self.slots, self.log, self.name = [], log, name

    def connect(self, slot):
        self.slots.append(slot)
        if self.log is not None:
            self.log.append(f"{self.name}.connect")

    def disconnect(self, slot):
        self.slots.remove(slot)  # a slot that is not connected is an error, as in PythonQt
        if self.log is not None:
            self.log.append(f"{self.name}.disconnect")

    def emit(self, *args):
        for slot in list(self.slots):  # PythonQt passes a slot only as many arguments as it takes
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)])


class FakeWidget:
    def __init__(self, parameter):
        self._properties = {"SlicerParameterName": parameter}

    def property(self, name):
        return self._properties.get(name)


class FakeNodeComboBox(FakeWidget):
    """qMRMLNodeComboBox: setCurrentNode emits currentNodeChanged(node) when the node changes."""

    def __init__(self, parameter, log=None):
        super().__init__(parameter)
        self._node, self.nodeTypes = None, []
        self.currentNodeChanged = Signal(log, "currentNodeChanged")

    def currentNode(self):  # noqa: N802 - Qt's name
        return self._node

    def setCurrentNode(self, node):  # noqa: N802 - Qt's name
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class FakeComboBox(FakeWidget):
    """QComboBox: setting currentIndex emits currentIndexChanged(index)."""

    def __init__(self, parameter):
        super().__init__(parameter)
        self.items, self._index = [], -1
        self.currentIndexChanged = Signal()

    def clear(self):
        self.items, self._index = [], -1

    def addItem(self, text):  # noqa: N802 - Qt's name
        self.items.append(text)
        if self._index < 0:
            self._index = 0

    @property
    def currentIndex(self):  # noqa: N802 - Qt's name
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):  # noqa: N802 - Qt's name
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)


class _Placeholder(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def _stub(name, **classes):
    module = types.ModuleType(name)
    module.__dict__.update(classes)
    module.__getattr__ = lambda attr: _Placeholder(attr, (), {})
    return module


@pytest.fixture(scope="module")
def pnw():
    """Slicer 5.12.3's parameterNodeWrapper package, as ``slicer.parameterNodeWrapper``."""
    if not API.is_dir():
        pytest.skip(f"no slicer-api copy at {API}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "qt", _stub("qt", QComboBox=FakeComboBox))
        mp.setitem(sys.modules, "ctk", _stub("ctk"))
        for name in ("qMRMLNodeComboBox", "qMRMLRangeWidget", "qMRMLSliderWidget", "qMRMLSpinBox", "qSlicerWidget"):
            mp.setattr(slicer, name, FakeNodeComboBox if name == "qMRMLNodeComboBox" else _Placeholder(name, (), {}),
                       raising=False)
        spec = importlib.util.spec_from_file_location("slicer.parameterNodeWrapper", API / "__init__.py",
                                                      submodule_search_locations=[str(API)])
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        yield module
    for name in [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper.")]:
        del sys.modules[name]


@pytest.fixture()
def Parameters(pnw):  # noqa: N802 - a class
    from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

    @pnw.parameterNodeWrapper
    class PanelParameters:  # the fields of UniversalSegParameterNode the bound widgets and the glue use
        inputVolume: vtkMRMLScalarVolumeNode
        modality: Annotated[str, pnw.Choice(glue.modality_choices())] = "CT"
        tasks: list[str]
        showWeakTasks: bool = False
        device: Annotated[str, pnw.Choice(list(glue.DEVICES))] = glue.DEVICES[0]
        useBundledModel: bool = True
        modelPath: str = ""
        roi: vtkMRMLMarkupsROINode
        addBeside: bool = False
        outputSegmentation: vtkMRMLSegmentationNode

    return PanelParameters


def _volume(scene, name, low, high):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    array = np.linspace(low, high, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    slicer.util.updateVolumeFromArray(node, array)
    return node


class Panel:
    """What UniversalSegWidget wires: the bound widgets, the guess on input, the update hook."""

    def __init__(self, log=None):
        self.gui = types.SimpleNamespace(inputSelector=FakeNodeComboBox("inputVolume", log),
                                         modalityComboBox=FakeComboBox("modality"))
        self.parameters, self.guessedFor, self.hints, self.updates = None, None, [], 0

    def on_input(self, node):
        self.guessedFor, hint = glue.guess_on_input(self.parameters, node, self.guessedFor, CATALOG)
        self.hints.append(hint)

    def on_modified(self):
        self.updates += 1

    def binding(self):
        return glue.PanelBinding([self.gui], self.gui.inputSelector.currentNodeChanged, self.on_input,
                                 self.on_modified)


@pytest.fixture()
def volumes(scene):
    mr = _volume(scene, "t1 brain", 0.0, 900.0)
    ct = _volume(scene, "scan", -1000.0, 1500.0)
    assert guess_modality(mr, CATALOG).modality != guess_modality(ct, CATALOG).modality == "CT"
    return mr, ct


# ---------------------------------------------------------------------------------------------- binding
def test_picked_volume_stays_picked_and_its_modality_is_guessed(scene, Parameters, volumes):
    mr, ct = volumes
    panel = Panel()
    p = panel.parameters = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    binding = panel.binding()
    binding.bind(p)
    assert binding.node is p and panel.updates == 1 and panel.hints == []  # nothing stored: nothing guessed
    panel.gui.inputSelector.setCurrentNode(mr)  # the user picks a volume
    assert p.inputVolume is mr and panel.gui.inputSelector.currentNode() is mr
    assert p.modality == guess_modality(mr, CATALOG).modality != "CT"
    assert panel.gui.modalityComboBox.items[panel.gui.modalityComboBox.currentIndex] == p.modality
    assert panel.hints[-1].startswith("guessed from")
    p.modality = "CT"  # the user corrects the guess; the same volume signalled again keeps the correction
    panel.gui.inputSelector.currentNodeChanged.emit(mr)
    assert p.modality == "CT" and panel.hints[-1] is None and panel.guessedFor == mr.GetID()
    panel.gui.inputSelector.setCurrentNode(ct)  # another volume: guessed afresh
    assert p.inputVolume is ct and p.modality == "CT" and panel.guessedFor == ct.GetID()
    panel.gui.inputSelector.setCurrentNode(None)  # none: nothing to guess, nothing changes
    assert p.inputVolume is None and p.modality == "CT" and panel.hints[-1] is None


def test_the_guess_connected_before_connect_gui_loses_the_pick(scene, Parameters, volumes):
    """Why the order matters: the guess's write updates the GUI from the node, which still holds the old volume."""
    mr, _ = volumes
    panel = Panel()
    p = panel.parameters = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    panel.gui.inputSelector.currentNodeChanged.connect(panel.on_input)  # the wrong order
    p.connectGui(panel.gui)
    panel.gui.inputSelector.setCurrentNode(mr)
    assert p.inputVolume is None and panel.gui.inputSelector.currentNode() is None  # the pick was undone


def test_rebinding_keeps_a_stored_modality_and_lets_the_old_node_go(scene, Parameters, volumes):
    mr, ct = volumes
    panel = Panel()
    first = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    stored = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    stored.inputVolume, stored.modality = mr, "CT"  # saved with the scene: the user chose CT for this volume
    binding = panel.binding()
    panel.parameters = first
    binding.bind(first)
    panel.gui.inputSelector.setCurrentNode(ct)
    assert first.inputVolume is ct
    panel.parameters = stored
    binding.bind(stored)  # connectGui puts the stored volume into the selector; no guess runs over "CT"
    assert panel.gui.inputSelector.currentNode() is mr and stored.modality == "CT"
    assert first.inputVolume is ct  # the node let go is not written by the selector change
    binding.bind(None)
    panel.gui.inputSelector.setCurrentNode(ct)  # unbound: neither node nor guess follows the selector
    assert stored.inputVolume is mr and stored.modality == "CT" and binding.node is None
    assert panel.gui.inputSelector.currentNodeChanged.slots == []


def test_binding_order_of_calls(scene, Parameters):
    log = []

    class Spy:
        def __init__(self, node, name):
            self.node, self.name = node, name

        def __getattr__(self, attr):
            member = getattr(self.node, attr)
            if attr not in ("connectGui", "disconnectGui", "AddObserver", "RemoveObserver"):
                return member

            def call(*args):
                log.append(f"{self.name}.{attr}")
                return member(*args)
            return call

    panel = Panel(log)
    a = Spy(Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")), "a")
    b = Spy(Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")), "b")
    binding = panel.binding()
    binding.bind(a)
    binding.bind(b)
    binding.bind(None)
    # Each spy entry is logged as the call starts: the wrapper's own slot on the selector is connected inside
    # connectGui and disconnected inside disconnectGui; the guess comes after the first and goes before the second.
    bind = ["connectGui", "currentNodeChanged.connect", "currentNodeChanged.connect", "AddObserver"]
    unbind = ["currentNodeChanged.disconnect", "disconnectGui", "currentNodeChanged.disconnect", "RemoveObserver"]
    named = [[f"{n}.{e}" if e[0].isupper() or e.endswith("Gui") else e for e in events]
             for n, events in (("a", bind), ("a", unbind), ("b", bind), ("b", unbind))]
    assert log == [entry for events in named for entry in events]


def test_binding_updates_on_every_change(scene, Parameters):
    panel = Panel()
    p = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    binding = panel.binding()
    binding.bind(p)
    before = panel.updates
    p.showWeakTasks = True
    assert panel.updates > before
    binding.bind(None)
    after = panel.updates
    p.showWeakTasks = False
    assert panel.updates == after


# -------------------------------------------------------------------------------------------------- ROI
def test_roi_parameter_reaches_the_request(scene, Parameters, volumes):
    mr, _ = volumes
    p = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    assert p.roi is None and glue.request_from_parameters(p).roi is None
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    p.inputVolume, p.roi, p.tasks = mr, roi, ["hippocampus_anterior"]
    request = glue.request_from_parameters(p)
    assert request.roi is roi and request.volume is mr and request.tasks == ["hippocampus_anterior"]
    assert request.model is None and request.replace_existing
    again = Parameters(p.parameterNode)  # stored in the node (saved with the scene), not in the wrapper
    assert again.roi is roi


# ------------------------------------------------------------------------------------------------ tasks
def test_task_tree_offers_only_what_the_model_knows(scene, Parameters):
    p = Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    p.modality, p.tasks = "CT", ["mandible", "liver"]
    view = glue.tasks_view(p, CATALOG)
    offered = {row.id for _, rows in view.groups for row in rows}
    assert "mandible" in offered and "liver" not in offered  # liver: in the catalog, not trained on
    assert view.chosen == ["mandible"]
    assert all("Dice" in row.name for _, rows in view.groups for row in rows)
    p.modality, p.tasks = "MR-FLAIR", []
    hidden = glue.tasks_view(p, CATALOG)
    assert hidden.groups == [] and hidden.hidden > 0 and "Show weak tasks" in hidden.warning
    key = glue.tasks_key(p)
    p.showWeakTasks = True
    assert glue.tasks_key(p) != key  # the tree is rebuilt
    shown = glue.tasks_view(p, CATALOG)
    assert sum(len(rows) for _, rows in shown.groups) == hidden.hidden and shown.warning
    p.useBundledModel = False  # no checkpoint chosen yet: nothing looks segmentable
    assert glue.tasks_view(p, CATALOG) == glue.TaskTree([], [], glue.NO_CHECKPOINT, 0)
    assert glue.control_states(p, running=False, can_undo=False, can_refine=False).model_path


def test_dependency_status():
    text, needed = glue.dependency_status([])
    assert not needed and "installed" in text
    text, needed = glue.dependency_status([glue.Dependency("no_such_module_xyz", "no-such==1.0", "pip")])
    assert needed and "no-such==1.0" in text
