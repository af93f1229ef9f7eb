"""HermesNet: shapes, gradient routing through the prior pools, config round trip and validation."""

from __future__ import annotations

import pytest
import torch

from UniversalSegLib.errors import CheckpointError
from UniversalSegLib.models import PRESETS, HermesConfig, HermesNet, HermesOutput, preset

TINY = HermesConfig(num_tasks=5, num_modalities=3, widths=(8, 8, 32, 32, 32), blocks_per_stage=1,
                    fusion_blocks=(1, 1, 2, 1, 1), modality_tokens=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> HermesNet:
    torch.manual_seed(0)
    return HermesNet(TINY)


def test_output_shapes_mixed_batch(tiny: HermesNet) -> None:
    null = tiny.null_task
    # Sample 0 queries 3 tasks, sample 1 one task padded with the null token, sample 2 two tasks + pad.
    task_idx = torch.tensor([[0, 1, 2], [4, null, null], [3, 0, null]])
    modality_idx = torch.tensor([0, 2, 1])
    out = tiny(torch.randn(3, 1, 32, 32, 32), task_idx, modality_idx)
    assert isinstance(out, HermesOutput)
    assert out.logits.shape == (3, 3, 32, 32, 32)
    assert out.modality_logits.shape == (3, TINY.num_modalities)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.modality_logits).all()


def test_non_cubic_input_and_single_task(tiny: HermesNet) -> None:
    out = tiny(torch.randn(1, 1, 16, 32, 48), torch.tensor([[2]]), torch.tensor([1]))
    assert out.logits.shape == (1, 1, 16, 32, 48)


def test_task_channels_follow_the_query_order(tiny: HermesNet) -> None:
    tiny.eval()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        a = tiny(image, torch.tensor([[0, 3]]), torch.tensor([0])).logits
        b = tiny(image, torch.tensor([[3, 0]]), torch.tensor([0])).logits
    tiny.train()
    # Attention over the priors is permutation-equivariant: swapping the query swaps the channels.
    torch.testing.assert_close(a[:, 0], b[:, 1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a[:, 1], b[:, 0], rtol=1e-4, atol=1e-4)


def test_gradients_reach_only_queried_prior_rows() -> None:
    torch.manual_seed(1)
    net = HermesNet(TINY)
    null = net.null_task
    task_idx = torch.tensor([[0, 2], [2, null]])
    modality_idx = torch.tensor([1, 1])
    out = net(torch.randn(2, 1, 32, 16, 16), task_idx, modality_idx)
    (out.logits.square().mean() + out.modality_logits.square().mean()).backward()
    queried, unqueried = {0, 2, null}, {1, 3, 4}
    for fusion in net.fusions:
        grad = fusion.task_prior.grad
        assert grad is not None and grad.shape == fusion.task_prior.shape
        for row in queried:
            assert grad[row].abs().sum() > 0, f"no gradient for queried task row {row}"
        for row in unqueried:
            assert torch.count_nonzero(grad[row]) == 0, f"gradient leaked into unqueried task row {row}"
        mod_grad = fusion.modality_prior.grad
        assert mod_grad[1].abs().sum() > 0
        assert torch.count_nonzero(mod_grad[0]) == 0 and torch.count_nonzero(mod_grad[2]) == 0


def test_input_validation(tiny: HermesNet) -> None:
    image = torch.randn(1, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny(torch.randn(1, 1, 32, 32, 24), torch.tensor([[0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="task_idx values"):
        tiny(image, torch.tensor([[tiny.null_task + 1]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="modality_idx values"):
        tiny(image, torch.tensor([[0]]), torch.tensor([TINY.num_modalities]))
    with pytest.raises(ValueError, match="task_idx must be"):
        tiny(image, torch.tensor([0]), torch.tensor([0]))


def test_config_round_trip_and_errors() -> None:
    cfg = preset("small", 7, 6)
    d = cfg.to_dict()
    assert isinstance(d["widths"], list) and isinstance(d["fusion_blocks"], list)
    assert HermesConfig.from_dict(d) == cfg
    with pytest.raises(CheckpointError, match="unknown entries"):
        HermesConfig.from_dict({**d, "dropout": 0.1})
    with pytest.raises(CheckpointError, match="invalid"):
        HermesConfig.from_dict({**d, "widths": [16, 32, 48, 128, 160]})


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError, match="divisible by head_dim"):
        HermesConfig(3, 2, widths=(16, 32, 48, 128, 160))
    with pytest.raises(ValueError, match="5 positive integers"):
        HermesConfig(3, 2, widths=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="num_tasks"):
        HermesConfig(0, 2)


def test_presets() -> None:
    assert set(PRESETS) == {"paper", "small"}
    with pytest.raises(ValueError, match="paper, small"):
        preset("huge", 3, 2)
    paper = preset("paper", 72, 6)
    assert paper.widths == (32, 64, 128, 256, 320) and paper.fusion_blocks == (2, 2, 4, 2, 2)
    assert sum(p.numel() for p in HermesNet(paper).parameters()) == 60_884_998
    small = sum(p.numel() for p in HermesNet(preset("small", 72, 6)).parameters())
    assert 2e6 <= small <= 8e6


@pytest.mark.parametrize("fused", [True, False])
def test_kernel_source_follows_fused_kernels(fused: bool) -> None:
    """``fused_kernels=False`` hands the classifier the unfused pool rows; the default, the fused tokens."""
    torch.manual_seed(3)
    net = HermesNet(HermesConfig(**{**TINY.to_dict(), "fused_kernels": fused}))
    seen = []
    net.out.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    task_idx = torch.tensor([[0, 2]])
    net(torch.randn(1, 1, 32, 16, 16), task_idx, torch.tensor([1]))
    rows = torch.cat([fusion.task_prior[task_idx] for fusion in net.fusions], dim=-1)
    assert torch.equal(seen[0], rows) is not fused
    with pytest.raises(ValueError, match="fused_kernels"):
        HermesConfig(**{**TINY.to_dict(), "fused_kernels": "no"})
