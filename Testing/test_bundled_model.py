"""The bundled default model: manifest integrity, the README's demo, quality on the held-out sample.

The Dice floors come from the manifest: the validation Dice its ``inference_policy`` block records for the
default policy of the sample's tasks (the whole validation split, measured at export), less
:data:`MARGIN` for one case's scatter around that mean. A regression in preprocessing, inference or the
weights makes these fail; so does a manifest whose figures the weights do not reach.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from UniversalSegLib.api import DEFAULT_MODEL, segment
from UniversalSegLib.catalog import Catalog
from UniversalSegLib.inference import largest_component
from UniversalSegLib.policy import POLICY_KEY, validate_policy

SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"
REFERENCE = REPO / "samples" / "hippo_sample_label.nii.gz"
KBP_SAMPLE = REPO / "samples" / "kbp_sample.nii.gz"
KBP_REFERENCE = REPO / "samples" / "kbp_sample_label.nii.gz"
MANIFEST = DEFAULT_MODEL.with_suffix(".json")
POLICY = validate_policy(json.loads(MANIFEST.read_text())[POLICY_KEY])  # the shipped model's policy and figures
CARDIAC_CASE = "acdc_004_ED"  # an ACDC validation case: 6-10 slices, so every window is padded in z
HN = Catalog.load().datasets["ct_headneck_openkbp"].labels  # label value -> task id
HIPPO = Catalog.load().datasets["mri_hippocampus_msd"].labels
CARDIAC = Catalog.load().datasets["mri_cardiac_acdc"].labels
#: How far one sample case may fall below the validation split's mean Dice of its tasks. For 0.8.6 the samples
#: score above it: hippocampus 0.880 (split 0.876), head and neck 0.785 (0.722), ACDC case 0.900 (0.835).
MARGIN = 0.08


def validated_floor(tasks) -> float:
    """The manifest's mean validation Dice (default policy) of ``tasks``, less :data:`MARGIN`."""
    figures = [POLICY.tasks[t].dice for t in tasks]
    assert all(f is not None for f in figures), f"the manifest has no validation Dice for some of {list(tasks)}"
    floor = float(np.mean(figures)) - MARGIN
    assert floor >= 0.5, floor  # a floor a broken result can still fail
    return floor


MEAN_DICE_FLOOR = validated_floor(HIPPO.values())  # 0.796 for 0.8.6
HN_MEAN_DICE_FLOOR = validated_floor(HN.values())  # 0.642 for 0.8.6 (0.630 on the sample for 0.6.0)
CARDIAC_MEAN_DICE_FLOOR = validated_floor(CARDIAC.values())  # 0.755 for 0.8.6 (0.802 on the case for 0.6.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_manifest_matches_the_weights():
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert DEFAULT_MODEL.stat().st_size <= 25 * 2**20
    assert "research use only" in manifest["usage"]
    datasets = {d["name"] for d in manifest["training"]["datasets"]}
    assert {"ct_headneck_openkbp", "mri_hippocampus_msd", "mri_cardiac_acdc", "mri_leftatrium_la2018"} <= datasets
    assert set(HN.values()) <= set(manifest["task_ids"])
    text = DEFAULT_MODEL.read_bytes()
    assert not any(f"/{root}/".encode() in text for root in ("work", "home", "tmp"))  # no machine paths inside


@pytest.fixture(scope="module")
def sample_result():
    return segment(SAMPLE, tasks=list(HIPPO.values()), modality="MR-T1", threads=2)


def test_bundled_model_segments_the_held_out_sample(sample_result):
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(REFERENCE)))
    predicted = sitk.GetArrayFromImage(sample_result.labels)
    scores = {task: dice(predicted == position, reference == value)
              for position, (value, task) in enumerate(sorted(HIPPO.items()), start=1)}
    assert np.mean(list(scores.values())) >= MEAN_DICE_FLOOR, scores


