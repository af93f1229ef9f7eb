"""Whole training runs on tiny synthetic data: checkpoints, exact resume, baseline mode, 2-process DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_training_support import tiny_config

from UniversalSegLib.catalog import Catalog
from UniversalSegLib.training.trainer import train


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("one_dataset_per_step", [False, True])
def test_run_writes_checkpoints_and_resumes_exactly(tmp_path: Path, one_dataset_per_step: bool) -> None:
    catalog = Catalog.load()
    full = tiny_config(tmp_path, output_dir="full", val_every=4, one_dataset_per_step=one_dataset_per_step)
    best = train(full, progress=False, catalog=catalog)
    split = tiny_config(tmp_path, output_dir="split", val_every=4, one_dataset_per_step=one_dataset_per_step)
    train(split, progress=False, catalog=catalog, stop_after=2)
    assert not (tmp_path / "split" / "best.pt").exists() and not (tmp_path / "split" / "final.pt").exists()
    mid = _state(tmp_path / "split" / "last.pt")
    assert mid["iteration"] == 2
    train(split, progress=False, catalog=catalog)  # resumes at 3

    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["state"][key], b["ema"]["state"][key]), key
    assert not all(torch.equal(mid["model"][k], a["model"][k]) for k in a["model"])  # steps 3-4 did train
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4

    # best.pt: our checkpoint format with the inference dict and the metadata inference needs
    from UniversalSegLib.models import load_checkpoint

    loaded = load_checkpoint(best)
    assert loaded.task_ids == ["liver", "spleen", "hippocampus_anterior"]
    assert loaded.modality_ids == ["CT", "MR-T1", "MR"]  # MR: generic prior trained by modality swaps
    assert loaded.inference["spacing"] is None and loaded.inference["patch_size"] == [32, 32, 16]
    assert loaded.inference["group_spacing"] == {"abdominal_organs": None, "hippocampus": [1.5, 1.5, 1.5]}
    assert loaded.inference["group_patch_size"] == {"abdominal_organs": [32, 32, 16], "hippocampus": [32, 16, 16]}
    meta = loaded.metadata
    assert meta["iterations"] == 4 and meta["licenses"] == {"synth_ct": "synthetic", "synth_mr": "synthetic"}
    assert set(meta["val_dice_per_label"]) == {"synth_ct/Liver", "synth_ct/Spleen", "synth_mr/Hippo"}
    assert meta["training_seconds"] > 0 and meta["date"]
    rows = (tmp_path / "split" / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # no duplicate after resuming
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "splits" / "synth_ct.json").read_text(encoding="utf-8"))["dataset"] == "synth_ct"

    # final.pt: the last step's EMA weights, also written when a finished run is resumed without it
    for run in ("full", "split"):
        final = load_checkpoint(tmp_path / run / "final.pt")
        assert final.metadata["iterations"] == 4
        for key, value in final.model.state_dict().items():
            assert torch.equal(value, a["ema"]["state"][key]), (run, key)
    (tmp_path / "full" / "final.pt").unlink()
    train(full, progress=False, catalog=catalog)
    assert _state(tmp_path / "full" / "last.pt")["iteration"] == 4  # nothing trained again
    rewritten = load_checkpoint(tmp_path / "full" / "final.pt").model.state_dict()
    assert all(torch.equal(v, a["ema"]["state"][k]) for k, v in rewritten.items())


def test_no_resume_starts_over(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, iterations=2)
    train(cfg, progress=False, stop_after=1)
    train(cfg, progress=False, resume=False, stop_after=1)
    assert _state(tmp_path / "run" / "last.pt")["iteration"] == 1


def test_init_from_starts_from_a_checkpoint_with_a_fresh_schedule(tmp_path: Path) -> None:
    from UniversalSegLib.errors import CheckpointError
    from UniversalSegLib.models import load_checkpoint

    first = train(tiny_config(tmp_path, output_dir="first", iterations=3), progress=False)
    start = load_checkpoint(first).model.state_dict()
    # lr 1e-9: one AdamW step moves each weight by about 1e-11, so the weights are still those of `first`
    train(tiny_config(tmp_path, output_dir="second", init_from=str(first), lr=1e-9, iterations=5),
          progress=False, stop_after=1)
    state = _state(tmp_path / "second" / "last.pt")
    assert state["scheduler"]["last_epoch"] == 1  # the schedule starts over, the weights do not
    for key, value in start.items():
        assert torch.allclose(state["model"][key].float(), value.float(), atol=1e-6), key
        assert torch.allclose(state["ema"]["state"][key].float(), value.float(), atol=1e-6), key
    train(tiny_config(tmp_path, output_dir="fresh", lr=1e-9, iterations=5), progress=False, stop_after=1)
    fresh = _state(tmp_path / "fresh" / "last.pt")["model"]
    assert not all(torch.allclose(fresh[k].float(), v.float(), atol=1e-6) for k, v in start.items())

    other_tasks = tiny_config(tmp_path, output_dir="other", init_from=str(first))
    other_tasks.datasets[0].tasks = {1: "liver", 2: "kidney_left"}
    with pytest.raises(CheckpointError, match="has tasks"):
        train(other_tasks, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="another architecture"):
        train(tiny_config(tmp_path, output_dir="wide", init_from=str(first), widths=[8, 16, 32, 32, 32]),
              progress=False, stop_after=1)


def test_baseline_trains_one_prior_free_model_per_dataset(tmp_path: Path) -> None:
    from UniversalSegLib.models import load_checkpoint

    manifest = train(tiny_config(tmp_path, mode="baseline", iterations=4), progress=False)
    record = json.loads(manifest.read_text(encoding="utf-8"))
    checkpoints = record["checkpoints"]
    assert set(checkpoints) == {"synth_ct", "synth_mr"}
    assert record["iterations_per_dataset"] == {"synth_ct": 2, "synth_mr": 2}  # equal weights: half each
    assert _state(tmp_path / "run" / "baseline" / "synth_mr" / "last.pt")["iteration"] == 2
    ct = load_checkpoint(checkpoints["synth_ct"])
    assert ct.task_ids == ["liver", "spleen"] and ct.modality_ids == ["CT"]
    assert ct.model.config.fusion_blocks == (0, 0, 0, 0, 0)
    assert ct.metadata["mode"] == "baseline"


def test_baseline_only_shares_one_run_between_processes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from UniversalSegLib.errors import InputError
    from UniversalSegLib.training.trainer import main_train

    assert main_train([str(REPO / "configs" / "default.yaml"), "--only", "x"]) == 2  # a universal config
    assert "--only applies to baseline mode" in capsys.readouterr().err

    cfg = tiny_config(tmp_path, mode="baseline", iterations=4)
    with pytest.raises(InputError, match="synth_us"):
        train(cfg, progress=False, only=["synth_us"])
    first = json.loads(train(cfg, progress=False, only=["synth_mr"]).read_text(encoding="utf-8"))
    assert set(first["checkpoints"]) == {"synth_mr"}  # synth_ct was left to another process
    assert not (tmp_path / "run" / "baseline" / "synth_ct").exists()
    assert _state(tmp_path / "run" / "baseline" / "synth_mr" / "last.pt")["iteration"] == 2  # steps of the whole run
    second = json.loads(train(cfg, progress=False, only=["synth_ct"]).read_text(encoding="utf-8"))
    assert set(second["checkpoints"]) == {"synth_ct", "synth_mr"}  # the finished one is listed too
    assert second["iterations_per_dataset"] == {"synth_ct": 2, "synth_mr": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    from UniversalSegLib.training import trainer

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    live = {}
    original = trainer.EMA.update

    def spy(self, model):  # keep a handle on this rank's live network
        live["model"] = model
        return original(self, model)

    trainer.EMA.update = spy
    cfg = tiny_config(Path(tmp), iterations=2, threads=1, output_dir="ddp", device="cpu")
    try:
        train(cfg, progress=False)
        # Test-only record of each rank's final weights (the trainer itself writes from rank 0 only).
        total = sum(float(p.double().abs().sum()) for p in live["model"].parameters())
        (Path(tmp) / f"rank{rank}.txt").write_text(repr(total))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    tiny_config(tmp_path)  # write the synthetic data once, before the workers start
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    run = tmp_path / "ddp"
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert _state(run / "last.pt")["iteration"] == 2
    rows = (run / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 3  # header + 2 iterations: only rank 0 logged
    assert (tmp_path / "rank0.txt").read_text(encoding="utf-8") == (tmp_path / "rank1.txt").read_text(encoding="utf-8")


def test_main_train_command_line(tmp_path: Path, capsys) -> None:
    import yaml

    from UniversalSegLib.training.trainer import main_train

    assert main_train([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    tiny_config(tmp_path)  # writes the synthetic data
    from test_training_support import TINY_RUN

    cfg = {"data_root": "data", "output_dir": "cli", "cache_dir": "cache", "splits_dir": "splits", **TINY_RUN,
           "datasets": [{"path": "synth_mr", "spacing": [1.5, 1.5, 1.5], "patch_size": [32, 16, 16],
                         "modality": "MR-T1", "tasks": {1: "hippocampus_anterior"}}]}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main_train([str(path), "--iterations", "1", "--quiet", "--no-resume"]) == 0
    assert capsys.readouterr().out.strip().endswith("best.pt")
    assert (tmp_path / "cli" / "best.pt").is_file()
