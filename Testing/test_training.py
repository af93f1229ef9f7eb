"""Training building blocks: losses, partial-label masking, sampler, splits, case checks, cache, config."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_support import make_dataset, tiny_config, write_case

from UniversalSegLib.errors import InputError
from UniversalSegLib.training.data import (
    Case,
    CaseError,
    DatasetInfo,
    assign_split,
    load_or_make_split,
    prepare_case,
    read_dataset,
)
from UniversalSegLib.training.losses import HermesLoss, adaptive_alpha, bce_loss, tversky_loss
from UniversalSegLib.training.sampler import MixedSampler, Sample, TaskPool, collate, group_by_shape

# ------------------------------------------------------------------------------------------ losses


def test_perfect_prediction_gives_zero_dice_loss() -> None:
    target = torch.zeros(2, 3, 8, 8, 8)
    target[:, :, 2:5, 2:6, 1:7] = 1
    target[1, 2] = 0  # an empty structure, predicted empty: also perfect
    logits = (target * 2 - 1) * 30.0
    assert torch.allclose(tversky_loss(logits, target), torch.zeros(2, 3), atol=1e-5)


def test_bce_value_known() -> None:
    logits = torch.zeros(1, 1, 4, 4, 4)
    assert math.isclose(float(bce_loss(logits, torch.ones_like(logits))), math.log(2), rel_tol=1e-6)
    logits = torch.full((1, 1, 2, 2, 2), 2.0)
    expected = math.log(1 + math.exp(-2.0))  # target 1
    assert math.isclose(float(bce_loss(logits, torch.ones_like(logits))), expected, rel_tol=1e-6)


def test_adaptive_alpha_is_clamped_and_detached() -> None:
    target = torch.zeros(1, 3, 4, 4, 4)
    target[0, 1:, :2] = 1
    prob = torch.zeros(1, 3, 4, 4, 4, requires_grad=True)
    with torch.no_grad():
        prob[0, 0] = 1.0  # only false positives -> alpha 1 -> clamped 0.8
        prob[0, 1] = 0.0  # only false negatives -> alpha 0 -> clamped 0.2
        prob[0, 2, :1] = 1.0  # half the truth found, no FP -> 0 -> 0.2
        prob[0, 2, 2:3] = 1.0  # plus FP equal to FN -> 0.5
    alpha = adaptive_alpha(prob, target)
    assert alpha.tolist()[0] == pytest.approx([0.8, 0.2, 0.5])
    assert not alpha.requires_grad


def test_tversky_weights_false_positives_by_alpha() -> None:
    # FP = 64 voxels at p=1 on an empty-target channel, TP = 0: loss = 1 - smooth/(0.8*64 + smooth) ~ 1.
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1
    logits = torch.full_like(target, 40.0)  # predicts everything: TP=32, FP=32, FN=0 -> alpha 0.8
    loss = float(tversky_loss(logits, target))
    assert loss == pytest.approx(1 - 32 / (32 + 0.8 * 32), abs=1e-4)


def test_masked_channel_gets_no_gradient_and_no_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.7).float()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss_fn = HermesLoss(modality_weight=0.0)
    parts = loss_fn(logits, target, mask, torch.zeros(2, 2), torch.tensor([0, 1]))
    parts.total.backward()
    grad = logits.grad
    assert grad[0, 2].abs().max() == 0 and grad[1, 1:].abs().max() == 0
    assert grad[0, 0].abs().max() > 0 and grad[1, 0].abs().max() > 0
    # The masked channels' contents do not change the loss, even if they hold NaN.
    poisoned = logits.detach().clone()
    poisoned[0, 2] = float("nan")
    poisoned[1, 1:] = 1e6
    same_target = loss_fn(poisoned, target, mask, torch.zeros(2, 2), torch.tensor([0, 1]))
    assert float(same_target.total) == pytest.approx(float(parts.total.detach()), rel=1e-6)


def test_skip_empty_dice_leaves_only_bce_on_an_organ_absent_from_the_patch() -> None:
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1  # channel 0 has its organ in the patch, channel 1 (annotated) does not
    logits = torch.full_like(target, 3.0, requires_grad=True)  # false positives everywhere on channel 1
    mask, mod = torch.ones(1, 2), (torch.zeros(1, 2), torch.tensor([0]))
    default = HermesLoss(0.0)(logits, target, mask, *mod)
    skipping = HermesLoss(0.0, skip_empty_dice=True)(logits, target, mask, *mod)
    per_channel = tversky_loss(logits, target)[0]
    assert float(per_channel[1]) > 0.99  # the empty channel's Tversky term is nearly all of it
    assert float(default.dice) == pytest.approx(float(per_channel.sum()) / 2, rel=1e-5)
    assert float(skipping.dice) == pytest.approx(float(per_channel[0]) / 2, rel=1e-5)
    assert float(skipping.bce) == pytest.approx(float(default.bce), rel=1e-6)  # BCE still applies
    skipping.total.backward()
    expected = torch.autograd.grad(bce_loss(logits, target)[0, 1] / 2, logits)[0][0, 1]
    assert torch.allclose(logits.grad[0, 1], expected)  # channel 1: the BCE gradient alone


def test_modality_cross_entropy_is_weighted() -> None:
    logits = torch.zeros(1, 1, 4, 4, 4)
    target = torch.zeros_like(logits)
    mod_logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    parts = HermesLoss(0.01)(logits, target, torch.ones(1, 1), mod_logits, torch.tensor([2]))
    assert float(parts.modality) == pytest.approx(math.log(4), rel=1e-6)
    assert float(parts.total - parts.segmentation) == pytest.approx(0.01 * math.log(4), rel=1e-5)


# ------------------------------------------------------------------------------------------ partial labels


def _sample(label: np.ndarray, pool: TaskPool, dataset: str, present: list[int]) -> Sample:
    return Sample(np.zeros(label.shape, np.float32), label, pool.rows(dataset, present), 0, dataset)


def test_absent_label_is_never_queried_nor_trained_as_background() -> None:
    pool = TaskPool.build({"kbp": {1: "brainstem", 2: "parotid_left"}}, {"kbp": "CT"})
    label = np.zeros((16, 16, 32), np.uint8)
    label[4:8, 4:8, 4:8] = 1  # parotid (2) was not contoured in case A: its voxels are unknown
    a = _sample(label, pool, "kbp", present=[1])
    b = _sample(label, pool, "kbp", present=[1, 2])
    assert [r for r, _ in a.queries] == [0] and [r for r, _ in b.queries] == [0, 1]
    batch = collate([a, b], pool.null_task)
    assert batch.tasks.tolist() == [[0, pool.null_task], [0, 1]]
    assert batch.mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert batch.target[0, 1].sum() == 0 and batch.target[1, 1].sum() == 0

    # On the network: when only case A is trained, the absent task's prior row gets no gradient at all.
    from UniversalSegLib.models import HermesConfig, HermesNet

    torch.manual_seed(0)
    net = HermesNet(HermesConfig(len(pool.task_ids), 1, widths=(8, 8, 32, 32, 32), fusion_blocks=(1, 0, 0, 0, 1)))
    only_a = collate([a], pool.null_task)
    out = net(only_a.image, only_a.tasks, only_a.modality_input)
    loss = HermesLoss()(out.logits, only_a.target, only_a.mask, out.modality_logits, only_a.modality).total
    loss.backward()
    for fusion in net.fusions:
        grad = fusion.task_prior.grad
        assert grad is not None and grad[0].abs().sum() > 0  # brainstem is trained
        assert grad[1].abs().sum() == 0  # the uncontoured parotid is not pushed anywhere


def test_task_pool_shares_rows_and_pads_with_null() -> None:
    pool = TaskPool.build({"a": {1: "liver", 2: "spleen"}, "b": {3: "spleen", 1: "kidney_left"}},
                          {"a": "CT", "b": "MR-T1"}, extra_modalities=["MR"])
    assert pool.task_ids == ["liver", "spleen", "kidney_left"]
    assert pool.rows("b", [1, 3]) == [(2, 1), (1, 3)]
    assert pool.rows("b", [7]) == []  # a value without a task is not queried
    assert pool.modality_ids == ["CT", "MR-T1", "MR"] and pool.null_task == 3


def test_group_by_shape_keeps_order() -> None:
    s = [Sample(np.zeros(shape, np.float32), np.zeros(shape, np.uint8), [], 0, "d")
         for shape in [(16, 16, 16), (16, 32, 32), (16, 16, 16)]]
    groups = group_by_shape(s)
    assert [len(g) for g in groups] == [2, 1] and groups[0][0] is s[0]


# ------------------------------------------------------------------------------------------ sampler


def test_sampler_frequencies_follow_weights() -> None:
    sampler = MixedSampler([3.0, 1.0, 0.5], [10, 20, 5], seed=1)
    counts = np.zeros(3)
    cases = [set(), set(), set()]
    for it in range(4000):
        for d, c, _ in sampler.draw(it, 4):
            counts[d] += 1
            cases[d].add(c)
    freq = counts / counts.sum()
    assert np.allclose(freq, np.array([3.0, 1.0, 0.5]) / 4.5, atol=0.015)
    assert [len(c) for c in cases] == [10, 20, 5]  # every case is reached, none out of range


def test_sampler_is_deterministic_and_rank_specific() -> None:
    a = MixedSampler([1.0, 1.0], [7, 9], seed=5)
    b = MixedSampler([1.0, 1.0], [7, 9], seed=5)
    assert [a.draw(i, 3) for i in range(20)] == [b.draw(i, 3) for i in range(20)]
    assert a.draw(11, 3) == b.draw(11, 3)  # any iteration, in any order: what resuming needs
    assert [a.draw(i, 3, rank=1) for i in range(20)] != [a.draw(i, 3, rank=0) for i in range(20)]
    assert [MixedSampler([1.0, 1.0], [7, 9], seed=6).draw(i, 3) for i in range(20)] != \
        [a.draw(i, 3) for i in range(20)]


def test_sampler_skips_datasets_without_cases() -> None:
    sampler = MixedSampler([1.0, 5.0], [4, 0], seed=0)
    assert {d for i in range(100) for d, _, _ in sampler.draw(i, 2)} == {0}


def test_sampler_one_dataset_per_step_keeps_weights_across_steps() -> None:
    sampler = MixedSampler([3.0, 1.0], [10, 20], seed=2, one_dataset_per_step=True)
    steps = [sampler.draw(it, 2) for it in range(3000)]
    assert all(len({d for d, _, _ in step}) == 1 for step in steps)  # one dataset, one batched forward
    assert any(step[0][1] != step[1][1] for step in steps)  # cases still drawn per sample
    share = np.mean([step[0][0] == 0 for step in steps])
    assert abs(share - 0.75) < 0.03
    mixed = MixedSampler([3.0, 1.0], [10, 20], seed=2)
    assert any(len({d for d, _, _ in mixed.draw(it, 2)}) == 2 for it in range(50))
    assert sampler.state_dict()["one_dataset_per_step"] and not mixed.state_dict()["one_dataset_per_step"]


# ------------------------------------------------------------------------------------------ splits


def _info(ids: list[str], keys: list[str] | None = None) -> DatasetInfo:
    cases = [Case("ds", i, Path(i), Path(i), (1,), k) for i, k in zip(ids, keys or ids, strict=True)]
    return DatasetInfo("ds", Path("."), "CT", {1: "a"}, cases)


def test_split_is_deterministic_about_80_20_and_stable_when_cases_are_added(tmp_path: Path) -> None:
    ids = [f"case_{i:04d}" for i in range(600)]
    first = load_or_make_split(_info(ids), tmp_path / "s1")
    again = load_or_make_split(_info(ids), tmp_path / "s2")
    assert first == again
    train, val = first
    assert set(train).isdisjoint(val) and len(train) + len(val) == 600
    assert 0.15 < len(val) / 600 < 0.25
    more = load_or_make_split(_info(ids + [f"new_{i}" for i in range(50)]), tmp_path / "s1")
    assert set(val) <= set(more[1]) and set(train) <= set(more[0])
    stored = json.loads((tmp_path / "s1" / "ds.json").read_text(encoding="utf-8"))
    assert "new_3" in stored["train"] + stored["val"]


def test_split_file_is_read_back(tmp_path: Path) -> None:
    ids = [f"c{i}" for i in range(10)]
    (tmp_path / "ds.json").write_text(json.dumps({"train": ids[:5], "val": ids[5:]}))
    train, val = load_or_make_split(_info(ids), tmp_path)
    assert train == ids[:5] and val == ids[5:]


def test_acdc_patients_are_not_split(shared_data: Path, tmp_path: Path) -> None:
    ds = read_dataset(shared_data / "mri_cardiac_acdc")
    train, val = load_or_make_split(ds, tmp_path)
    patient = {c.id: c.split_key for c in ds.cases}
    assert {patient[i] for i in train}.isdisjoint({patient[i] for i in val})
    assert 0.1 < len(val) / len(ds.cases) < 0.3


def test_tiny_dataset_gets_both_sets() -> None:
    out = assign_split(["a", "b"], 0.2)
    assert sorted(out.values()) == ["train", "val"]


# ------------------------------------------------------------------------------------------ case checks


def test_bad_cases_are_named_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data" / "synth_ct"
    extra = [
        {"id": "no_image", "image": "images/missing.nii.gz", "label": "labels/c000.nii.gz", "present_labels": [1]},
        {"id": "empty_present", "image": "images/c000.nii.gz", "label": "labels/c000.nii.gz", "present_labels": []},
    ]
    make_dataset(folder, 4, {1: "Liver", 2: "Spleen"}, extra=extra)
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    meta["cases"].append(write_case(folder, "bad_geometry", label_size=(40, 36, 21)))
    meta["cases"].append(write_case(folder, "bad_values", label_values=(1, 9)))
    (folder / "dataset.json").write_text(json.dumps(meta))

    ds = read_dataset(folder)
    skipped = dict(ds.skipped)
    assert "missing" in skipped["no_image"] and "empty" in skipped["empty_present"]
    by_id = {c.id: c for c in ds.cases}
    with pytest.raises(CaseError, match="bad_geometry.*grid differs"):
        prepare_case(by_id["bad_geometry"], None, "CT", tmp_path / "cache", labels=ds.labels)
    with pytest.raises(CaseError, match=r"bad_values.*\[9\]"):
        prepare_case(by_id["bad_values"], None, "CT", tmp_path / "cache", labels=ds.labels)

    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.training.trainer import prepare_datasets

    config = tiny_config(tmp_path, datasets=[{"path": "synth_ct", "spacing": None, "patch_size": [32, 32, 16],
                                              "modality": "CT", "tasks": {1: "liver", 2: "spleen"}}])
    with caplog.at_level(logging.WARNING, logger="UniversalSeg.training"):
        runs = prepare_datasets(config, Catalog.load())
    used = {c.id for c in runs[0].train + runs[0].val}
    assert used == {"c000", "c001", "c002", "c003"}
    text = caplog.text
    for name in ("no_image", "empty_present", "bad_geometry", "bad_values"):
        assert name in text
    assert {cid for cid, _ in runs[0].skipped} == {"no_image", "empty_present", "bad_geometry", "bad_values"}


def test_cache_is_reused_and_keyed_by_spacing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from UniversalSegLib.training import data

    ds = read_dataset(make_dataset(tmp_path / "d", 1, {1: "A", 2: "B"}))
    first = prepare_case(ds.cases[0], None, "CT", tmp_path / "cache")
    monkeypatch.setattr(data, "_preprocess", lambda *a, **k: pytest.fail("cache not reused"))
    again = prepare_case(ds.cases[0], None, "CT", tmp_path / "cache")
    assert again.image_path == first.image_path
    monkeypatch.undo()
    other = prepare_case(ds.cases[0], (2.0, 2.0, 2.0), "CT", tmp_path / "cache")
    # (z, y, x): extents 38, 35, 39 mm on a 2 mm grid
    assert other.image_path != first.image_path and other.shape == (20, 18, 20)


def test_nnunet_layout_is_read(tmp_path: Path) -> None:
    import SimpleITK as sitk

    folder = tmp_path / "Dataset001_Test"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for cid in ("a", "b"):
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkFloat32), str(folder / "imagesTr" / f"{cid}_0000.nii.gz"))
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(folder / "labelsTr" / f"{cid}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                     "labels": {"background": 0, "liver": 1, "spleen": 2},
                                                     "numTraining": 2, "file_ending": ".nii.gz"}))
    ds = read_dataset(folder)
    assert ds.layout == "nnunet" and ds.modality == "CT" and ds.labels == {1: "liver", 2: "spleen"}
    assert [c.id for c in ds.cases] == ["a", "b"] and ds.cases[0].present_labels == (1, 2)


# ------------------------------------------------------------------------------------------ patches


def test_foreground_patch_has_size_and_contains_structure(tmp_path: Path) -> None:
    from UniversalSegLib.training.augment import PatchAugmenter

    ds = read_dataset(make_dataset(tmp_path / "d", 1, {1: "A", 2: "B"}))
    cached = prepare_case(ds.cases[0], None, "CT", tmp_path / "cache", labels=ds.labels)
    aug = PatchAugmenter((16, 16, 32), foreground_prob=1.0, augment=True)
    hits = 0
    for seed in range(12):
        image, label = aug(cached, seed)
        assert image.shape == (16, 16, 32) and label.shape == (16, 16, 32)
        assert image.dtype == np.float32 and set(np.unique(label)) <= {0, 1, 2}
        hits += bool(label.any())
    assert hits >= 10
    a, b = aug(cached, 7), aug(cached, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # a sample is a function of its seed
    big = PatchAugmenter((32, 48, 64), augment=False)(cached, 0)  # larger than the volume: padded
    assert big[0].shape == (32, 48, 64) and big[1].sum() == cached.label().sum()


def test_affine_zoom_range_scales_structures(tmp_path: Path) -> None:
    from UniversalSegLib.training.augment import PatchAugmenter

    ds = read_dataset(make_dataset(tmp_path / "d", 1, {1: "A", 2: "B"}))
    cached = prepare_case(ds.cases[0], None, "CT", tmp_path / "cache", labels=ds.labels)

    def labelled_voxels(scale: tuple[float, float]) -> float:
        aug = PatchAugmenter((16, 32, 32), foreground_prob=1.0, affine_prob=1.0, scale_range=scale, rotate_deg=0)
        return float(np.mean([(aug(cached, seed)[1] > 0).sum() for seed in range(8)]))

    plain = labelled_voxels((1.0, 1.0))
    assert labelled_voxels((0.5, 0.5)) > 2.5 * plain  # factor 0.5 zooms in: 2x per axis
    assert labelled_voxels((2.0, 2.0)) < 0.3 * plain  # factor 2 zooms out
    turned = PatchAugmenter((32, 96, 96), foreground_prob=1.0, affine_prob=1.0, scale_range=(0.6, 1.5),
                            rotate_deg=180)
    assert turned.big[1] >= 1.5 * 96 * 2**0.5 and turned.big[0] == math.ceil(32 * 1.3)  # room to turn and zoom out
    image, label = turned(cached, 3)
    assert image.shape == (32, 96, 96) and set(np.unique(label)) <= {0, 1, 2}


def test_invert_prob_negates_the_patch_and_keeps_its_labels(tmp_path: Path) -> None:
    from UniversalSegLib.training.augment import PatchAugmenter

    ds = read_dataset(make_dataset(tmp_path / "d", 1, {1: "A", 2: "B"}))
    cached = prepare_case(ds.cases[0], None, "MR", tmp_path / "cache", labels=ds.labels)
    plain, always = PatchAugmenter((16, 32, 32)), PatchAugmenter((16, 32, 32), invert_prob=1.0)
    for seed in range(4):
        (image, label), (inverted, same_label) = plain(cached, seed), always(cached, seed)
        assert np.array_equal(inverted, -image) and np.array_equal(same_label, label)
        assert image.std() > 0
    off = PatchAugmenter((16, 32, 32), augment=False, invert_prob=1.0)
    crop_only = PatchAugmenter((16, 32, 32), augment=False)
    assert np.array_equal(off(cached, 0)[0], crop_only(cached, 0)[0])  # augment off: plain crops, never inverted


# ------------------------------------------------------------------------------------------ config


def test_config_resolves_paths_and_rejects_unknown_keys(tmp_path: Path) -> None:
    from UniversalSegLib.training.config import load_config

    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir()
    path.write_text("data_root: ../data\ndatasets:\n  - {path: synth, patch_size: [32, 32, 16]}\n"
                    "output_dir: out\n")
    cfg = load_config(path, iterations=7)
    assert cfg.iterations == 7 and cfg.output_path == (tmp_path / "cfg" / "out").resolve()
    assert cfg.dataset_folder(cfg.datasets[0]) == (tmp_path / "data" / "synth").resolve()
    for text, named in (("datasets: [{path: synth}]\nlearning_rate: 0.1\n", "learning_rate"),
                        ("datasets: [{path: synth, patch: [32, 32, 32]}]\n", "patch"),
                        ("datasets: [{path: synth, patch_size: [30, 32, 32]}]\n", "multiples of 16"),
                        ("datasets: [{path: synth, scale_range: [1.2, 1.5]}]\n", "scale_range"),
                        ("datasets: [{path: synth, rotate_deg: 270}]\n", "rotate_deg"),
                        ("datasets: [{path: synth, invert_prob: 1.5}]\n", "invert_prob"),
                        ("datasets: [{path: synth}]\nfused_kernels: 1\n", "fused_kernels")):
        path.write_text(text)
        with pytest.raises(InputError, match=named):
            load_config(path)


def test_bundled_configs_load() -> None:
    from UniversalSegLib.training.config import load_config
    from UniversalSegLib.training.trainer import baseline_iterations

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "default.yaml")
    import yaml

    documented = set(yaml.safe_load((repo / "configs" / "default.yaml").read_text(encoding="utf-8")))
    assert {f.name for f in dataclasses.fields(cfg)} - {"base_dir"} <= documented  # every setting, commented
    names = [d.name for d in cfg.datasets]
    assert names[:3] == ["ct_headneck_openkbp", "mri_hippocampus_msd", "mri_cardiac_acdc"]
    acdc = cfg.datasets[names.index("mri_cardiac_acdc")]
    assert acdc.spacing is None and all(not d.flip_axes for d in cfg.datasets)
    expected = repo.parent / "shared" / "data" / "ct_headneck_openkbp"  # ../shared may be a symbolic link
    assert cfg.dataset_folder(cfg.datasets[0]).resolve() == expected.resolve()
    load_config(repo / "configs" / "smoke.yaml")
    baseline = load_config(repo / "configs" / "baseline.yaml")
    assert baseline.mode == "baseline" and baseline.datasets == cfg.datasets and baseline.lr == cfg.lr
    assert baseline.output_path != cfg.output_path
    weighted = load_config(repo / "configs" / "archive" / "headneck_weighted.yaml")  # continues prior_kernels.yaml
    assert weighted.init_path == repo / "runs" / "prior_kernels" / "best.pt" and not weighted.fused_kernels
    assert [d.weight for d in weighted.datasets] == [2.0] + [d.weight for d in cfg.datasets[1:]]
    assert [d.patch_size for d in weighted.datasets] == [d.patch_size for d in cfg.datasets]
    atrium = load_config(repo / "configs" / "archive" / "atrium_weighted.yaml")  # continues headneck_weighted.yaml
    assert atrium.init_path == weighted.output_path / "best.pt" and atrium.output_path != weighted.output_path
    assert [d.weight for d in atrium.datasets] == [2.0, 0.7, 0.8, 1.2, 0.15]
    zoom = load_config(repo / "configs" / "archive" / "zoom.yaml")  # widened affine for ACDC only
    widened = {d.name: (d.affine_prob, d.scale_range, d.rotate_deg) for d in zoom.datasets}
    assert widened.pop("mri_cardiac_acdc") == (0.6, (0.5, 1.4), 180.0) and zoom.skip_empty_dice
    assert set(widened.values()) == {(0.3, (0.85, 1.15), 15.0)}
    equal = load_config(repo / "configs" / "baseline_equal.yaml")  # the steps 0.5.1 spent on each dataset
    steps = {d.name: 0.0 for d in cfg.datasets}
    for stage, iterations in ((cfg, 4500), (weighted, 2000), (atrium, 1500)):
        total = sum(d.weight for d in stage.datasets)
        for d in stage.datasets:
            steps[d.name] += iterations * d.weight / total
    assert equal.mode == "baseline" and [d.patch_size for d in equal.datasets] == [d.patch_size for d in cfg.datasets]
    assert baseline_iterations(equal) == {name: round(n) for name, n in steps.items()}
    for path in sorted((repo / "configs" / "ablation").glob("*.yaml")):  # one dataset each, our cache
        ablation = load_config(path)
        assert len(ablation.datasets) == 1 and ablation.cache_path == cfg.cache_path, path.name


def test_config_extends_another_and_overrides_it(tmp_path: Path) -> None:
    from UniversalSegLib.training.config import load_config

    (tmp_path / "base.yaml").write_text("datasets: [{path: a, weight: 3}, {path: b}]\niterations: 40\nlr: 0.5\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmode: baseline\nlr: 0.25\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.mode, cfg.lr, cfg.iterations, [d.name for d in cfg.datasets]) == ("baseline", 0.25, 40, ["a", "b"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "grandchild.yaml").write_text("extends: ../child.yaml\noutput_dir: out\n")
    (tmp_path / "base.yaml").write_text("datasets: [{path: a}]\ncache_dir: cache\noutput_dir: runs\n")
    cfg = load_config(tmp_path / "sub" / "grandchild.yaml")  # folders stay relative to the file naming them
    assert cfg.cache_path == (tmp_path / "cache").resolve() and cfg.output_path == (tmp_path / "sub" / "out").resolve()
    (tmp_path / "base.yaml").write_text("extends: child.yaml\ndatasets: [{path: a}]\n")
    with pytest.raises(InputError, match="extends itself"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "base.yaml").write_text("- a list, not settings\n")
    with pytest.raises(InputError, match="mapping of settings"):
        load_config(tmp_path / "base.yaml")
    (tmp_path / "child.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(InputError, match="missing.yaml"):
        load_config(tmp_path / "child.yaml")


def test_baselines_get_the_universal_runs_steps_per_dataset(tmp_path: Path) -> None:
    from UniversalSegLib.training.config import load_config
    from UniversalSegLib.training.trainer import baseline_iterations

    (tmp_path / "run.yaml").write_text("datasets: [{path: a, weight: 3}, {path: b}, {path: c, weight: 0.001}]\n"
                                       "iterations: 400\nmode: baseline\n")
    assert baseline_iterations(load_config(tmp_path / "run.yaml")) == {"a": 300, "b": 100, "c": 1}


def test_unknown_spacing_may_not_be_resampled(shared_data: Path, tmp_path: Path) -> None:
    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.training.config import config_from_dict
    from UniversalSegLib.training.trainer import prepare_datasets

    cfg = config_from_dict({"data_root": str(shared_data), "splits_dir": str(tmp_path),
                            "datasets": [{"path": "mri_cardiac_acdc", "spacing": [1, 1, 1]}]}, tmp_path)
    with pytest.raises(InputError, match="spacing: null"):
        prepare_datasets(cfg, Catalog.load())
