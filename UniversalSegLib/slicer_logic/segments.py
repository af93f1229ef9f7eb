"""Writing a result into a segmentation node, and taking it back out (the undo entries).

One segment per task (catalog name, colour, terminology entry, task and model tags), sharing one labelmap
layer; a segment of the same task that exists already is saved in the :class:`UndoEntry` before it is
replaced::

    >>> entry = UndoEntry(segmentation_id=node.GetID(), created_node=False, added=[], saved=[],
    ...                   description="UniversalSeg on 'ct'")                      # doctest: +SKIP
    >>> write_segments(node, volume, run, result, entry)    # entry.added, entry.saved filled  # doctest: +SKIP
    >>> revert(scene, entry)                                 # the node as it was before  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk
import slicer

from ..catalog import Task
from ..errors import UniversalSegError
from ..inference import SegmentationResult
from .nodes import BINARY_LABELMAP, oriented_image, remove_node, segment_tag
from .request import PreparedRun

TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment.GetTerminologyEntryTagName()
TASK_TAG = "UniversalSeg.TaskId"
MODEL_TAG = "UniversalSeg.Model"


@dataclass
class SavedSegment:
    """A segment as it was before a run replaced it."""

    segment_id: str
    index: int
    metadata: object  # vtkSegment with name, colour, tags (no representation)
    labelmap: object  # vtkOrientedImageData, 0/1, the segment's own copy


@dataclass
class UndoEntry:
    """What one applied run changed: the node (created or not), the segments it added and those it replaced,
    and other nodes it created (the ROI boxes of a refinement)."""

    segmentation_id: str
    created_node: bool
    added: list[str]
    saved: list[SavedSegment]
    description: str
    nodes: list[str] = field(default_factory=list)


def new_segmentation_node(scene, volume):
    """A new segmentation node for ``volume``: its geometry, its transform, its subject-hierarchy study."""
    name = scene.GenerateUniqueName(f"{volume.GetName()} UniversalSeg")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    if volume.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    sh = scene.GetSubjectHierarchyNode()
    volume_item = sh.GetItemByDataNode(volume) if sh is not None else 0
    if volume_item:
        parent = sh.GetItemParent(volume_item)
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)
    return node


def write_segments(node, volume, run: PreparedRun, result: SegmentationResult, entry: UndoEntry) -> None:
    """Add one segment per task of ``result`` to ``node``, recording in ``entry`` what was added and replaced."""
    segmentation = node.GetSegmentation()
    if not segmentation.GetNumberOfSegments():  # an empty node: make it the input's, stored as labelmaps
        to_labelmap = getattr(node, "SetSourceRepresentationToBinaryLabelmap", None)
        (to_labelmap or node.SetMasterRepresentationToBinaryLabelmap)()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    layer = oriented_image(sitk.GetArrayViewFromImage(result.labels), run.ijk_to_ras)
    for value, task in enumerate(result.tasks, start=1):
        existing = segment_of_task(segmentation, task) if run.replace_existing else None
        if existing is not None:
            entry.saved.append(save_segment(node, existing))
            segmentation.RemoveSegment(existing)
            segment_id = existing
        elif segmentation.GetSegment(task.id) is None:
            segment_id = task.id
        else:
            segment_id = segmentation.GenerateUniqueSegmentID(task.id)
        segment = slicer.vtkSegment()
        segment.SetName(task.name)
        segment.SetColor(*task.color_float())
        segment.SetLabelValue(value)
        segment.SetTag(TERMINOLOGY_TAG, task.terminology_entry())
        segment.SetTag(TASK_TAG, task.id)
        segment.SetTag(MODEL_TAG, result.model)
        segment.AddRepresentation(BINARY_LABELMAP, layer)
        if not segmentation.AddSegment(segment, segment_id):
            raise UniversalSegError(f"could not add segment '{task.name}' to '{node.GetName()}'",
                                    "choose a new output segmentation")
        entry.added.append(segment_id)
        if existing is not None:
            segmentation.SetSegmentIndex(segment_id, entry.saved[-1].index)


def segment_of_task(segmentation, task: Task) -> str | None:
    """The id of an existing segment of ``task``: tagged with its id, else named like it."""
    by_name = None
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        if segment_tag(segment, TASK_TAG) == task.id:
            return segmentation.GetNthSegmentID(index)
        if by_name is None and segment.GetName().strip().lower() == task.name.lower():
            by_name = segmentation.GetNthSegmentID(index)
    return by_name


def save_segment(node, segment_id: str) -> SavedSegment:
    """A copy of a segment's metadata, labelmap and position, to put it back on undo."""
    segmentation = node.GetSegmentation()
    metadata = slicer.vtkSegment()
    metadata.DeepCopyMetadata(segmentation.GetSegment(segment_id))
    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    return SavedSegment(segment_id, segmentation.GetSegmentIndex(segment_id), metadata, labelmap)


def revert(scene, entry: UndoEntry) -> None:
    """Undo ``entry``: remove the nodes it created, or its segments, and restore the segments it replaced."""
    for node_id in entry.nodes:
        created = scene.GetNodeByID(node_id)
        if created is not None:
            remove_node(scene, created)
    node = scene.GetNodeByID(entry.segmentation_id) if entry.segmentation_id else None
    if node is None:
        return
    if entry.created_node:
        remove_node(scene, node)
        return
    segmentation = node.GetSegmentation()
    for segment_id in entry.added:
        if segmentation.GetSegment(segment_id) is not None:
            segmentation.RemoveSegment(segment_id)
    for saved in sorted(entry.saved, key=lambda s: s.index):
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(saved.metadata)
        segment.SetLabelValue(1)
        segment.AddRepresentation(BINARY_LABELMAP, saved.labelmap)
        segmentation.AddSegment(segment, saved.segment_id)
        segmentation.SetSegmentIndex(saved.segment_id, min(saved.index, segmentation.GetNumberOfSegments() - 1))
