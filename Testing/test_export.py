"""`export_model`: a shippable copy without machine paths, and a manifest that matches the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, build_checkpoint

from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.models import load_checkpoint
from UniversalSegLib.training.export import export_model
from UniversalSegLib.volume import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_checkpoint(path: Path) -> Path:
    """A tiny checkpoint whose metadata holds the kinds of paths a training run records."""
    build_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = {
        "iterations": 7,
        "licenses": {"a": "CC BY 4.0", "b": "research, non-commercial"},
        "config": {"data_root": str(REPO.parent / "shared" / "data"), "output_dir": str(REPO / "runs" / "x"),
                   "cache_dir": "/elsewhere/on/this/machine/cache"},
        "val_dice_per_label": {"a/Liver": 0.9},
    }
    torch.save(payload, path)
    return path


def test_export_writes_weights_and_manifest_without_machine_paths(tmp_path: Path) -> None:
    source = _trained_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "ship" / "model.pt"
    out.parent.mkdir()
    manifest = export_model(source, out, version="9.9.9", evaluation={"a": {"mean_dice": 0.5}}, root=REPO)

    config = manifest["training"]["config"]
    assert config["data_root"] == "../shared/data"  # beside the repository: stays findable
    assert config["output_dir"] == "runs/x"  # inside it: repository-relative
    assert config["cache_dir"] == "cache"  # anywhere else: only the name
    assert manifest["sha256"] == file_sha256(out) and manifest["bytes"] == out.stat().st_size
    assert manifest["version"] == "9.9.9" and manifest["training"]["iterations"] == 7
    assert manifest["usage"].startswith("research use only") and "b" in manifest["usage"]
    assert manifest["validation"] == {"a": {"mean_dice": 0.5}}
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == manifest
    assert load_checkpoint(out).metadata["config"]["data_root"] == "../shared/data"


def test_export_refuses_a_file_in_another_format(tmp_path: Path) -> None:
    bad = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not in UniversalSeg's checkpoint format"):
        export_model(bad, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_export_records_the_runs_a_run_started_from(tmp_path: Path) -> None:
    first = _trained_checkpoint(tmp_path / "first.pt")
    second = _trained_checkpoint(tmp_path / "second.pt")
    for path, start, iterations in ((first, None, 7), (second, str(first), 5)):
        payload = torch.load(path, weights_only=True)
        payload["metadata"].update(iterations=iterations, training_seconds=10.0 * iterations)
        payload["metadata"]["config"].update(init_from=start, datasets=[{"path": "/d/ct_set", "weight": iterations}])
        torch.save(payload, path)
    manifest = export_model(second, tmp_path / "model.pt")
    training = manifest["training"]
    assert training["earlier_stages"] == [{
        "checkpoint": "first.pt", "sha256": file_sha256(first), "iterations": 7, "seconds": 70.0,
        "dataset_weights": {"ct_set": 7}, "date": None}]
    assert training["iterations_total"] == 12 and training["seconds_total"] == 120.0

    first.unlink()  # a chain whose start is gone is recorded as such, not guessed
    assert export_model(second, tmp_path / "again.pt")["training"]["earlier_stages"] == [
        {"checkpoint": "first.pt", "found": False}]


def test_a_run_from_an_exported_model_keeps_its_history(tmp_path: Path) -> None:
    first = _trained_checkpoint(tmp_path / "first.pt")
    second = _trained_checkpoint(tmp_path / "second.pt")
    shipped = tmp_path / "ship" / "model.pt"
    shipped.parent.mkdir()
    for path, start, iterations in ((first, None, 7), (second, str(first), 5)):
        payload = torch.load(path, weights_only=True)
        payload["metadata"].update(iterations=iterations, training_seconds=10.0 * iterations)
        payload["metadata"]["config"].update(init_from=start, datasets=[{"path": "/d/ct_set", "weight": iterations}])
        torch.save(payload, path)
    export_model(second, shipped, version="1.0.0")
    first.unlink()  # the run folders are gone: the exported model's own record is what remains
    third = _trained_checkpoint(tmp_path / "third.pt")
    payload = torch.load(third, weights_only=True)
    payload["metadata"].update(iterations=3, training_seconds=30.0)
    payload["metadata"]["config"].update(init_from=str(shipped), datasets=[{"path": "/d/ct_set", "weight": 3}])
    torch.save(payload, third)

    training = export_model(third, tmp_path / "next.pt")["training"]
    stages = training["earlier_stages"]
    assert [s.get("iterations") for s in stages] == [7, 5]
    assert stages[0]["checkpoint"] == "first.pt" and stages[0]["sha256"]  # recorded at the first export
    assert stages[1]["version"] == "1.0.0" and stages[1]["sha256"] == file_sha256(shipped)
    assert training["iterations_total"] == 15 and training["seconds_total"] == 150.0

    # a model exported before it carried its history: the manifest beside it, if it is that file's
    payload = torch.load(shipped, weights_only=True)
    del payload["metadata"]["earlier_stages"]
    torch.save(payload, shipped)
    manifest = json.loads(shipped.with_suffix(".json").read_text(encoding="utf-8"))
    stages = export_model(third, tmp_path / "n2.pt")["training"]["earlier_stages"]  # manifest of another file
    assert [s.get("iterations") for s in stages] == [None, 5] and stages[0]["found"] is False
    shipped.with_suffix(".json").write_text(json.dumps({**manifest, "sha256": file_sha256(shipped)}))
    assert [s["iterations"] for s in export_model(third, tmp_path / "n3.pt")["training"]["earlier_stages"]] == [7, 5]
