"""UniversalSeg: one network segments many structures in CT, MR, PET and ultrasound volumes (glue only).

Every behaviour lives in ``UniversalSegLib.slicer_logic`` (tested against a real MRML scene without Qt), and
what the panel shows comes from its ``widget_glue``; this file only moves those values into the widgets:
parameter node, task tree, background job polled by a QTimer.
"""

import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_HERE = Path(__file__).resolve().parent
for _root in (_HERE, _HERE.parent):  # installed: UniversalSegLib beside this file; source tree: the repository
    if (_root / "UniversalSegLib").is_dir() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))

from UniversalSegLib import slicer_logic as sl  # noqa: E402
from UniversalSegLib.errors import UniversalSegError  # noqa: E402
from UniversalSegLib.slicer_logic import self_test as st  # noqa: E402
from UniversalSegLib.slicer_logic import widget_glue as glue  # noqa: E402

README = "https://github.com/universalseg/UniversalSeg#3d-slicer-module"


class UniversalSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "UniversalSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["UniversalSeg developers"]
        self.parent.helpText = (
            "Segments organs and lesions in CT, MR, PET and ultrasound volumes with one universal network "
            f"(Hermes context priors). See the <a href='{README}'>README</a>. The bundled model is for "
            "research use only: it is not a medical device and must not be used for diagnosis or treatment.")
        self.parent.acknowledgementText = (
            "Hermes: Gao et al., Training Like a Medical Resident: Context-Prior Learning Toward Universal "
            "Medical Image Segmentation, CVPR 2024. MedSAM: Ma et al., Segment anything in medical images, "
            "Nature Communications 2024; LiteMedSAM (MedSAM on laptop). The bundled model was trained on "
            "OpenKBP, the Medical Segmentation Decathlon hippocampus task, ACDC, the 2018 Left Atrium "
            "challenge (LA 2018) and BraTS 2015.")


@parameterNodeWrapper
class UniversalSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(glue.modality_choices())] = "CT"
    tasks: list[str]
    device: Annotated[str, Choice(list(glue.DEVICES))] = glue.DEVICES[0]
    useBundledModel: bool = True
    modelPath: str = ""
    refineBackend: Annotated[str, Choice(list(glue.REFINE_BACKENDS))] = glue.REFINE_BACKENDS[0]
    refineMode: Annotated[str, Choice(list(glue.REFINE_MODES))] = glue.REFINE_MODES[0]
    medsam2Checkpoint: str = ""
    includePoints: vtkMRMLMarkupsFiducialNode
    excludePoints: vtkMRMLMarkupsFiducialNode
    addBeside: bool = False
    outputSegmentation: vtkMRMLSegmentationNode


class UniversalSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):  # nothing heavy here: no imports of torch, no installs
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._guiTag = self.job = None
        self._shownModality = self._guessedFor = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UniversalSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UniversalSegLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)
        self.ui.modelPathLineEdit.nameFilters = ["Checkpoints (*.pt *.pth *.ckpt)"]
        self.ui.modelPathLineEdit.currentPathChanged.connect(lambda path: self._set("modelPath", path))
        self.ui.medsam2CheckpointLineEdit.nameFilters = ["Checkpoints (*.pt *.pth)"]
        self.ui.medsam2CheckpointLineEdit.currentPathChanged.connect(lambda p: self._set("medsam2Checkpoint", p))
        self.ui.refineSegmentSelector.segmentSelectionChanged.connect(self.updateGUI)
        self.ui.taskTree.itemChanged.connect(self.onTasksChanged)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.cancelButton.clicked.connect(lambda: self.job and self.job.cancel())
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.refineButton.clicked.connect(self.onRefine)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.enter())
        self.enter()

    def cleanup(self):
        self.onSceneStartClose()
        self.removeObservers()

    def onSceneStartClose(self, *_):
        if self.job is not None:  # the scene is going away: stop the engine, drop its result
            self.job.cancel()
            self.job = None
            self.timer.stop()
        self.setParameterNode(None)

    def enter(self):
        self.setParameterNode(UniversalSegParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.ui.inputSelector.currentNodeChanged.disconnect(self.onInputChanged)
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = node
        if node is not None:
            self._guiTag = node.connectGui(self.ui)  # first: the parameter node takes the new volume, then the guess
            self.ui.inputSelector.currentNodeChanged.connect(self.onInputChanged)
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def _set(self, name, value):
        if self._parameterNode is not None and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def updateGUI(self, *_):
        p = self._parameterNode
        if p.modality != self._shownModality:
            self.fillTasks(p.modality)
        if self.ui.modelPathLineEdit.currentPath != p.modelPath:
            self.ui.modelPathLineEdit.currentPath = p.modelPath
        if self.ui.medsam2CheckpointLineEdit.currentPath != p.medsam2Checkpoint:
            self.ui.medsam2CheckpointLineEdit.currentPath = p.medsam2Checkpoint
        chosen = bool(self.ui.refineSegmentSelector.selectedSegmentIDs())
        states = glue.control_states(p, self.job is not None, self.logic.can_undo, chosen)
        self.ui.modelPathLineEdit.enabled = states.model_path
        self.ui.segmentButton.enabled = states.segment
        self.ui.cancelButton.enabled = states.cancel
        self.ui.undoButton.enabled = states.undo
        self.ui.refineButton.enabled = states.refine

    def fillTasks(self, modality):
        """Structures of the modality, grouped; a group's check box (auto tri-state) ticks all of them."""
        self._shownModality, tree = modality, self.ui.taskTree
        groups, chosen = glue.task_tree(modality, self._parameterNode.tasks, self.logic.catalog)
        tree.blockSignals(True)
        tree.clear()
        for group, rows in groups:
            top = qt.QTreeWidgetItem([group])
            top.setFlags(top.flags() | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsAutoTristate)
            tree.addTopLevelItem(top)
            for row in rows:
                item = qt.QTreeWidgetItem([row.name])
                item.setData(0, qt.Qt.UserRole, row.id)
                item.setToolTip(0, row.tooltip)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(0, qt.Qt.Checked if row.checked else qt.Qt.Unchecked)
                top.addChild(item)
        tree.blockSignals(False)
        self._set("tasks", chosen)

    def onTasksChanged(self, *_):
        tree = self.ui.taskTree
        items = [tree.topLevelItem(g).child(t) for g in range(tree.topLevelItemCount)
                 for t in range(tree.topLevelItem(g).childCount())]
        self._set("tasks", [i.data(0, qt.Qt.UserRole) for i in items if i.checkState(0) == qt.Qt.Checked])

    def onInputChanged(self, node):
        if node is not None and self._parameterNode is not None and node.GetID() != self._guessedFor:
            self._guessedFor = node.GetID()  # guess once per volume: the user's choice then stands
            guess = sl.guess_modality(node, self.logic.catalog)
            self._set("modality", guess.modality)
            self.ui.modalityHintLabel.text = glue.modality_hint(guess)

    def ensureDependencies(self, dependencies=sl.DEPENDENCIES):
        """On first use, with consent: torch through the PyTorch extension, the rest with pip."""
        return glue.ensure_dependencies(
            self.resourcePath("requirements.txt"), lambda text: slicer.util.confirmOkCancelDisplay(text, glue.TITLE),
            lambda: slicer.util.tryWithErrorDisplay("Installing UniversalSeg's dependencies failed", waitCursor=True),
            slicer.util.pip_install, dependencies=dependencies)

    def onSegment(self):
        if self.ensureDependencies():
            self.startJob(lambda: self.logic.start(glue.request_from_parameters(self._parameterNode)))

    def onRefine(self):
        selector, p = self.ui.refineSegmentSelector, self._parameterNode
        if self.ensureDependencies(glue.refine_dependencies(p.refineBackend)):
            request = glue.refinement_request(p, selector.currentNode(), list(selector.selectedSegmentIDs()))
            self.startJob(lambda: self.logic.start_refinement(request))

    def startJob(self, start):
        try:
            self.job = start()
        except UniversalSegError as err:
            slicer.util.errorDisplay(str(err), windowTitle=glue.TITLE)
            return
        self.ui.statusLabel.text = " ".join(self.job.poll().warnings)
        self.timer.start()
        self.updateGUI()

    def onPoll(self):
        if self.job is None:
            return self.timer.stop()
        status = self.job.poll()
        self.ui.progressBar.value, self.ui.stageLabel.text = glue.progress(status)
        if not status.finished:
            return
        self.timer.stop()
        job, self.job = self.job, None
        outcome = glue.apply_finished(self.logic, job, status)
        if outcome.segmentation is not None:
            self._set("outputSegmentation", outcome.segmentation)
        self.ui.statusLabel.text = outcome.text
        if outcome.error is not None:
            slicer.util.errorDisplay(str(outcome.error), windowTitle=glue.TITLE)
        self.updateGUI()

    def onUndo(self):
        undone = self.logic.undo()
        self.ui.statusLabel.text = glue.undo_text(undone)
        self.updateGUI()


class UniversalSegLogic(ScriptedLoadableModuleLogic, sl.SlicerSegmentationLogic):
    """The module logic: Slicer's parameter-node plumbing over ``SlicerSegmentationLogic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        sl.SlicerSegmentationLogic.__init__(self, slicer.mrmlScene)


class UniversalSegTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled model on the bundled sample MRI, Dice against the stored reference contours."""

    MIN_MEAN_DICE = st.MIN_MEAN_DICE

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_bundled_model_on_sample()

    def test_bundled_model_on_sample(self):
        here = Path(slicer.util.modulePath("UniversalSeg")).parent
        volume = slicer.util.loadVolume(str(st.sample_file(here, st.SAMPLE)))
        label = slicer.util.loadLabelVolume(str(st.sample_file(here, st.SAMPLE_LABEL)))
        before = slicer.util.arrayFromVolume(volume).copy()
        logic = UniversalSegLogic()
        self.delayDisplay("Segmenting the sample with the bundled model")
        applied, scores = st.sample_scores(logic, volume, slicer.util.arrayFromVolume(label))
        self.delayDisplay(st.dice_text(scores))
        self.assertGreaterEqual(sum(scores.values()) / len(scores), self.MIN_MEAN_DICE)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all())
        self.assertEqual(applied.segment_ids, list(scores))