def test_head_and_neck_sample_and_keep_largest_following_the_manifest():
    from scipy import ndimage

    from UniversalSegLib.inference import InferenceOptions

    tasks = [HN[v] for v in sorted(HN)]
    flagged = {t for t in tasks if POLICY.tasks[t].keep_largest}  # the model's policy
    assert flagged and flagged != set(tasks)  # measured to help most organs, not the oesophagus (README)

    def masks(keep_largest):
        result = segment(KBP_SAMPLE, tasks=tasks, modality="CT", threads=2,
                         options=InferenceOptions(keep_largest=keep_largest))
        labels = sitk.GetArrayFromImage(result.labels)
        return {task: labels == position for position, task in enumerate(tasks, start=1)}

    def pieces(mask):
        return ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]

    plain, largest, default = masks(False), masks(True), masks(None)
    assert any(pieces(m) > 1 for m in plain.values())  # the raw prediction of the sample has stray pieces
    assert all(pieces(m) <= 1 for m in largest.values())
    for task in tasks:
        assert (largest[task] <= plain[task]).all()  # pieces are removed, nothing is added
        assert np.array_equal(default[task], largest[task] if task in flagged else plain[task]), task
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(KBP_REFERENCE)))
    scores = {HN[v]: dice(default[HN[v]], reference == v) for v in sorted(HN) if (reference == v).any()}
    assert len(scores) == 7 and np.mean(list(scores.values())) >= HN_MEAN_DICE_FLOOR, scores


def test_mirror_averaging_is_left_right_symmetric_and_swaps_paired_organs():
    """With ``mirror`` the result of the mirrored CT is the mirrored result, right and left parotid swapped.

    The averaged probabilities are symmetric by construction (only window batching can differ in the last
    bits); the network alone is not, which is what the plain run shows.
    """
    from UniversalSegLib.inference import InferenceOptions

    tasks = [HN[v] for v in sorted(HN) if HN[v] != "esophagus"]  # the oesophagus is not averaged (README)
    swap = np.arange(len(tasks) + 1)  # label value -> value of its mirror structure
    right, left = 1 + tasks.index("parotid_right"), 1 + tasks.index("parotid_left")
    swap[right], swap[left] = left, right
    image = sitk.ReadImage(str(KBP_SAMPLE))[:, :, 48:96]  # the slices of the parotids, mandible and larynx
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    mirrored.CopyInformation(image)  # identity direction: the last array axis runs right to left

    def labels(img, mirror):
        result = segment(img, tasks=tasks, modality="CT", threads=2, options=InferenceOptions(mirror=mirror))
        return sitk.GetArrayFromImage(result.labels)

    averaged, plain = labels(image, True), labels(image, False)
    symmetric = np.mean(swap[labels(mirrored, True)][:, :, ::-1] != averaged)
    network_alone = np.mean(swap[labels(mirrored, False)][:, :, ::-1] != plain)
    assert symmetric < 1e-5  # 128 x 128 x 48 voxels: at most a few at the threshold
    assert network_alone > 10 * max(symmetric, 1e-6)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(KBP_REFERENCE))[:, :, 48:96])
    values = {task: value for value, task in HN.items()}
    scores = {task: dice(averaged == position, reference == values[task])
              for position, task in enumerate(tasks, start=1) if (reference == values[task]).any()}
    assert np.mean(list(scores.values())) >= 0.7, scores  # 0.809 for 0.8.3 on these slices (0.0 vs 0.0012 above)


def test_mirror_is_skipped_where_the_policy_gives_none(shared_data):
    """The heart has no mirror (a mirrored heart is not a heart), nor has the oesophagus (left of the midline;
    averaging cost it 0.07 Dice): ``mirror`` changes nothing there."""
    from UniversalSegLib.api import load_model
    from UniversalSegLib.inference import InferenceOptions

    catalog = Catalog.load()
    model = load_model()
    heart = [catalog.task(CARDIAC[v]) for v in sorted(CARDIAC)]
    assert model.mirror_order(model.query(heart), heart) is None
    neck = [catalog.task(t) for t in ("parotid_right", "parotid_left", "mandible", "esophagus")]
    assert model.mirror_order(model.query(neck), neck) == [1, 0, 2, None, None]  # oesophagus, null token: plain
    assert model.mirror_order(model.query(neck[:1]), neck[:1]) is None  # its partner is not queried
    image = shared_data / "mri_cardiac_acdc" / "images" / f"{CARDIAC_CASE}.nii.gz"
    plain, mirrored = (segment(image, tasks=[t.id for t in heart], modality="cine-MR", threads=2,
                               options=InferenceOptions(mirror=m)).labels for m in (False, True))
    assert np.array_equal(sitk.GetArrayFromImage(plain), sitk.GetArrayFromImage(mirrored))


