"""The MedSAM2 backend with a randomly initialised model (no MedSAM2 weights can be fetched here)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from UniversalSegLib.cli import main
from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.refine import Box3D, Prompts
from UniversalSegLib.refine.errors import MissingDependencyError

needs_sam2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None or importlib.util.find_spec("hydra") is None,
                                reason="the sam2 extra is not installed")
SMALL = 128  # model input size for tests (MedSAM2 itself uses 512)


@pytest.fixture(scope="module")
def refiner():
    from UniversalSegLib.refine.medsam2 import MedSAM2Refiner

    torch.manual_seed(0)
    return MedSAM2Refiner(None, image_size=SMALL)


@pytest.fixture(scope="module")
def random_checkpoint(refiner, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("medsam2") / "random.pt"
    torch.save({"model": refiner.model.state_dict()}, path)
    return str(path)


@needs_sam2
def test_propagates_both_ways_within_the_box(refiner, monkeypatch) -> None:
    calls = []
    original = refiner.model.propagate_in_video

    def spy(state, start_frame_idx, reverse):
        for frame, ids, masks in original(state, start_frame_idx=start_frame_idx, reverse=reverse):
            calls.append((reverse, frame, tuple(masks.shape)))
            yield frame, ids, torch.ones_like(masks)  # as if the object filled every frame

    monkeypatch.setattr(refiner.model, "propagate_in_video", spy)
    volume = np.random.default_rng(0).random((9, 30, 40)).astype(np.float32)  # (k, j, i)
    [mask] = refiner.refine(volume, [Prompts(box=Box3D((10, 5, 2), (25, 20, 6)))], kind="MR")
    assert mask.shape == volume.shape
    assert {r for r, _, _ in calls} == {False, True}
    assert sorted({f for _, f, _ in calls}) == list(range(5))  # slices 2..6 only: never beyond the box
    assert all(shape == (1, 1, 30, 40) for _, _, shape in calls)  # masks back at the slice size
    assert mask[2:7].any() and not mask[:2].any() and not mask[7:].any()
    assert not mask[:, :3].any() and not mask[:, 23:].any()  # clipped near the box in plane


@needs_sam2
def test_checkpoint_that_does_not_fit_is_refused(refiner, tmp_path) -> None:
    from UniversalSegLib.refine.medsam2 import load_checkpoint

    state = dict(refiner.model.state_dict())
    state.pop(next(iter(state)))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(3, 3)
    torch.save({"model": state}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"does not fit config sam2.1_hiera_t512: 1 missing .* 1 with another"):
        load_checkpoint(refiner.model, tmp_path / "other.pt", "sam2.1_hiera_t512")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(refiner.model, tmp_path / "junk.pt", "sam2.1_hiera_t512")


@needs_sam2
def test_cli_writes_the_result(random_checkpoint, tmp_path, monkeypatch) -> None:
    from UniversalSegLib.refine import medsam2

    monkeypatch.setitem(medsam2.CONFIGS, "sam2.1_hiera_t512", (medsam2.CONFIGS["sam2.1_hiera_t512"][0], SMALL))
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 100, (6, 24, 24)).astype(np.int16))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert main(["refine", str(tmp_path / "ct.nii.gz"), "--box", "4,4,1,15,15,4", "-o", str(out), "--modality", "CT",
                 "--backend", "medsam2", "--medsam2-checkpoint", random_checkpoint]) == 0
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(result))) <= {0, 1}


@needs_sam2
def test_cli_refuses_a_checkpoint_for_another_config(tmp_path, capsys) -> None:
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, tmp_path / "bad.pt")
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 100, (6, 24, 24)).astype(np.int16))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert main(["refine", str(tmp_path / "ct.nii.gz"), "--box", "4,4,1,15,15,4", "-o", str(out), "--modality", "CT",
                 "--backend", "medsam2", "--medsam2-checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "does not fit config" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "ct.nii.gz"]  # nothing written, not even partly


def test_missing_sam2_is_a_clear_error(monkeypatch) -> None:
    from UniversalSegLib.refine.medsam2 import MedSAM2Refiner

    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(MissingDependencyError, match="needs the sam2 package.*pip install"):
        MedSAM2Refiner(None)
