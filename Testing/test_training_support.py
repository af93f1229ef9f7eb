"""Helpers for the training tests: tiny synthetic datasets in the shared dataset.json format.

Also holds a test of the helpers themselves (the synthetic data must pass the case checks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: Tiny network and run settings: everything in a few seconds on 2 CPU threads.
TINY_RUN = {
    "preset": "small", "widths": [8, 8, 32, 32, 32], "fusion_blocks": [1, 0, 0, 0, 1], "blocks_per_stage": 1,
    "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_iterations": 1, "val_every": 1000,
    "val_cases_per_dataset": 1, "checkpoint_every": 1000, "log_every": 1, "threads": 1, "seed": 3,
    "augment": True,
}


def write_case(folder: Path, cid: str, size=(40, 36, 20), spacing=(1.0, 1.0, 2.0), values=(1, 2), seed=0,
               label_size=None, label_values=None) -> dict:
    """Write image + label NIfTI for one case with a bright box per label value; return its record."""
    rng = np.random.default_rng(seed)
    shape = size[::-1]
    image = rng.normal(0, 1, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for k, v in enumerate(label_values if label_values is not None else values):
        z0, y0, x0 = 2 + 3 * k, 4 + 6 * k, 5 + 8 * k
        label[z0:z0 + 5, y0:y0 + 8, x0:x0 + 8] = v
        image[z0:z0 + 5, y0:y0 + 8, x0:x0 + 8] += 4.0 + k
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(spacing)
    if label_size is not None:
        label = np.zeros(label_size[::-1], dtype=np.uint8)
        label[0, 0, 0] = 1
    lab = sitk.GetImageFromArray(label)
    lab.SetSpacing(spacing)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(folder / "images" / f"{cid}.nii.gz"))
    sitk.WriteImage(lab, str(folder / "labels" / f"{cid}.nii.gz"))
    return {"id": cid, "image": f"images/{cid}.nii.gz", "label": f"labels/{cid}.nii.gz",
            "present_labels": list(values)}


def make_dataset(folder: Path, n: int, labels: dict[int, str], modality: str = "CT", seed: int = 0,
                 partial: bool = False, extra: list[dict] | None = None, **case_kw) -> Path:
    """A dataset folder with ``n`` good cases (with ``partial``, odd cases lack the last label)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        values = tuple(sorted(labels))
        if partial and i % 2 and len(values) > 1:
            values = values[:-1]
        records.append(write_case(folder, f"c{i:03d}", values=values, seed=seed + i, **case_kw))
    records += extra or []
    meta = {"modality": modality, "labels": {str(k): v for k, v in labels.items()}, "license": "synthetic",
            "cases": records}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def tiny_config(tmp: Path, n: int = 6, **overrides):
    """A TrainConfig over two synthetic datasets (CT with partial labels, MR-T1) under ``tmp``."""
    from UniversalSegLib.training.config import config_from_dict

    if not (tmp / "data" / "synth_ct").is_dir():
        make_dataset(tmp / "data" / "synth_ct", n, {1: "Liver", 2: "Spleen"}, partial=True)
        make_dataset(tmp / "data" / "synth_mr", n, {1: "Hippo"}, modality="MR-T1", seed=100,
                     size=(24, 30, 22), spacing=(1.0, 1.0, 1.0))
    raw = {
        "data_root": "data",
        "datasets": [
            {"path": "synth_ct", "weight": 1.0, "spacing": None, "patch_size": [32, 32, 16],
             "modality": "CT", "tasks": {1: "liver", 2: "spleen"}},
            {"path": "synth_mr", "weight": 1.0, "spacing": [1.5, 1.5, 1.5], "patch_size": [32, 16, 16],
             "modality": "MR-T1", "tasks": {1: "hippocampus_anterior"}},
        ],
        "iterations": 4, "cache_dir": "cache", "output_dir": "run", "splits_dir": "splits",
        **TINY_RUN,
    }
    raw.update(overrides)
    return config_from_dict(raw, base_dir=tmp)


def test_synthetic_cases_pass_the_checks(tmp_path: Path) -> None:
    from UniversalSegLib.training.data import prepare_case, read_dataset

    ds = read_dataset(make_dataset(tmp_path / "d", 2, {1: "A", 2: "B"}))
    assert len(ds.cases) == 2 and not ds.skipped
    cached = prepare_case(ds.cases[0], None, "CT", tmp_path / "cache", labels=ds.labels)
    assert cached.image().shape == (20, 36, 40) and cached.image().dtype == np.float16
    assert set(np.unique(cached.label())) == {0, 1, 2}
