"""Refine section: refine chosen segments with box prompts (LiteMedSAM or MedSAM2) and optional point lists.

The segment selector follows the Run section's output segmentation; the job runs like a segmentation
(``RunSection.startJob``) and Undo restores the unrefined segments.
"""

from __future__ import annotations

import slicer

from UniversalSegLib.slicer_logic import widget_glue as glue

from .base import Section


class RefineSection(Section):
    def __init__(self, owner, logic, ensure, start_job, changed):
        self.uiWidget = slicer.util.loadUI(owner.resourcePath("UI/Refine.ui"))
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
        self.logic, self.ensure, self.startJob = logic, ensure, start_job
        self.ui.medsam2CheckpointLineEdit.nameFilters = ["Checkpoints (*.pt *.pth)"]
        self.ui.medsam2CheckpointLineEdit.currentPathChanged.connect(self.onCheckpoint)
        self.ui.refineSegmentSelector.segmentSelectionChanged.connect(lambda *_: changed())
        self.ui.refineButton.clicked.connect(self.onRefine)

    def follow(self, output_changed):
        """Show the segments of the output segmentation (``output_changed``: its selector's currentNodeChanged)."""
        output_changed.connect(self.ui.refineSegmentSelector.setCurrentNode)

    def chosen(self) -> bool:
        return bool(self.ui.refineSegmentSelector.selectedSegmentIDs())

    def onCheckpoint(self, path):
        self.setParameter("medsam2Checkpoint", path)

    def update(self, parameters, states):
        if self.ui.medsam2CheckpointLineEdit.currentPath != parameters.medsam2Checkpoint:
            self.ui.medsam2CheckpointLineEdit.currentPath = parameters.medsam2Checkpoint
        self.ui.refineButton.enabled = states.refine

    def onRefine(self):
        selector, p = self.ui.refineSegmentSelector, self.parameters
        if p is not None and self.ensure(glue.refine_dependencies(p.refineBackend)):
            request = glue.refinement_request(p, selector.currentNode(), list(selector.selectedSegmentIDs()))
            self.startJob(lambda: self.logic.start_refinement(request))
