"""Refinement on only where it helps: decisions from ``evaluate --refine`` reports, recorded in the policy block,
and ``segment``/``evaluate --refine`` following the shipped policy."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.api import DEFAULT_MODEL
from UniversalSegLib.catalog import Catalog
from UniversalSegLib.inference import SegmentationResult
from UniversalSegLib.policy import POLICY_KEY, PolicyError, policy_of
from UniversalSegLib.refine.decision import REFINE_GAIN, decisions, record_decisions
from UniversalSegLib.refine.refiner import Refiner

MANIFEST = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text(encoding="utf-8"))


def _report(labels: dict) -> dict:
    return {"dataset": "ct_headneck_openkbp", "split": "val", "refinement": {"backend": "litemedsam"},
            "labels": labels, "cases": [{"case": "kbp_004"}]}


def test_refinement_is_on_only_for_a_gain_of_a_hundredth_not_below_the_coarse_figure_on_record():
    report = _report({"Larynx": {"coarse_dice": 0.60, "dice": 0.60 + REFINE_GAIN, "n": 3},
                      "Esophagus": {"coarse_dice": 0.40, "dice": 0.405, "n": 2},
                      "Mandible": {"coarse_dice": 0.70, "dice": 0.80, "n": 3},  # gain, but below 0.857 on record
                      "Brainstem": {"coarse_dice": None, "dice": 0.7, "n": 0},
                      "Spinal cord": {"coarse_dice": 0.7, "dice": 0.7, "n": 3, "refined": False}})  # not asked for
    floor = {"mandible": 0.857}
    made = {d.task: d.refine for d in decisions([report], floor)}
    assert made == {"larynx": True, "esophagus": False, "mandible": False}
    with pytest.raises(Exception, match="not one of `evaluate --refine`"):
        decisions([{"dataset": "x", "labels": {}}])


def test_decisions_are_recorded_in_the_policy_block_and_validate():
    manifest = copy.deepcopy(MANIFEST)
    coarse = manifest[POLICY_KEY]["tasks"]["larynx"]["validation"]["coarse_dice"]
    report = _report({"Larynx": {"coarse_dice": coarse - 0.05, "dice": coarse + 0.02, "n": 3},
                      "Mandible": {"coarse_dice": 0.85, "dice": 0.80, "n": 3}})
    record_decisions(manifest, [report])
    policy = policy_of(manifest)
    assert policy is not None
    assert policy.tasks["larynx"].refine and policy.tasks["larynx"].refined_dice == round(coarse + 0.02, 4)
    assert policy.tasks["larynx"].coarse_dice == coarse  # the full validation figure stays
    assert not policy.tasks["mandible"].refine and policy.tasks["mandible"].refined_dice == 0.8
    assert manifest["validation"]["ct_headneck_openkbp refined"]["case_ids"] == ["kbp_004"]
    broken = copy.deepcopy(MANIFEST)
    broken[POLICY_KEY]["tasks"]["larynx"]["threshold"] = 2.0
    with pytest.raises(PolicyError):
        record_decisions(broken, [report])


def test_the_shipped_policy_refines_only_tasks_it_measured_to_gain():
    policy = policy_of(MANIFEST)
    assert policy is not None
    for tid, task in policy.tasks.items():
        if task.refine:
            assert task.refined_dice is not None and task.coarse_dice is not None, tid
            assert task.refined_dice >= task.coarse_dice, tid  # no task refined below its coarse figure
    refined = MANIFEST["validation"].get("ct_headneck_openkbp refined")
    if refined:  # the report the decisions came from: same cases, coarse and refined side by side
        for name, figures in refined["labels"].items():
            tid = Catalog.load().task(name).id
            gained = figures["dice"] - figures["coarse_dice"] >= REFINE_GAIN
            assert policy.tasks[tid].refine <= gained, tid


class _Grow(Refiner):
    """A stand-in refiner that fills each slice's box (the coarse mask grown by the margin; no model needed)."""

    def refine_slices(self, slices, objects, space):
        out = []
        for prompts in objects:
            mask = np.zeros(slices.shape, bool)
            for z, boxes in prompts.slice_boxes.items():
                for x0, y0, x1, y1 in np.round(boxes).astype(int):
                    mask[z, y0:y1 + 1, x0:x1 + 1] = True
            out.append(mask)
        return out


def test_segment_refine_follows_the_models_policy_and_all_refines_everything():
    from UniversalSegLib.refine.cli import refine_result

    catalog = Catalog.load()
    array = np.zeros((8, 24, 24), np.uint8)
    array[2:6, 4:9, 4:9] = 1
    array[2:6, 14:19, 14:19] = 2
    labels = sitk.GetImageFromArray(array)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    tasks = [catalog.task("larynx"), catalog.task("esophagus")]
    tasks = [dataclasses.replace(tasks[0], refine=True), dataclasses.replace(tasks[1], refine=False)]  # the policy's
    result = SegmentationResult(labels, tasks, catalog.modality("CT"))
    args = argparse.Namespace(refine_task=[], mode="slices", margin=2.0, mask_prompt=None)
    got = sitk.GetArrayFromImage(refine_result(image, result, args, _Grow(), log=lambda _: None).labels)
    assert (got == 1).sum() > (array == 1).sum() and np.array_equal(got == 2, array == 2)  # larynx only
    args.refine_task = ["all"]
    got = sitk.GetArrayFromImage(refine_result(image, result, args, _Grow(), log=lambda _: None).labels)
    assert (got == 2).sum() > (array == 2).sum()
