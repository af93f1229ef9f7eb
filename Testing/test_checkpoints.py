"""Checkpoint I/O: our format round trip, the original Hermes layout, and refusal of bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.models import HermesConfig, HermesNet, load_checkpoint, preset, save_checkpoint

STATE_DICT_TXT = Path(__file__).resolve().parents[1].parent / "shared/docs/hermes-r-state-dict.txt"
TINY = HermesConfig(num_tasks=4, num_modalities=6, widths=(8, 8, 32, 32, 32), blocks_per_stage=1,
                    fusion_blocks=(1, 1, 2, 1, 1), modality_tokens=3)
TASKS = ["liver", "spleen", "kidney_left", "kidney_right"]
MODALITIES = ["CT", "PET", "MR-T1", "MR-T2", "cine-MR", "MR"]


pytestmark = pytest.mark.usefixtures("one_thread")


class NotATensor:
    """A custom class: pickling it makes a file that weights-only loading must refuse."""


def tiny_net(seed: int = 0) -> HermesNet:
    torch.manual_seed(seed)
    return HermesNet(TINY)


def original_layout(net: HermesNet) -> dict:
    """Wrap a state dict the way the Hermes training code saves it (DDP prefix, EMA under torch.compile)."""
    sd = net.state_dict()
    return {"epoch": 3, "model_state_dict": {f"module.{k}": torch.zeros_like(v) for k, v in sd.items()},
            "ema_model_state_dict": {f"_orig_mod.module.{k}": v.clone() for k, v in sd.items()},
            "optimizer_state_dict": {}}


def forward(net: HermesNet) -> torch.Tensor:
    torch.manual_seed(5)
    with torch.no_grad():
        image = torch.randn(1, 1, 32, 16, 16)
        return net(image, torch.tensor([[0, 2, TINY.num_tasks]]), torch.tensor([4])).logits


def test_our_format_round_trip(tmp_path: Path) -> None:
    net = tiny_net().eval()
    inference = {"spacing": [1.5, 1.5, 1.5], "patch_size": [32, 32, 32], "threshold": 0.5}
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, task_ids=TASKS, modality_ids=MODALITIES, catalog_version="2024.1",
                    inference=inference, metadata={"trained_on": ["BCV"]})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "universalseg-hermes" and raw["format_version"] == 1
    assert raw["config"] == TINY.to_dict() and isinstance(raw["package_version"], str)

    loaded = load_checkpoint(path)
    assert loaded.source_format == "universalseg" and not loaded.model.training
    assert loaded.model.config == TINY
    assert loaded.task_ids == TASKS and loaded.modality_ids == MODALITIES
    assert loaded.catalog_version == "2024.1"
    assert loaded.inference == inference and loaded.metadata == {"trained_on": ["BCV"]}
    torch.testing.assert_close(forward(loaded.model), forward(net), rtol=0, atol=0)

    renamed = load_checkpoint(path, task_ids=["a", "b", "c", "d"])
    assert renamed.task_ids == ["a", "b", "c", "d"]
    with pytest.raises(CheckpointError, match="3 task_ids given for a pool of 4 rows"):
        load_checkpoint(path, task_ids=["a", "b", "c"])


def test_save_checks_ids_and_metadata(tmp_path: Path) -> None:
    net = tiny_net()
    with pytest.raises(CheckpointError, match="2 task_ids given for a pool of 4 rows"):
        save_checkpoint(tmp_path / "m.pt", net, task_ids=TASKS[:2], modality_ids=MODALITIES,
                        catalog_version="1")
    with pytest.raises(CheckpointError, match="cannot store safely"):
        save_checkpoint(tmp_path / "m.pt", net, task_ids=TASKS, modality_ids=MODALITIES, catalog_version="1",
                        metadata={"obj": NotATensor()})
    assert not any(tmp_path.iterdir())


def parse_state_dict_txt(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            shapes[name] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return shapes


def test_original_hermes_r_layout_loads_into_paper_preset(tmp_path: Path) -> None:
    if not STATE_DICT_TXT.is_file():
        pytest.skip(f"{STATE_DICT_TXT} (names and shapes of the original Hermes-R) is not available")
    shapes = parse_state_dict_txt(STATE_DICT_TXT)
    assert len(shapes) == 405
    # Random values without writing 250 MB: every tensor is a view at its own offset into one buffer.
    torch.manual_seed(0)
    largest = max(torch.Size(s).numel() for s in shapes.values())
    buffer = torch.randn(largest + 7 * len(shapes))
    ema = {name: buffer[7 * i: 7 * i + torch.Size(s).numel()].view(s)
           for i, (name, s) in enumerate(shapes.items())}
    zero = torch.zeros(())
    ckpt = {"epoch": 1, "model_state_dict": {f"module.{k}": zero.expand(s) for k, s in shapes.items()},
            "ema_model_state_dict": {f"_orig_mod.{k}": v for k, v in ema.items()}, "optimizer_state_dict": {}}
    path = tmp_path / "hermes_r.pth"
    torch.save(ckpt, path)

    loaded = load_checkpoint(path)
    assert loaded.source_format == "hermes-original"
    assert loaded.model.config == preset("paper", 72, 6)
    assert loaded.task_ids == [f"hermes_task_{i}" for i in range(72)]
    assert loaded.modality_ids == MODALITIES and loaded.catalog_version is None
    state = loaded.model.state_dict()
    assert set(state) == set(shapes)
    for name in ("inc.conv1.weight", "prior_init_fuse_4.attn_layers.3.feat_ffn.fn.fc2.bias",
                 "mod_out.classifier.fc2.weight"):
        torch.testing.assert_close(state[name], ema[name], rtol=0, atol=0)  # EMA weights, not the zeros


def test_original_layout_without_ema_and_ids(tmp_path: Path) -> None:
    net = tiny_net(1)
    ckpt = original_layout(net)
    ckpt["model_state_dict"] = ckpt.pop("ema_model_state_dict")
    path = tmp_path / "hermes.pth"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path, task_ids=TASKS)
    assert loaded.model.config == TINY  # widths, block counts, pools and tokens inferred from shapes
    assert loaded.task_ids == TASKS and loaded.modality_ids == MODALITIES
    assert loaded.metadata["epoch"] == 3
    torch.testing.assert_close(forward(loaded.model), forward(net.eval()), rtol=0, atol=0)


def test_wrong_shape_names_the_tensor(tmp_path: Path) -> None:
    ckpt = original_layout(tiny_net())
    name = "up2.conv.0.conv1.conv.weight"
    ckpt["ema_model_state_dict"][f"_orig_mod.module.{name}"] = torch.zeros(32, 64, 3, 3, 1)
    torch.save(ckpt, tmp_path / "bad.pth")
    expected = re.escape(f"'{name}' has shape [32, 64, 3, 3, 1] but the network needs [32, 64, 3, 3, 3]")
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "bad.pth")


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    ckpt = original_layout(tiny_net())
    del ckpt["ema_model_state_dict"]["_orig_mod.module.out.norm.weight"]
    torch.save(ckpt, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(first: \['out\.norm\.weight'\]\)"):
        load_checkpoint(tmp_path / "missing.pth")

    ckpt = original_layout(tiny_net())
    ckpt["ema_model_state_dict"]["_orig_mod.module.text_heads.0.weight"] = torch.zeros(2, 2)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 unexpected \(first: \['text_heads\.0\.weight'\]\)"):
        load_checkpoint(tmp_path / "extra.pth")


def test_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"x": NotATensor()}}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects .*NotATensor"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"not a checkpoint\n"])
def test_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_refuses_missing_file_and_foreign_dicts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="expected 'model_state_dict' or 'ema_model_state_dict'"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")
