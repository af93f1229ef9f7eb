"""What the model offers (UniversalSegLib/model_tasks.py) and the panel's task tree built from it (issue 24)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from UniversalSegLib.catalog import BUNDLED, Catalog
from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.model_tasks import DEFAULT_MANIFEST, WEAK_DICE, model_tasks, offered_tasks, read_manifest
from UniversalSegLib.policy import POLICY_KEY
from UniversalSegLib.slicer_logic.widget_glue import model_task_tree, task_tree

HN = ["brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible"]
CATALOG = Catalog.load()


def test_every_model_task_has_its_validation_dice():
    manifest = read_manifest()
    tasks = model_tasks()
    assert [t.id for t in tasks] == manifest["task_ids"]
    by_id = {t.id: t for t in tasks}
    labels = manifest["validation"]["ct_headneck_openkbp"]["labels"]
    assert by_id["brainstem"].dice == labels["Brainstem"]["dice"] and by_id["brainstem"].source == "validation"
    block = manifest[POLICY_KEY]["tasks"]  # read from the manifest's policy block, which holds those figures
    default = {t: block[t]["validation"]["refined_dice" if block[t]["refine"] else "coarse_dice"] for t in block}
    assert all(by_id[t].dice == default[t] and by_id[t].weak != block[t]["shown"] for t in manifest["task_ids"])
    assert by_id["heart_lv_myocardium"].modality == "cine-MR" and by_id["left_atrium_cavity"].modality == "LGE-MR"
    tumour = [t for t in tasks if t.id.startswith("brain_tumour")]
    assert len(tumour) == 4 and all(t.weak and t.dice < WEAK_DICE and t.modality == "MR-FLAIR" for t in tumour)
    assert all(not t.weak for t in tasks if not t.id.startswith("brain_tumour"))


def test_only_tasks_trained_for_the_modality_are_offered():
    assert [t.id for t in offered_tasks("CT")] == HN  # the catalog has far more CT entries
    assert len(CATALOG.tasks_for("CT")) > 3 * len(HN)
    assert [t.id for t in offered_tasks("t1w")] == ["hippocampus_anterior", "hippocampus_posterior"]
    assert offered_tasks("MR-FLAIR") == [] and len(offered_tasks("MR-FLAIR", show_weak=True)) == 4
    generic = {t.id for t in offered_tasks("MR")}  # MR is the prior of every MR-* sequence
    assert {"hippocampus_anterior", "heart_lv_cavity", "left_atrium_cavity"} <= generic
    everything = offered_tasks("CT", include_catalog=True)
    assert [t.id for t in everything[:7]] == HN and all(not t.in_model for t in everything[7:])
    assert everything[-1].label().endswith("(not in the model)")


def test_the_dice_is_that_of_the_manifest_policy_not_the_catalog(tmp_path):
    """The model's ``inference_policy`` block decides: refined Dice where it refines, whatever the catalog says."""
    raw = json.loads(BUNDLED.read_text(encoding="utf-8"))
    for task in raw["tasks"]:
        task["refine"] = task["id"] == "larynx"  # a catalog that would refine the larynx
    (tmp_path / "catalog.json").write_text(json.dumps(raw))
    catalog = Catalog.load(tmp_path / "catalog.json")
    manifest = json.loads(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
    block = manifest[POLICY_KEY]["tasks"]
    block["mandible"].update(refine=True)
    block["mandible"]["validation"]["refined_dice"] = 0.9
    by_id = {t.id: t for t in model_tasks(manifest, catalog)}
    assert by_id["mandible"].dice == 0.9 and by_id["mandible"].source == "validation (refined)"
    assert by_id["larynx"].dice == block["larynx"]["validation"]["coarse_dice"]  # the model does not refine it
    block["mandible"]["validation"]["refined_dice"] = 0.3  # refined worse than coarse: no longer shown
    with pytest.raises(CheckpointError, match=r"tasks\.mandible\.shown is true but the default policy's "
                                              r"refined_dice is 0\.3"):
        model_tasks(manifest, catalog)
    block["mandible"]["shown"] = False
    assert {t.id: t for t in model_tasks(manifest, catalog)}["mandible"].weak


def test_a_manifest_without_policy_takes_the_catalogs(tmp_path):
    """An export from before the block: the catalog's refine flags pick the refined or the plain report."""
    raw = json.loads(BUNDLED.read_text(encoding="utf-8"))
    for task in raw["tasks"]:
        task["refine"] = task["id"] == "mandible"
    (tmp_path / "catalog.json").write_text(json.dumps(raw))
    catalog = Catalog.load(tmp_path / "catalog.json")
    manifest = json.loads(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
    del manifest[POLICY_KEY]
    manifest["validation"]["refined"] = {"refinement": {"backend": "x"},
                                         "labels": {"Mandible": {"dice": 0.9}, "Larynx": {"dice": 0.1}}}
    by_id = {t.id: t for t in model_tasks(manifest, catalog)}
    assert by_id["mandible"].dice == 0.9 and by_id["mandible"].source == "validation (refined)"
    plain = manifest["validation"]["ct_headneck_openkbp"]["labels"]["Larynx"]["dice"]
    assert by_id["larynx"].dice == plain  # not refined by default: the plain report's figure
    shipped = read_manifest()[POLICY_KEY]["tasks"]  # the bundled catalog: as the shipped block, where the block
    same = {tid for tid in shipped if shipped[tid]["refine"] == CATALOG.task(tid).refine}  # keeps its refine flag
    assert [(t.id, t.dice, t.weak) for t in model_tasks(manifest) if t.id in same] == [
        (t.id, t.dice, t.weak) for t in model_tasks() if t.id in same]


def test_a_model_without_manifest_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no model manifest"):
        read_manifest(tmp_path / "model.pt")


def test_panel_tree_labels_dice_and_hides_weak_tasks():
    tree = model_task_tree("CT", selected=["mandible", "liver"])
    assert [g for g, _ in tree.groups] == ["Head and neck organs at risk"]
    rows = tree.groups[0][1]
    assert [r.id for r in rows] == HN and rows[-1].name == "Mandible (Dice 0.86)" and rows[-1].checked
    assert tree.chosen == ["mandible"] and tree.warning == "" and tree.hidden == 0  # liver: not in the model
    assert "validation Dice 0.86" in rows[-1].tooltip
    hidden = model_task_tree("MR-FLAIR", selected=["brain_tumour_edema"])
    assert hidden.groups == [] and hidden.chosen == [] and hidden.hidden == 4
    assert "Show weak tasks" in hidden.warning
    shown = model_task_tree("MR-FLAIR", selected=["brain_tumour_edema"], show_weak=True)
    names = [r.name for r in shown.groups[0][1]]
    assert names[1] == "Peritumoral edema (Dice 0.23)" and shown.chosen == ["brain_tumour_edema"]
    assert "often wrong" in shown.warning and shown.hidden == 0
    assert task_tree("CT", ["mandible"], CATALOG) == (tree.groups, ["mandible"])


def test_panel_tree_for_a_model_without_manifest_lists_the_catalog(tmp_path):
    tree = model_task_tree("CT", [], model=tmp_path / "custom.pt")
    assert len([r for _, rows in tree.groups for r in rows]) == len(CATALOG.tasks_for("CT"))
    assert "no model manifest" in tree.warning and tree.groups[0][1][0].name.endswith("(not validated)")


def test_panel_tree_for_a_volume_in_the_scene(scene):
    """The panel's route on a real MRML scene: the guessed modality of a volume node picks the tree."""
    from slicer.util import updateVolumeFromArray

    from UniversalSegLib.slicer_logic import guess_modality

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    updateVolumeFromArray(node, np.linspace(-1024, 1500, 512, dtype=np.float32).reshape(8, 8, 8))
    modality = guess_modality(node, CATALOG).modality
    assert modality == "CT"
    assert [r.id for _, rows in model_task_tree(modality, []).groups for r in rows] == HN
