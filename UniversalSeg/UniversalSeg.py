"""UniversalSeg: one network segments many structures in CT, MR, PET and ultrasound volumes (glue only).

The panel is built from sections (``UniversalSegSections``, one ``Resources/UI/<Name>.ui`` each); what they show
comes from ``UniversalSegLib.slicer_logic.widget_glue`` (tested against a real MRML scene without Qt). This file
must parse and run on Python 3.9 (Slicer 5.8) up to the version check, so an old Slicer shows one message.
"""

import sys
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

_HERE = Path(__file__).resolve().parent
for _root in (_HERE, _HERE.parent):  # installed: UniversalSegLib beside this file; source tree: the repository
    if (_root / "UniversalSegLib").is_dir() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from UniversalSegSections.versions import supported_text, unsupported  # noqa: E402 - 3.9-safe, nothing else is

UNSUPPORTED = unsupported(sys.version_info)  # None, or the message shown instead of the panel (Slicer < 5.10)
if UNSUPPORTED is None:
    from UniversalSegSections.dependencies import DependenciesSection
    from UniversalSegSections.inputs import InputsSection
    from UniversalSegSections.parameters import UniversalSegParameterNode
    from UniversalSegSections.refine import RefineSection
    from UniversalSegSections.roi import RoiSection
    from UniversalSegSections.run import RunSection

    from UniversalSegLib.slicer_logic import SlicerSegmentationLogic
    from UniversalSegLib.slicer_logic import self_test as st
    from UniversalSegLib.slicer_logic import widget_glue as glue
else:
    SlicerSegmentationLogic = object

README = "https://github.com/universalseg/UniversalSeg#3d-slicer-module"


class UniversalSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "UniversalSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["UniversalSeg developers"]
        self.parent.helpText = (
            "Segments organs and lesions in CT, MR, PET and ultrasound volumes with one universal network "
            f"(Hermes context priors). See the <a href='{README}'>README</a>. {supported_text()} The bundled model "
            "is for research use only: it is not a medical device and must not be used for diagnosis or treatment.")
        self.parent.acknowledgementText = (
            "Hermes: Gao et al., Training Like a Medical Resident: Context-Prior Learning Toward Universal "
            "Medical Image Segmentation, CVPR 2024. MedSAM: Ma et al., Segment anything in medical images, "
            "Nature Communications 2024; LiteMedSAM (MedSAM on laptop). The bundled model was trained on "
            "OpenKBP, the Medical Segmentation Decathlon hippocampus task, ACDC, the 2018 Left Atrium "
            "challenge (LA 2018) and BraTS 2015.")


class UniversalSegWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):  # nothing heavy here: no imports of torch, no installs
        self.logic = self.binding = None  # first: without a parent the base class runs setup() itself
        self.sections = []
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED is not None:
            label = qt.QLabel(UNSUPPORTED)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        self.logic = UniversalSegLogic()
        self.dependencies = DependenciesSection(self)
        self.inputs = InputsSection(self, self.logic)
        self.run = RunSection(self, self.logic, self.dependencies.ensure, self.updateGUI)
        self.refine = RefineSection(self, self.logic, self.dependencies.ensure, self.run.startJob, self.updateGUI)
        self.refine.follow(self.run.ui.outputSelector.currentNodeChanged)
        self.sections = [self.inputs, RoiSection(self), self.run, self.refine, self.dependencies]
        for section in self.sections:  # the panel, top to bottom
            self.layout.addWidget(section.uiWidget)
        self.layout.addStretch(1)
        self.binding = glue.PanelBinding([s.uiWidget for s in self.sections],
                                         self.inputs.ui.inputSelector.currentNodeChanged,
                                         self.inputs.onInputChanged, self.updateGUI)
        self.sceneObservers = [slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose),
                               slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)]
        self.enter()

    def cleanup(self):
        if self.binding is not None:
            self.onSceneStartClose()
            for tag in self.sceneObservers:
                slicer.mrmlScene.RemoveObserver(tag)

    def onSceneStartClose(self, *_):
        for section in self.sections:
            section.cleanup()
        self.setParameterNode(None)

    def onSceneEndClose(self, *_):
        self.enter()

    def enter(self):
        if self.binding is not None:
            self.setParameterNode(UniversalSegParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, node):
        for section in self.sections:
            section.parameters = node
        self.binding.bind(node)  # connectGui, then the input selector's guess (see widget_glue.PanelBinding)

    def updateGUI(self, *_):
        p = self.binding.node
        if p is not None:
            states = glue.control_states(p, self.run.job is not None, self.logic.can_undo, self.refine.chosen())
            for section in self.sections:
                section.update(p, states)


class UniversalSegLogic(ScriptedLoadableModuleLogic, SlicerSegmentationLogic):
    """The module logic: Slicer's parameter-node plumbing over ``SlicerSegmentationLogic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SlicerSegmentationLogic.__init__(self, slicer.mrmlScene)


class UniversalSegTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled model on the bundled sample MRI, Dice against the stored reference contours."""

    def runTest(self):
        if UNSUPPORTED is not None:
            self.delayDisplay(UNSUPPORTED)
            return
        slicer.mrmlScene.Clear()
        st.run_self_test(_HERE, slicer.mrmlScene, self.delayDisplay, logic=UniversalSegLogic())
