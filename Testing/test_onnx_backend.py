"""The ONNX Runtime backend (UniversalSegLib/onnx_runtime.py) against the torch reference, with the bundled weights.

Graphs are exported into a temporary cache (``$UNIVERSALSEG_CACHE``) once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from UniversalSegLib import onnx_runtime  # noqa: E402
from UniversalSegLib.api import DEFAULT_MODEL, load_model, segment  # noqa: E402
from UniversalSegLib.paths import CACHE_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HIPPO = REPO / "samples" / "hippo_sample.nii.gz"
KBP = REPO / "samples" / "kbp_sample.nii.gz"
HN = "Head and neck organs at risk"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache folder holding the bundled model's exported graph."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        onnx_runtime.load_hermes(DEFAULT_MODEL)
        yield folder


@pytest.fixture(scope="module")
def hn_crop(tmp_path_factory) -> Path:
    """A 64 x 64 x 48 crop of the head-and-neck sample through the parotids and mandible (one window)."""
    image = sitk.ReadImage(str(KBP))
    path = tmp_path_factory.mktemp("crop") / "kbp_crop.nii.gz"
    sitk.WriteImage(image[32:96, 40:104, 40:88], str(path))
    return path


def test_graph_is_cached_by_weights_hash(cache) -> None:
    from UniversalSegLib.volume import file_sha256

    path = onnx_runtime.graph_path(file_sha256(DEFAULT_MODEL))
    assert path.parent == cache / "onnx" and path.is_file() and path.with_suffix(".json").is_file()
    assert file_sha256(DEFAULT_MODEL)[:16] in path.name and path.name.endswith("-fp32.onnx")
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["task_ids"][:2] == ["brainstem", "spinal_cord"] and meta["null_task"] == len(meta["task_ids"])
    stamp = path.stat().st_mtime_ns
    onnx_runtime.load_hermes(DEFAULT_MODEL)  # found, not exported again
    assert path.stat().st_mtime_ns == stamp


def test_missing_graph_without_export_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(onnx_runtime.OnnxUnavailableError, match="no exported ONNX graph"):
        onnx_runtime.load_hermes(DEFAULT_MODEL, export=False)


def test_logits_match_torch_on_a_real_window(cache) -> None:
    from UniversalSegLib.models import load_checkpoint
    from UniversalSegLib.preprocess import normalise

    array = normalise(sitk.GetArrayFromImage(sitk.ReadImage(str(KBP))), "CT")
    windows = np.stack([array[40:88, 32:96, 32:96], array[40:88, 32:96, 64:128]])[:, None]
    tasks = np.array([[0, 1, 2, 3, 4, 5, 6, 17]] * 2)
    modality = np.zeros(2, dtype=np.int64)
    ort = onnx_runtime.load_hermes(DEFAULT_MODEL).model(windows, tasks, modality)
    net = load_checkpoint(DEFAULT_MODEL).model.eval()
    with torch.inference_mode():
        reference = net(torch.from_numpy(windows), torch.from_numpy(tasks), torch.from_numpy(modality)).logits
    assert ort.shape == tuple(reference.shape)
    assert np.abs(ort - reference.numpy()).max() < 1e-3


def test_numpy_sliding_window_is_monais() -> None:
    from monai.inferers import sliding_window_inference

    rng = np.random.default_rng(0)
    scale = rng.normal(size=3).astype(np.float32)

    def predictor(x: np.ndarray) -> np.ndarray:
        return np.tanh(np.concatenate([x * s for s in scale], axis=1))

    for shape, roi, batch, mode in [((40, 70, 33), (32, 48, 32), 2, "gaussian"), ((20, 100, 130), (48, 64, 64), 3,
                                                                                   "constant"),
                                    ((10, 20, 30), (32, 32, 32), 2, "gaussian")]:
        volume = rng.normal(size=shape).astype(np.float32)
        ours = onnx_runtime.sliding_window(volume, roi, batch, predictor, 0.5, mode, float(volume.min()))
        theirs = sliding_window_inference(torch.from_numpy(volume)[None, None], roi, batch,
                                          lambda x: torch.from_numpy(predictor(x.numpy())), overlap=0.5, mode=mode,
                                          padding_mode="constant", cval=float(volume.min()))[0].numpy()
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("case", ["hippocampus", "head_neck_crop"])
def test_label_maps_identical_to_torch(case, cache, hn_crop) -> None:
    image, kwargs = {"hippocampus": (HIPPO, {"groups": ["Hippocampus"], "modality": "MR-T1"}),
                     "head_neck_crop": (hn_crop, {"groups": [HN], "modality": "CT"})}[case]
    results = {b: segment(str(image), backend=b, threads=2, **kwargs) for b in ("onnx", "torch")}
    onnx_labels, torch_labels = (sitk.GetArrayFromImage(results[b].labels) for b in ("onnx", "torch"))
    assert [t.id for t in results["onnx"].tasks] == [t.id for t in results["torch"].tasks]
    assert len(np.unique(torch_labels)) >= 3  # something was found
    assert np.array_equal(onnx_labels, torch_labels)


def test_backend_choice(monkeypatch) -> None:
    assert onnx_runtime.choose_backend("auto", "cpu") == "onnx"
    assert onnx_runtime.choose_backend("auto", "cuda") == "torch"
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    assert onnx_runtime.choose_backend("auto", "cpu") == "torch"
    from UniversalSegLib.errors import InputError

    with pytest.raises(InputError, match="CPU only"):
        onnx_runtime.choose_backend("onnx", "cuda")
    with pytest.raises(InputError, match="unknown backend"):
        onnx_runtime.choose_backend("tensorrt")


def test_auto_falls_back_to_torch_when_export_fails(tiny_checkpoint, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(onnx_runtime, "export_hermes", broken)
    assert load_model(tiny_checkpoint, backend="auto").backend == "torch"
    assert "using torch" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="exporter broke"):
        load_model(tiny_checkpoint, backend="onnx")


SCRIPT = """
import sys
from UniversalSegLib.cli import main
code = main(sys.argv[1:])
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai'})
print('HEAVY', loaded)
sys.exit(code)
"""


def test_onnx_segment_imports_neither_torch_nor_monai(cache, tmp_path) -> None:
    out = tmp_path / "seg.nii.gz"
    env = {**os.environ, CACHE_ENV: str(cache)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, "segment", str(HIPPO), "-o", str(out), "--modality", "MR-T1",
                          "--group", "Hippocampus", "--runtime", "onnx", "--threads", "2", "--quiet",
                          "--profile", str(tmp_path / "profile.json")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
    assert out.is_file() and json.loads((tmp_path / "profile.json").read_text(encoding="utf-8"))["backend"] == "onnx"
