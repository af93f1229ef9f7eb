"""Inputs section: input volume, modality (guessed once per volume), model, device and the structures offered.

The task tree lists only what the model in use was trained on (``widget_glue.tasks_view``: its manifest tasks
with their validation Dice); weak tasks (Dice below 0.5) stay hidden until "Show weak tasks" is ticked, and the
line above the tree says what is hidden or weak.
"""

from __future__ import annotations

import qt
import slicer

from UniversalSegLib.slicer_logic import widget_glue as glue

from .base import Section


class InputsSection(Section):
    def __init__(self, owner, logic):
        self.uiWidget = slicer.util.loadUI(owner.resourcePath("UI/Inputs.ui"))
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
        self.logic = logic
        self._shownKey = self._guessedFor = None
        self.ui.modelPathLineEdit.nameFilters = ["Checkpoints (*.pt *.pth *.ckpt)"]
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.onModelPath)
        self.ui.taskTree.itemChanged.connect(self.onTasksChanged)

    def onModelPath(self, path):
        self.setParameter("modelPath", path)

    def onInputChanged(self, node):
        """The input selector changed (connected after ``connectGui``: see ``widget_glue.PanelBinding``)."""
        self._guessedFor, hint = glue.guess_on_input(self.parameters, node, self._guessedFor, self.logic.catalog)
        if hint is not None:
            self.ui.modalityHintLabel.text = hint

    def update(self, parameters, states):
        if glue.tasks_key(parameters) != self._shownKey:
            self.fillTasks(parameters)
        if self.ui.modelPathLineEdit.currentPath != parameters.modelPath:
            self.ui.modelPathLineEdit.currentPath = parameters.modelPath
        self.ui.modelPathLineEdit.enabled = states.model_path

    def fillTasks(self, parameters):
        """The model's structures of the modality, grouped; a group's check box (auto tri-state) ticks them all."""
        self._shownKey, tree = glue.tasks_key(parameters), self.ui.taskTree
        view = glue.tasks_view(parameters, self.logic.catalog)
        tree.blockSignals(True)
        tree.clear()
        for group, rows in view.groups:
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
        tree.expandAll()
        tree.blockSignals(False)
        self.ui.taskWarningLabel.text = view.warning
        self.ui.taskWarningLabel.visible = bool(view.warning)
        self.setParameter("tasks", view.chosen)

    def onTasksChanged(self, *_):
        tree = self.ui.taskTree
        items = [tree.topLevelItem(g).child(t) for g in range(tree.topLevelItemCount)
                 for t in range(tree.topLevelItem(g).childCount())]
        self.setParameter("tasks", [i.data(0, qt.Qt.UserRole) for i in items if i.checkState(0) == qt.Qt.Checked])
