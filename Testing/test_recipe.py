"""The flat recipe of the bundled model (configs/universalseg-small.yaml) and the multi-stage runner.

The recipe must resolve to the training configuration the bundled model's manifest records, and to the
chain of archived configs it replaces; its stages must chain (each from the previous stage's result); a
few steps of its first stages on tiny synthetic data must run, each stage starting from the one before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from test_training_support import TINY_RUN, tiny_config

from UniversalSegLib.errors import InputError
from UniversalSegLib.training.__main__ import main, run_recipe
from UniversalSegLib.training.config import TrainConfig, is_recipe, load_config, load_recipe, run_folders
from UniversalSegLib.training.export import _relative

RECIPE = REPO / "configs" / "universalseg-small.yaml"
MANIFEST = REPO / "UniversalSegLib" / "weights" / "universalseg-small.json"
#: Settings that name this rebuild's own folders, not how the model is trained: the manifest records
#: the historical run's (runs/stage15, started from runs/stage13/final.pt).
RUN_SPECIFIC = {"output_dir", "init_from"}
#: The archived config of each recipe stage, with the command-line override it ran with.
ARCHIVED = [("prior_kernels", {}), ("prior_kernels", {"iterations": 4500}), ("headneck_weighted", {}),
            ("atrium_weighted", {}), ("batched", {}), ("long", {}), ("larynx_skip_empty", {}), ("zoom", {}),
            ("zoom_more", {}), ("zoom_long", {}), ("zoom_long_more", {}), ("stage12", {}), ("stage13", {}),
            ("stage15", {})]
SETTINGS = {f.name for f in dataclasses.fields(TrainConfig)} - {"base_dir"}


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def test_last_stage_is_the_configuration_the_manifest_records() -> None:
    recipe, manifest = load_recipe(RECIPE), _manifest()
    assert (recipe.name, recipe.version) == (manifest["name"], manifest["version"])
    ours = _relative(recipe.stages[-1].config.to_dict())  # folders as export writes them
    recorded = manifest["training"]["config"]
    assert set(ours) == set(recorded)
    for key in sorted(set(recorded) - RUN_SPECIFIC):
        assert ours[key] == recorded[key], key
    assert manifest["training"]["iterations"] == recipe.stages[-1].config.iterations


def test_stages_are_the_runs_the_manifest_lists() -> None:
    """``training.earlier_stages`` (oldest first) and the last run: steps and dataset weights of each."""
    recipe, training = load_recipe(RECIPE), _manifest()["training"]
    runs = [*training["earlier_stages"], {"iterations": training["iterations"],
                                          "dataset_weights": {d["name"]: d["weight"] for d in training["datasets"]}}]
    # stage 1's run was continued by stage 2 (resume_from): the manifest lists that run once, at its end
    stages = [s for s, after in zip(recipe.stages, [*recipe.stages[1:], None], strict=True)
              if after is None or after.resume_from is None]
    assert len(stages) == len(runs) == 13
    for stage, run in zip(stages, runs, strict=True):
        assert stage.config.iterations == run["iterations"], stage.name
        assert {d.name: d.weight for d in stage.config.datasets} == run["dataset_weights"], stage.name
    assert sum(s.config.iterations for s in stages) == training["iterations_total"]


def test_recipe_is_flat_and_each_stage_starts_from_the_previous_one() -> None:
    raw = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    assert set(raw) == {"name", "version", "stages"}
    for stage in raw["stages"]:  # every setting written out, none inherited
        assert "extends" not in stage and SETTINGS - {"init_from"} <= set(stage), stage["name"]
    recipe = load_recipe(RECIPE)
    first, *rest = recipe.stages
    assert first.config.init_from is None and first.resume_from is None
    for previous, stage in zip(recipe.stages, rest, strict=False):
        if stage.resume_from is not None:
            assert stage.resume_from == previous.config.output_path / "last.pt" and stage.config.init_from is None
            assert stage.config.iterations > previous.config.iterations
        else:
            assert stage.config.init_path == previous.config.output_path / "final.pt", stage.name
    outputs = [s.config.output_path for s in recipe.stages]
    assert len(set(outputs)) == len(outputs) and all(p.parent == REPO / "runs" / "universalseg-small" for p in outputs)
    assert run_folders(RECIPE) == outputs and is_recipe(RECIPE) and not is_recipe(REPO / "configs" / "default.yaml")


def test_recipe_is_the_archived_chain_written_out() -> None:
    recipe = load_recipe(RECIPE)
    assert [s.name for s in recipe.stages][-1] == "stage15" and len(recipe.stages) == len(ARCHIVED)
    for stage, (name, overrides) in zip(recipe.stages, ARCHIVED, strict=True):
        ours = stage.config.to_dict()
        chained = load_config(REPO / "configs" / "archive" / f"{name}.yaml", **overrides).to_dict()
        assert {k: v for k, v in ours.items() if k not in RUN_SPECIFIC} == \
            {k: v for k, v in chained.items() if k not in RUN_SPECIFIC}, stage.name


def _write(tmp_path: Path, stages: list[dict], name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "m", "stages": stages}))
    return path


def test_recipe_errors_name_the_stage(tmp_path: Path) -> None:
    one = {"datasets": [{"path": "a"}], "iterations": 4}
    cases = [
        ([{"name": "s", "init_from": "previous", **one}], "previous in the first stage"),
        ([{"name": "s", **one, "output_dir": "x"}, {"name": "s", **one, "output_dir": "y"}], "repeats"),
        ([{"name": "s", "extends": "b.yaml", **one}], "extends"),
        ([{"name": "s", **one, "output_dir": "x"}, {"name": "t", **one, "output_dir": "y", "resume_from": "previous"}],
         "not more than"),
        ([{"name": "s", **one, "output_dir": "x"}, {"name": "t", **one, "output_dir": "y", "resume_from": "previous",
                                                    "init_from": "previous", "iterations": 5}], "both"),
        ([{"name": "s", **one, "output_dir": "x"}, {"name": "t", **one, "output_dir": "x", "init_from": "previous"}],
         "another stage's"),
        ([{"name": "s", **one, "lr": -1}], "stage 1 \\(s\\).*lr"),
        ([{**one}], "name"),
    ]
    for stages, message in cases:
        with pytest.raises(InputError, match=message):
            load_recipe(_write(tmp_path, stages))
    with pytest.raises(InputError, match="multi-stage recipe"):
        load_config(RECIPE)
    with pytest.raises(InputError, match="no stage"):
        load_recipe(RECIPE).stage("missing")
    assert load_recipe(RECIPE).stage(2).name == load_recipe(RECIPE).stage("prior_kernels_4500").name


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_first_stages_run_on_tiny_data_each_from_the_one_before(tmp_path: Path, capsys) -> None:
    """The recipe's first three stages (scratch, resume_from, init_from), their settings on tiny data."""
    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.models import load_checkpoint
    from UniversalSegLib.training.trainer import train

    tiny = tiny_config(tmp_path)  # writes the synthetic datasets under tmp_path/data
    small = {**TINY_RUN, "data_root": "data", "cache_dir": "cache", "splits_dir": "splits", "val_every": 1000,
             "datasets": tiny.to_dict()["datasets"]}
    stages = []
    for stage, iterations in zip(yaml.safe_load(RECIPE.read_text())["stages"][:3], (2, 3, 1), strict=True):
        stage = {**stage, **small, "iterations": iterations, "output_dir": f"runs/{stage['name']}"}
        stages.append(stage)
    stages[2]["lr"] = 1e-9  # stage 3's one step leaves its start (stage 2's final.pt) as it was
    recipe = load_recipe(_write(tmp_path, stages))
    assert [s.resume_from is not None for s in recipe.stages] == [False, True, False]

    seen: list[tuple[str, str | None]] = []

    def recording_train(config: TrainConfig, **kw: object) -> Path:  # what each stage starts from
        last = config.output_path / "last.pt"
        seen.append((config.output_path.name, _sha(last) if last.is_file() else None))
        return train(config, **kw)

    catalog = Catalog.load()
    finals = run_recipe(recipe, progress=False, catalog=catalog, train=recording_train)
    one, two, three = (s.config.output_path for s in recipe.stages)
    assert finals == [one / "final.pt", two / "final.pt", three / "final.pt"] and all(f.is_file() for f in finals)

    # stage 2 continued stage 1's run: it started from stage 1's last.pt, trained its third step only
    assert seen[0] == ("prior_kernels", None) and seen[2] == ("headneck_weighted", None)
    assert seen[1] == ("prior_kernels_4500", _sha(one / "last.pt"))
    state = _state(two / "last.pt")
    assert state["iteration"] == 3 and state["scheduler"]["last_epoch"] == 3
    rows = (two / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3"]
    assert load_checkpoint(two / "final.pt").metadata["iterations"] == 3

    # stage 3 started from stage 2's final.pt (lr 1e-9: its one step left those weights), schedule fresh
    start = load_checkpoint(two / "final.pt").model.state_dict()
    state = _state(three / "last.pt")
    assert state["iteration"] == 1 and state["scheduler"]["last_epoch"] == 1
    for key, value in start.items():
        assert torch.allclose(state["model"][key].float(), value.float(), atol=1e-6), key
    assert load_checkpoint(three / "final.pt").metadata["config"]["init_from"] == str(two / "final.pt")

    # a rerun skips the finished stages; the command line does the same and prints the last final.pt
    seen.clear()
    assert run_recipe(recipe, progress=False, catalog=catalog, train=recording_train) == finals and not seen
    assert main([str(recipe.path), "--stages", "1-3", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(three / "final.pt")
    assert main([str(recipe.path), "--stages", "9"]) == 2 and "no stage" in capsys.readouterr().err
    from UniversalSegLib.cli import main as cli_main

    assert cli_main(["train", str(recipe.path), "--stages", "2", "--quiet"]) == 0  # universalseg train RECIPE
    assert capsys.readouterr().out.strip() == str(two / "final.pt")
    assert cli_main(["train", str(recipe.path), "--no-resume"]) == 2  # would replace the stages' checkpoints
    assert "already holds checkpoints" in capsys.readouterr().err

    # --no-resume trains stage 2 over, again from stage 1's last.pt (not from its own)
    seen.clear()
    run_recipe(recipe, progress=False, resume=False, stages=[recipe.stages[1]], catalog=catalog,
               train=recording_train)
    assert seen == [("prior_kernels_4500", _sha(one / "last.pt"))]
    assert _state(two / "last.pt")["iteration"] == 3
