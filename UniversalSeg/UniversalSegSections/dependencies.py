"""Dependencies section: which Python packages are missing, and installing them (asked first).

``ensure`` is also what Segment and Refine call before they start: nothing missing, it returns at once;
otherwise ``UniversalSegLib.slicer_logic.dependencies.ensure_dependencies`` asks, then installs torch through
the PyTorch extension and the rest with pip, reporting each step here and in the status bar.
"""

from __future__ import annotations

import slicer

from UniversalSegLib.slicer_logic import dependencies as deps
from UniversalSegLib.slicer_logic import widget_glue as glue

from .base import Section


class DependenciesSection(Section):
    def __init__(self, owner):
        self.uiWidget = slicer.util.loadUI(owner.resourcePath("UI/Dependencies.ui"))
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.refresh()

    def refresh(self):
        text, needed = glue.dependency_status()
        self.ui.dependencyStatusLabel.text = text
        self.ui.installButton.enabled = needed

    def onInstall(self):
        self.ensure()

    def confirm(self, text):
        return slicer.util.confirmOkCancelDisplay(text, glue.TITLE)

    def progress(self, line):
        self.ui.installProgressLabel.text = line
        slicer.util.showStatusMessage(line, 3000)
        slicer.app.processEvents()

    def ensure(self, dependencies=deps.DEPENDENCIES):
        """Whether ``dependencies`` are there, installing what is missing with consent; a failure is shown."""
        try:
            with slicer.util.tryWithErrorDisplay("Installing UniversalSeg's dependencies failed"):
                return deps.ensure_dependencies(self.confirm, self.progress, dependencies=dependencies)
        except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
            return False
        finally:
            self.refresh()
