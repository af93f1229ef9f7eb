"""Region section: an optional ROI box (``vtkMRMLMarkupsROINode``); Segment then works only inside it.

The selector is bound to the parameter ``roi``, which ``widget_glue.request_from_parameters`` passes as
``SegmentationRequest.roi`` (``UniversalSegLib.slicer_logic.roi`` crops, segments and pastes back).
"""

from __future__ import annotations

import slicer

from .base import Section


class RoiSection(Section):
    def __init__(self, owner):
        self.uiWidget = slicer.util.loadUI(owner.resourcePath("UI/Roi.ui"))
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
