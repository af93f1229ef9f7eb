"""The inference policy lives in the model's manifest (issue 25): schema, validator, inference and export.

Real files only: the shipped manifest and weights (copied beside a changed manifest), a held-out sample,
and a tiny checkpoint exported as training would.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, build_checkpoint

from UniversalSegLib import REQUIRES_FIELD, __version__, version_matches
from UniversalSegLib.api import DEFAULT_MODEL, load_model, segment
from UniversalSegLib.catalog import Catalog
from UniversalSegLib.inference import InferenceOptions, largest_component
from UniversalSegLib.model_tasks import model_tasks, read_manifest
from UniversalSegLib.policy import POLICY_KEY, SHOW_DICE, PolicyError, policy_of, validate_policy
from UniversalSegLib.training.export import export_model

CATALOG = Catalog.load()
MANIFEST = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text(encoding="utf-8"))
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"
KBP_SAMPLE = REPO / "samples" / "kbp_sample.nii.gz"
HN = ["brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible"]


def test_the_shipped_manifest_has_a_valid_block_with_its_validation_figures():
    policy = policy_of(read_manifest())
    assert policy is not None and policy.version == 1 and list(policy.tasks) == MANIFEST["task_ids"]
    labels = MANIFEST["validation"]["ct_headneck_openkbp"]["labels"]
    assert policy.tasks["mandible"].coarse_dice == labels["Mandible"]["dice"]
    assert policy.tasks["mandible"].refined_dice is None and not policy.tasks["mandible"].refine
    assert policy.tasks["brain_tumour_edema"].source == "validation during training"
    for tid, task in policy.tasks.items():
        assert task.shown == (task.dice is not None and task.dice >= SHOW_DICE), tid
        catalog = CATALOG.task(tid)  # the values measured for the catalog, now carried by the model
        assert (task.keep_largest, task.keep_largest_joint, task.mirror_partner, task.threshold) == (
            catalog.keep_largest, catalog.keep_largest_joint, catalog.mirror, 0.5), tid
    assert policy.tasks["parotid_left"].mirror_axes == ("x",) and policy.tasks["esophagus"].mirror_partner is None
    assert validate_policy(policy.to_dict(), MANIFEST["task_ids"]) == policy  # it round-trips


def _broken(change) -> dict:
    block = copy.deepcopy(MANIFEST[POLICY_KEY])
    change(block, block["tasks"])
    return block


@pytest.mark.parametrize(("change", "message"), [
    (lambda b, t: t["larynx"].update(threshold=1.5),
     r"inference_policy\.tasks\.larynx\.threshold is 1\.5, not a probability in \(0, 1\)\. What to do: set it"),
    (lambda b, t: t["larynx"].update(keep_largest="yes"),
     r"tasks\.larynx\.keep_largest is 'yes', not true or false\. What to do: write true or false"),
    (lambda b, t: t["larynx"].update(keep_largets=True),
     r"tasks\.larynx\.keep_largets is not a field of the policy\. What to do: did you mean 'keep_largest'\?"),
    (lambda b, t: t["larynx"].pop("refine"), r"tasks\.larynx\.refine is missing\. What to do: add it"),
    (lambda b, t: t.pop("mandible"), r"inference_policy\.tasks has no entry for mandible\. What to do: add an entry"),
    (lambda b, t: t.update(liver=copy.deepcopy(t["esophagus"])), r"names liver, which the model was not trained for"),
    (lambda b, t: t.pop("parotid_right"), r"tasks\.parotid_left\.mirror\.partner is 'parotid_right', a task with no "),
    (lambda b, t: b.update(version=2), r"inference_policy\.version is 2, newer than this UniversalSeg reads \(1\)"),
    (lambda b, t: b.pop("version"), r"inference_policy\.version is None, not an integer"),
    (lambda b, t: t["mandible"]["mirror"].update(axes=["z"]),
     r"tasks\.mandible\.mirror\.axes is \['z'\]\. What to do: this version averages over \['x'\]"),
    (lambda b, t: t["parotid_left"]["mirror"].update(partner="parotid_left"),
     r"tasks\.parotid_right\.mirror\.partner is 'parotid_left', whose mirror is not 'parotid_right'"),
    (lambda b, t: t["larynx"]["validation"].update(coarse_dice=1.2), r"validation\.coarse_dice is 1\.2, not a Dice"),
    (lambda b, t: t["brain_tumour_edema"].update(shown=True),
     r"tasks\.brain_tumour_edema\.shown is true but the default policy's coarse_dice is 0\.22.*Dice >= 0\.5"),
    (lambda b, t: (t["larynx"].update(refine=True), t["larynx"]["validation"].update(refined_dice=None)),
     # refined, but only the coarse result was measured
     r"tasks\.larynx\.shown is true but the default policy's refined_dice is None"),
])
def test_broken_blocks_are_refused_naming_the_field(change, message):
    with pytest.raises(PolicyError, match=message):
        validate_policy(_broken(change), MANIFEST["task_ids"], "model manifest x.json")


def _model_with(tmp_path: Path, name: str, change=None, block: bool = True) -> Path:
    """The bundled weights, byte for byte, beside a manifest whose policy ``change`` edits (or has no block)."""
    weights = tmp_path / f"{name}.pt"
    shutil.copy(DEFAULT_MODEL, weights)
    manifest = copy.deepcopy(MANIFEST)
    if change is not None:
        change(manifest[POLICY_KEY]["tasks"])
    if not block:
        del manifest[POLICY_KEY]
    weights.with_suffix(".json").write_text(json.dumps(manifest), encoding="utf-8")
    return weights


def test_a_broken_block_stops_the_model_loading(tmp_path):
    weights = _model_with(tmp_path, "broken", lambda t: t["mandible"].update(threshold=0))
    with pytest.raises(PolicyError, match=r"broken\.json: inference_policy\.tasks\.mandible\.threshold is 0"):
        load_model(weights)


def test_an_old_manifest_without_block_runs_with_the_catalog(tmp_path):
    old = load_model(_model_with(tmp_path, "old", block=False))
    assert old.policy is None
    tasks = [CATALOG.task(t) for t in MANIFEST["task_ids"]]
    assert old.with_policy(tasks) == tasks
    shipped = load_model()  # the shipped block holds the catalog's values today, so both run alike, but for
    assert shipped.policy is not None  # the refine flags the block's measurements changed (issue 26)
    refined = {tid for tid, p in shipped.policy.tasks.items() if p.refine != CATALOG.task(tid).refine}
    assert refined <= {"heart_rv_cavity"}
    assert [t for t in shipped.with_policy(tasks) if t.id not in refined] == [t for t in tasks if t.id not in refined]
    no_manifest = tmp_path / "bare" / "model.pt"
    no_manifest.parent.mkdir()
    shutil.copy(DEFAULT_MODEL, no_manifest)
    assert load_model(no_manifest).policy is None


def _labels(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labels)


def _pieces(mask: np.ndarray) -> int:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]


def test_inference_follows_the_manifests_keep_largest_mirror_and_refine(tmp_path):
    """Slices of the head and neck sample where the raw larynx (first 48) and oesophagus (last 32) come in pieces:
    the shipped policy keeps the larynx's largest piece only; a changed manifest the oesophagus's instead."""
    image = sitk.ReadImage(str(KBP_SAMPLE))
    shipped = policy_of(MANIFEST)
    assert shipped.tasks["larynx"].keep_largest and not shipped.tasks["esophagus"].keep_largest

    def change(tasks):
        tasks["larynx"]["keep_largest"], tasks["esophagus"]["keep_largest"] = False, True
        tasks["larynx"].update(refine=True, shown=False)  # refined Dice not measured: hidden
        tasks["larynx"]["validation"]["refined_dice"] = None

    weights = _model_with(tmp_path, "swapped", change)
    larynx, esophagus = 1 + HN.index("larynx"), 1 + HN.index("esophagus")
    for crop, value in ((image[:, :, :48], larynx), (image[:, :, 96:], esophagus)):
        before = segment(crop, tasks=HN, modality="CT", threads=2)
        after = segment(crop, tasks=HN, modality="CT", threads=2, model=weights)
        old, new = _labels(before), _labels(after)
        raw, kept = (new, old) if value == larynx else (old, new)
        assert _pieces(raw == value) > 1  # pieces to remove
        assert np.array_equal(kept == value, largest_component(raw == value))
        others = ~np.isin(old, [larynx, esophagus]) & ~np.isin(new, [larynx, esophagus])
        assert np.array_equal(old[others], new[others])  # every other task as before
    assert [t.refine for t in after.tasks] == [t == "larynx" for t in HN]  # what `segment --refine` refines
    forced = segment(crop, tasks=HN, modality="CT", threads=2, model=weights,
                     options=InferenceOptions(keep_largest=True))  # an explicit option still wins
    assert np.array_equal(_labels(forced), _labels(segment(crop, tasks=HN, modality="CT", threads=2,
                                                           options=InferenceOptions(keep_largest=True))))
    hidden = {t.id: t for t in model_tasks(weights)}
    assert hidden["larynx"].weak and hidden["larynx"].dice is None

    unmirrored = load_model(_model_with(tmp_path, "unmirrored", lambda t: t["larynx"].update(mirror=None)))
    neck = [CATALOG.task(t) for t in ("parotid_right", "parotid_left", "larynx")]
    assert load_model().mirror_order(load_model().query(neck), neck) == [1, 0, 2, None]
    assert unmirrored.mirror_order(unmirrored.query(neck), neck) == [1, 0, None, None]  # no mirror for the larynx


def test_inference_follows_the_manifests_threshold(tmp_path):
    weights = _model_with(tmp_path, "strict", lambda t: t["hippocampus_posterior"].update(threshold=0.9))
    strict = _labels(segment(SAMPLE, tasks=["hippocampus_posterior"], modality="MR-T1", threads=2, model=weights))
    alone = _labels(segment(SAMPLE, tasks=["hippocampus_posterior"], modality="MR-T1", threads=2))
    assert (alone == 1).sum() > 0 and (strict == 1).sum() < 0.95 * (alone == 1).sum()
    assert ((strict == 1) <= (alone == 1)).all()  # a higher threshold only removes voxels
    again = _labels(segment(SAMPLE, tasks=["hippocampus_posterior"], modality="MR-T1", threads=2, model=weights,
                            options=InferenceOptions(threshold=0.5)))
    assert np.array_equal(again, alone)


def _trained_checkpoint(path: Path) -> Path:
    build_checkpoint(path, task_ids=["liver", "spleen", "kidney_right", "parotid_left", "mandible"])
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = {"iterations": 3, "licenses": {"a": "CC BY 4.0"},
                           "config": {"data_root": str(path.parent / "data")},
                           "val_dice_per_label": {"a/Liver": 0.7, "a/Spleen": 0.3}}
    torch.save(payload, path)
    return path


def test_export_writes_a_block_that_validates(tmp_path):
    source = _trained_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "ship" / "model.pt"
    out.parent.mkdir()
    evaluation = {"a": {"labels": {"Liver": {"dice": 0.91}, "Right kidney": {"dice": 0.8}}},
                  "a refined": {"refinement": {"backend": "litemedsam"}, "labels": {"Right kidney": {"dice": 0.85}}}}
    manifest = export_model(source, out, version="1.0.0", evaluation=evaluation, root=tmp_path,
                            policy={"liver": {"keep_largest": True}, "kidney_right": {"refine": True}})
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == manifest
    assert manifest[REQUIRES_FIELD] == ">=0.9,<1.0" and version_matches(manifest[REQUIRES_FIELD], __version__)
    assert manifest["training"]["config"]["data_root"] == "data"  # relative to the root given, no machine path
    policy = policy_of(read_manifest(out))
    assert policy is not None and list(policy.tasks) == manifest["task_ids"]
    liver, spleen, right, parotid, mandible = (policy.tasks[t] for t in manifest["task_ids"])
    assert liver.keep_largest and liver.dice == 0.91 and liver.source == "validation" and liver.shown
    assert spleen.dice == 0.3 and spleen.source == "validation during training" and not spleen.shown
    assert right.refine and right.coarse_dice == 0.8 and right.dice == 0.85 and right.shown
    assert parotid.dice is None and parotid.source == "none" and not parotid.shown
    # the catalog's mirror pairs, where the model has the partner: not the right parotid
    assert (mandible.mirror_partner, parotid.mirror_partner, CATALOG.task("parotid_left").mirror) == (
        "mandible", None, "parotid_right")
    assert [(t.id, t.dice, t.weak) for t in model_tasks(out)] == [("liver", 0.91, False), ("spleen", 0.3, True),
        ("kidney_right", 0.85, False), ("parotid_left", None, True), ("mandible", None, True)]
    assert load_model(out).policy == policy


def test_export_refuses_a_policy_that_does_not_validate(tmp_path):
    source = _trained_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "model.pt"
    with pytest.raises(PolicyError, match=r"inference_policy\.tasks\.liver\.threshold is 2"):
        export_model(source, out, policy={"liver": {"threshold": 2}})
    assert not out.exists() and not out.with_suffix(".json").exists()  # nothing written
