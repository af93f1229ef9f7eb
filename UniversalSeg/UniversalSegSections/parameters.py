"""The module's parameter node: every panel value, saved with the scene (Slicer's ``parameterNodeWrapper``).

A widget with the dynamic property ``SlicerParameterName`` in a section's ``.ui`` is bound to the parameter of
that name by ``connectGui``; ``tasks`` and ``modelPath`` are written by the sections themselves.
"""


from typing import Annotated

from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

from UniversalSegLib.slicer_logic import widget_glue as glue


@parameterNodeWrapper
class UniversalSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(glue.modality_choices())] = "CT"
    tasks: list[str]
    showWeakTasks: bool = False
    device: Annotated[str, Choice(list(glue.DEVICES))] = glue.DEVICES[0]
    useBundledModel: bool = True
    modelPath: str = ""
    roi: vtkMRMLMarkupsROINode
    refineBackend: Annotated[str, Choice(list(glue.REFINE_BACKENDS))] = glue.REFINE_BACKENDS[0]
    refineMode: Annotated[str, Choice(list(glue.REFINE_MODES))] = glue.REFINE_MODES[0]
    medsam2Checkpoint: str = ""
    includePoints: vtkMRMLMarkupsFiducialNode
    excludePoints: vtkMRMLMarkupsFiducialNode
    addBeside: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
