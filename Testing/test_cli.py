"""The ``universalseg`` CLI end to end: files, sidecar, label order, and every bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import COARSE, build_checkpoint

HN = ["brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible"]


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run the console entry point in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", *args], capture_output=True, text=True,
                          timeout=600)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def kbp_case(shared_data: Path) -> Path:
    return shared_data / "ct_headneck_openkbp" / "images" / "kbp_001.nii.gz"


def test_tasks_json_lists_catalog():
    out = cli("tasks", "--json")
    assert out.returncode == 0, out.stderr
    tasks = json.loads(out.stdout)
    assert {"id", "name", "group", "modalities"} <= set(tasks[0])
    assert {t["id"] for t in tasks} >= set(HN)
    ct_only = json.loads(cli("tasks", "--json", "--modality", "CT").stdout)
    assert all("CT" in t["modalities"] for t in ct_only)
    assert len(ct_only) < len(tasks)
    table = cli("tasks", "--modality", "MR-T1")
    assert table.returncode == 0 and "hippocampus_anterior" in table.stdout and "mandible" not in table.stdout


def test_tasks_lists_only_what_the_model_validated():
    rows = json.loads(cli("tasks", "--json", "--modality", "CT").stdout)
    assert [t["id"] for t in rows] == HN  # the model's 7 CT tasks, not the catalog's 35 CT structures
    assert all(0.5 <= t["dice"] <= 1 and not t["weak"] and t["in_model"] for t in rows)
    assert rows[HN.index("mandible")]["dice"] == pytest.approx(0.8565, abs=1e-3)
    default = cli("tasks")
    assert default.returncode == 0 and "brain_tumour" not in default.stdout and "Dice 0.86" in default.stdout
    assert "4 weak task(s) hidden" in default.stderr
    weak = json.loads(cli("tasks", "--json", "--weak", "--modality", "MR-FLAIR").stdout)
    assert [t["id"] for t in weak][:1] == ["brain_tumour_necrosis"] and all(t["weak"] for t in weak)
    assert all(t["dice"] < 0.5 for t in weak)


def test_tasks_all_marks_catalog_entries_not_in_the_model():
    rows = json.loads(cli("tasks", "--json", "--all", "--modality", "CT").stdout)
    by_id = {t["id"]: t for t in rows}
    assert set(HN) <= set(by_id) and by_id["liver"]["in_model"] is False and by_id["liver"]["dice"] is None
    assert len(rows) > len(HN)
    table = cli("tasks", "--all", "--modality", "CT").stdout
    assert "not in model" in table.splitlines()[-1]


def test_tasks_of_another_model_read_from_its_manifest(tmp_path):
    manifest = json.loads((Path(__file__).resolve().parents[1] / "UniversalSegLib/weights/universalseg-small.json")
                          .read_text(encoding="utf-8"))
    manifest["task_ids"] = ["spleen", "mandible"]
    del manifest["inference_policy"]  # an export from before the policy block: figures from its reports
    manifest["validation"] = {"ct_headneck_openkbp": {"labels": {"Mandible": {"dice": 0.4}}}}
    manifest["validation_during_training"] = {}
    manifest["training"]["datasets"] = [{"name": "ct_headneck_openkbp", "modality": "CT"}]
    (tmp_path / "other.json").write_text(json.dumps(manifest))
    rows = json.loads(cli("tasks", "--json", "--weak", "--model", str(tmp_path / "other.pt")).stdout)
    assert [(t["id"], t["dice"], t["weak"]) for t in rows] == [("spleen", None, True), ("mandible", 0.4, True)]
    ct = json.loads(cli("tasks", "--json", "--weak", "--modality", "CT", "--model", str(tmp_path / "other.pt")).stdout)
    assert [t["id"] for t in ct] == ["mandible"]  # spleen: no training data, so no modality it is validated on
    assert json.loads(cli("tasks", "--json", "--model", str(tmp_path / "other.json")).stdout) == []
    missing = cli("tasks", "--model", str(tmp_path / "none.pt"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no model manifest")


def test_tasks_loads_no_torch():
    code = ("import sys, io, contextlib\nfrom UniversalSegLib.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['tasks', '--all', '--json']) == 0\n"
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_segment_kbp_case_with_task_order_and_sidecar(kbp_case, coarse_checkpoint, tmp_path):
    before = sha(kbp_case)
    out = tmp_path / "seg.nii.gz"
    probs = tmp_path / "probs"
    run = cli("segment", str(kbp_case), "-o", str(out), "--task", "mandible", "--task", "Brainstem",
              "--model", str(coarse_checkpoint), "--probabilities", str(probs), "--threads", "2",
              "--no-keep-largest")  # the plain probability argmax, checked below
    assert run.returncode == 0, run.stderr
    assert sha(kbp_case) == before
    side = json.loads((tmp_path / "seg.json").read_text(encoding="utf-8"))
    assert [side["labels"][k]["id"] for k in ("1", "2")] == ["mandible", "brainstem"]
    assert side["labels"]["1"]["terminology_entry"].count("~") == 6
    labels = sitk.ReadImage(str(out))
    image = sitk.ReadImage(str(kbp_case))
    assert labels.GetSize() == image.GetSize() and np.allclose(labels.GetOrigin(), image.GetOrigin())
    array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(array)) <= {0, 1, 2}
    # Each labelled voxel carries the task whose probability won there.
    p = {t: sitk.GetArrayFromImage(sitk.ReadImage(str(probs / f"{t}.nii.gz"))) for t in ("mandible", "brainstem")}
    for value, task, other in ((1, "mandible", "brainstem"), (2, "brainstem", "mandible")):
        where = array == value
        if where.any():
            assert (p[task][where] >= 0.5).all() and (p[task][where] >= p[other][where]).all()
    unlabelled = array == 0
    assert (np.maximum(p["mandible"], p["brainstem"])[unlabelled] < 0.5).all()


def test_group_expands_in_catalog_order_to_seg_nrrd(kbp_case, tmp_path):
    # A model that knows the seven OpenKBP organs (in another order): the group gives those, in catalog order.
    model = build_checkpoint(tmp_path / "hn.pt", task_ids=HN[::-1] + ["spleen"], modality_ids=["CT", "MR"],
                             inference=COARSE)
    out = tmp_path / "seg.seg.nrrd"
    run = cli("segment", str(kbp_case), "-o", str(out), "--group", "Head and neck organs at risk",
              "--model", str(model), "--modality", "CT", "--quiet")
    assert run.returncode == 0, run.stderr
    seg = sitk.ReadImage(str(out))
    names = [seg.GetMetaData(f"Segment{i}_ID") for i in range(len(HN))]
    assert names == HN
    assert seg.GetMetaData("Segment6_LabelValue") == "7"
    assert seg.GetMetaData("Segment0_Tags").startswith("TerminologyEntry:")


def test_smoke_cases_segment(shared_data, coarse_checkpoint, tmp_path):
    for case, modality, task in (("spleen_ct", None, "spleen"), ("spinalcord_t2", "MR-T2", "spinal_cord")):
        args = ["segment", str(shared_data / "smoke" / "images" / f"{case}.nii.gz"), "-o",
                str(tmp_path / f"{case}.nii.gz"), "--task", task, "--model", str(coarse_checkpoint), "--quiet"]
        run = cli(*args, *(["--modality", modality] if modality else []))
        assert run.returncode == 0, run.stderr
        side = json.loads((tmp_path / f"{case}.json").read_text(encoding="utf-8"))
        assert side["labels"]["1"]["id"] == task
        assert side["modality"] == (modality or "CT")  # spleen_ct: guessed CT from its air values


def write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def four_d(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [sitk.GetImageFromArray(rng.normal(size=(8, 8, 8)).astype(np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("bad")
    good = shared_data / "smoke" / "images" / "spleen_ct.nii.gz"
    garbage = d / "corrupt.nii.gz"
    garbage.write_bytes(b"this is not an image" * 50)
    nan = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    wrong_catalog = build_checkpoint(d / "wrong_catalog.pt", task_ids=["not_a_task"], modality_ids=["CT"])
    wrong_shape = d / "wrong_shape.pt"
    ours = torch.load(build_checkpoint(d / "tmp.pt"), weights_only=True)
    ours["state_dict"]["out.norm.weight"] = torch.zeros(7)  # a shape the configured network cannot take
    torch.save(ours, wrong_shape)
    return {
        "good": good, "garbage": garbage, "missing": d / "missing.nii.gz",
        "2d": write(np.ones((20, 20), np.float32) * np.arange(20), d / "flat.nii.gz"),
        "4d": four_d(d / "four.nii.gz"),
        "constant": write(np.full((8, 8, 8), 7, np.int16), d / "constant.nii.gz"),
        "nan": write(nan, d / "nan.nii.gz"), "wrong_catalog": wrong_catalog, "wrong_shape": wrong_shape,
        "dir": d,
    }


@pytest.mark.parametrize("case,extra,needle", [
    ("missing", [], "does not exist"),
    ("garbage", [], "cannot read"),
    ("2d", [], "is 2D"),
    ("4d", [], "is 4D"),
    ("constant", [], "constant"),
    ("nan", [], "NaN"),
    ("good", ["--task", "no_such_organ"], "unknown task"),
    ("good", ["--modality", "XRAY"], "unknown modality"),
    ("good", ["--task", "hippocampus_anterior", "--modality", "CT"], "--force"),
    ("good", ["--model", "@wrong_catalog"], "not_a_task"),
    ("good", ["--model", "@wrong_shape"], "out.norm.weight"),
    ("good", ["--model", "@missing"], "does not exist"),
])
def test_bad_input_gives_clear_error_and_no_output(bad_inputs, coarse_checkpoint, case, extra, needle):
    out = bad_inputs["dir"] / f"out_{case}_{abs(hash(needle))}.nii.gz"
    extra = [str(bad_inputs[a[1:]]) if a.startswith("@") else a for a in extra]
    model = [] if "--model" in extra else ["--model", str(coarse_checkpoint)]
    task = [] if "--task" in extra else ["--task", "spleen"]
    run = cli("segment", str(bad_inputs[case]), "-o", str(out), *task, *model, *extra, "--quiet")
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith("error: ") and "What to do:" in run.stderr
    assert needle.lower() in run.stderr.lower(), run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists() and not list(bad_inputs["dir"].glob(f".{out.name}*"))


def test_force_allows_a_task_of_another_modality(bad_inputs, coarse_checkpoint, tmp_path):
    run = cli("segment", str(bad_inputs["good"]), "-o", str(tmp_path / "f.nii.gz"), "--task", "hippocampus_anterior",
              "--modality", "CT", "--force", "--model", str(coarse_checkpoint), "--quiet")
    assert run.returncode == 0, run.stderr


def test_unwritable_output_fails_before_work(bad_inputs, coarse_checkpoint, tmp_path):
    run = cli("segment", str(bad_inputs["good"]), "-o", str(tmp_path / "no" / "such" / "dir" / "x.nii.gz"),
              "--task", "spleen", "--model", str(coarse_checkpoint), "--quiet")
    assert run.returncode == 2 and "does not exist" in run.stderr


def test_failed_write_leaves_no_partial_files(bad_inputs, coarse_checkpoint, tmp_path):
    target = tmp_path / "seg.nii.gz"
    (tmp_path / "seg.json").mkdir()  # the sidecar cannot be written: nothing may appear
    run = cli("segment", str(bad_inputs["good"]), "-o", str(target), "--task", "spleen",
              "--model", str(coarse_checkpoint), "--quiet")
    assert run.returncode == 2, run.stderr
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json"]
