"""Run section: where the segments go, Segment / Cancel / Undo, and the background job's progress.

A job (segmentation or refinement) runs in the background; a QTimer polls it and, once it has finished, the
logic applies it on the main thread (``widget_glue.apply_finished``).
"""

from __future__ import annotations

import qt
import slicer

from UniversalSegLib.errors import UniversalSegError
from UniversalSegLib.slicer_logic import widget_glue as glue

from .base import Section


class RunSection(Section):
    def __init__(self, owner, logic, ensure, changed):
        """``ensure(dependencies)``: the Dependencies section's check/install; ``changed()``: the panel update."""
        self.uiWidget = slicer.util.loadUI(owner.resourcePath("UI/Run.ui"))
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
        self.logic, self.ensure, self.changed, self.job = logic, ensure, changed, None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.undoButton.clicked.connect(self.onUndo)

    def update(self, parameters, states):
        self.ui.segmentButton.enabled = states.segment
        self.ui.cancelButton.enabled = states.cancel
        self.ui.undoButton.enabled = states.undo

    def onSegment(self):
        if self.parameters is not None and self.ensure():
            self.startJob(lambda: self.logic.start(glue.request_from_parameters(self.parameters)))

    def startJob(self, start):
        """Start the job ``start()`` returns; a problem the user can fix is shown, and nothing runs."""
        try:
            self.job = start()
        except UniversalSegError as err:
            slicer.util.errorDisplay(str(err), windowTitle=glue.TITLE)
            return
        self.ui.statusLabel.text = " ".join(self.job.poll().warnings)
        self.timer.start()
        self.changed()

    def onCancel(self):
        if self.job is not None:
            self.job.cancel()

    def onPoll(self):
        if self.job is None:
            self.timer.stop()
            return
        status = self.job.poll()
        self.ui.progressBar.value, self.ui.stageLabel.text = glue.progress(status)
        if not status.finished:
            return
        self.timer.stop()
        job, self.job = self.job, None
        outcome = glue.apply_finished(self.logic, job, status)
        if outcome.segmentation is not None:
            self.setParameter("outputSegmentation", outcome.segmentation)
        self.ui.statusLabel.text = outcome.text
        if outcome.error is not None:
            slicer.util.errorDisplay(str(outcome.error), windowTitle=glue.TITLE)
        self.changed()

    def onUndo(self):
        self.ui.statusLabel.text = glue.undo_text(self.logic.undo())
        self.changed()

    def cleanup(self):
        """The scene is going away: stop the engine and drop its result."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.timer.stop()
