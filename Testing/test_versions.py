"""One package version; weights manifests name the package versions they work with, checked at load."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import UniversalSegLib
from UniversalSegLib import REQUIRES_FIELD, __version__, check_manifest_version, version_matches
from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.model_tasks import read_manifest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "UniversalSegLib" / "weights"


def test_pyproject_version_is_the_package_version():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == __version__


@pytest.mark.parametrize("name", ["universalseg-small.json", "litemedsam_finetuned.json"])
def test_shipped_manifests_accept_this_version(name):
    manifest = json.loads((WEIGHTS / name).read_text(encoding="utf-8"))
    assert version_matches(manifest[REQUIRES_FIELD], __version__)
    check_manifest_version(manifest)


def test_version_matches():
    assert version_matches(">=0.9,<1.0", "0.9.0")
    assert version_matches(">=0.9,<1.0", "0.9.12")
    assert not version_matches(">=0.9,<1.0", "1.0.0")
    assert not version_matches(">=0.9,<1.0", "0.8.6")
    assert version_matches("==0.9.0", "0.9")


def test_mismatched_manifest_is_a_clear_error(tmp_path, monkeypatch):
    manifest = json.loads((WEIGHTS / "universalseg-small.json").read_text(encoding="utf-8"))
    manifest[REQUIRES_FIELD] = ">=5.0,<6.0"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"needs UniversalSeg >=5.0,<6.0 but this is UniversalSeg"):
        read_manifest(path)
    monkeypatch.setattr(UniversalSegLib, "__version__", "5.1.0")
    assert read_manifest(path)[REQUIRES_FIELD] == ">=5.0,<6.0"


def test_manifest_without_field_still_loads(tmp_path):
    manifest = json.loads((WEIGHTS / "universalseg-small.json").read_text(encoding="utf-8"))
    del manifest[REQUIRES_FIELD]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    assert read_manifest(path)["task_ids"]


def test_refiner_decoder_checks_its_manifest(tmp_path):
    pytest.importorskip("torch")
    from UniversalSegLib.refine.litemedsam import LiteMedSAM

    weights = tmp_path / "decoder.pt"
    shutil.copy(WEIGHTS / "litemedsam_finetuned.pt", weights)
    manifest = json.loads((WEIGHTS / "litemedsam_finetuned.json").read_text(encoding="utf-8"))
    manifest[REQUIRES_FIELD] = "<0.1"
    weights.with_suffix(".json").write_text(json.dumps(manifest), encoding="utf-8")
    model = LiteMedSAM.__new__(LiteMedSAM)  # the check runs before any weights are read
    with pytest.raises(CheckpointError, match="needs UniversalSeg <0.1"):
        model.load_decoder(weights)
