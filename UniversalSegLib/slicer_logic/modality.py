"""Which modality a volume is and which structures the task selector offers for it.

    >>> guess_modality(volume_node, catalog)      # DICOM tags, else the name, else the intensities  # doctest: +SKIP
    ModalityGuess(modality='MR-FLAIR', source='DICOM')
    >>> [(group, [t.id for t in tasks]) for group, tasks in task_groups("FUNDUS")]
    [('Retinal vessels', ['retinal_vessels'])]
"""

from __future__ import annotations

from typing import NamedTuple

import slicer
import slicer.util

from ..api import CT_MINIMUM_HU
from ..catalog import Catalog, Task


class ModalityGuess(NamedTuple):
    """The pre-selected modality id and where it came from: ``"DICOM"``, ``"name"`` or ``"intensity"``."""

    modality: str
    source: str


def dicom_tags(node) -> tuple[str | None, str | None]:
    """(DICOM Modality, Series Description) of a volume loaded from DICOM, else ``(None, None)``.

    Looks at the subject-hierarchy item (``DICOM.Modality``, set by Slicer's DICOM plugins) and, inside the
    Slicer application, at the DICOM database through the node's ``DICOM.instanceUIDs`` attribute.
    """
    modality = description = None
    scene = node.GetScene()
    sh = scene.GetSubjectHierarchyNode() if scene is not None else None
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:
        modality = sh.GetItemAttribute(item, "DICOM.Modality") or None
        description = sh.GetItemAttribute(item, "DICOM.SeriesDescription") or None
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if uids and database is not None and (modality is None or description is None):
        try:
            path = database.fileForInstance(uids[0])
            modality = modality or database.fileValue(path, "0008,0060") or None
            description = description or database.fileValue(path, "0008,103E") or None
        except Exception:  # noqa: BLE001 - a database without the file: fall back to the other clues
            pass
    return modality, description


def guess_modality(node, catalog: Catalog | None = None) -> ModalityGuess:
    """Pre-select a modality: DICOM tags, else the node name, else intensities (min <= -500 -> CT, else MR)."""
    catalog = catalog or Catalog.load()
    dicom_modality, description = dicom_tags(node)
    if dicom_modality or description:
        found = catalog.guess_modality(dicom_modality, description or node.GetName())
        if found is not None:
            return ModalityGuess(found.id, "DICOM")
    found = catalog.guess_modality(None, node.GetName())
    if found is not None:
        return ModalityGuess(found.id, "name")
    array = slicer.util.arrayFromVolume(node)
    return ModalityGuess("CT" if array.size and float(array.min()) <= CT_MINIMUM_HU else "MR", "intensity")


def task_groups(modality: str, catalog: Catalog | None = None) -> list[tuple[str, list[Task]]]:
    """The task selector's content: (group display name, its tasks that apply to ``modality``), catalog order."""
    catalog = catalog or Catalog.load()
    groups: dict[str, list[Task]] = {}
    for task in catalog.tasks_for(modality):
        groups.setdefault(task.group_name or task.group, []).append(task)
    return list(groups.items())