def test_cardiac_case_with_fewer_slices_than_the_window(shared_data):
    """Windows that leave the volume are padded as the training crops are (with the volume's minimum)."""
    folder = shared_data / "mri_cardiac_acdc"
    tasks = [CARDIAC[v] for v in sorted(CARDIAC)]
    result = segment(folder / "images" / f"{CARDIAC_CASE}.nii.gz", tasks=tasks, modality="cine-MR", threads=2)
    predicted = sitk.GetArrayFromImage(result.labels)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels" / f"{CARDIAC_CASE}.nii.gz")))
    assert predicted.shape[0] < 16  # fewer slices than the 16-slice window ACDC was trained on
    scores = {task: dice(predicted == position, reference == value)
              for position, (value, task) in enumerate(sorted(CARDIAC.items()), start=1)}
    assert np.mean(list(scores.values())) >= CARDIAC_MEAN_DICE_FLOOR, scores
    assert scores["heart_lv_myocardium"] >= 0.6, scores  # 0.08 over 8 cases when the pads were border copies

    # With the left atrium (trained at 1.25 mm) in the same request, the heart still runs on its own grid
    # and window: one pass per trained setting. In one pass at the default 1.5 mm it scored 0.04.
    seen: list[tuple[str, float]] = []
    mixed = segment(folder / "images" / f"{CARDIAC_CASE}.nii.gz", tasks=[*tasks, "left_atrium_cavity"],
                    modality="cine-MR", threads=2, progress=lambda stage, f: seen.append((stage, f)))
    both = sitk.GetArrayFromImage(mixed.labels)
    heart = predicted > 0
    # 0.97 (0.7.0), 0.95 (0.8.0, 0.8.3): lost only where the atrium wins
    assert np.mean(both[heart] == predicted[heart]) > 0.9
    kept = (both >= 1) & (both <= 3)
    assert np.array_equal(both[kept], predicted[kept])
    # A heart voxel may also fall to 0, but only as a piece the atrium cut off from its label's largest piece
    # (3 myocardium voxels with 0.8.5), which the per-label largest-component step then removes.
    for value in range(1, 4):
        dropped = (both == 0) & (predicted == value)
        assert not (dropped & largest_component((predicted == value) & (both != 4))).any()
    mixed_scores = [dice(both == position, reference == value)
                    for position, value in enumerate(sorted(CARDIAC), start=1)]
    assert np.mean(mixed_scores) >= CARDIAC_MEAN_DICE_FLOOR, mixed_scores
    stages = list(dict.fromkeys(stage for stage, _ in seen))
    assert stages == ["prepare", "infer", "postprocess"]
    infer = [f for stage, f in seen if stage == "infer"]
    assert infer == sorted(infer) and infer[-1] == 1.0 and any(0.4 < f < 0.6 for f in infer)  # two passes


def test_readme_demo_command(tmp_path):
    out = tmp_path / "demo_seg.nii.gz"  # the README's `make demo` job, on the hippocampus sample
    preview = tmp_path / "demo.png"
    run = subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "segment", str(SAMPLE), "-o", str(out),
                          "--group", "Hippocampus", "--modality", "MR-T1", "--preview", str(preview),
                          "--quiet", "--threads", "2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    side = json.loads(out.with_name("demo_seg.json").read_text(encoding="utf-8"))
    assert [side["labels"][str(i)]["id"] for i in range(1, 3)] == [HIPPO[v] for v in sorted(HIPPO)]
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and preview.stat().st_size > 10_000
