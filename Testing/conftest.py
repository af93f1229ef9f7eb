"""Shared fixtures: the shared data folder and small, randomly initialised checkpoints.

Random weights only exercise code paths (shapes, geometry, files, errors); tests that judge
segmentation quality use the bundled trained model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Exported ONNX graphs and other caches of the tests stay in the checkout's git-ignored cache/, not ~/.cache.
os.environ.setdefault("UNIVERSALSEG_CACHE", str(REPO / "cache" / "test"))

COARSE = {"spacing": [8.0, 8.0, 8.0], "patch_size": [64, 64, 64]}
TINY = {"widths": (8, 8, 16, 16, 16), "fusion_blocks": (1, 1, 1, 1, 1), "head_dim": 8, "modality_tokens": 2}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (skips the test when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def build_checkpoint(path: Path, task_ids: list[str] | None = None, modality_ids: list[str] | None = None,
                     inference: dict | None = None, seed: int = 0) -> Path:
    """Save a tiny random HermesNet for every catalog task (or ``task_ids``) to ``path``."""
    import torch

    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.models import HermesConfig, HermesNet, save_checkpoint

    catalog = Catalog.load()
    task_ids = task_ids if task_ids is not None else [t.id for t in catalog.tasks]
    modality_ids = modality_ids if modality_ids is not None else list(catalog.modalities)
    torch.manual_seed(seed)
    model = HermesNet(HermesConfig(num_tasks=len(task_ids), num_modalities=len(modality_ids), **TINY))
    save_checkpoint(path, model, task_ids=task_ids, modality_ids=modality_ids, catalog_version=catalog.version,
                    inference=inference or {"spacing": None, "patch_size": [64, 64, 64]})
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint knowing every catalog task, at the input's own spacing, 64^3 windows."""
    return build_checkpoint(tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture(scope="session")
def coarse_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_checkpoint`` but at 8 mm, so a whole CT fits in one window (fast CLI tests)."""
    return build_checkpoint(tmp_path_factory.mktemp("models") / "coarse.pt", inference=COARSE)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run fastest on one thread (and do not fight other jobs for the 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def scene():
    """A fresh MRML scene (``slicer-core`` wheel) set as ``slicer.mrmlScene``, with its subject-hierarchy item."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    scene.GetSubjectHierarchyNode().GetSceneItemID()
    yield scene
    scene.Clear(True)
