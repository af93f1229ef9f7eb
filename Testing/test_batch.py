"""``universalseg batch`` on a small real cohort (crops of samples/hippo_sample.nii.gz, the bundled model).

Serial runs go in-process through ``cli.main``; one test runs the same cohort on a 2-worker Dask
``LocalCluster`` (worker processes on loopback) and compares the outputs with the serial ones.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"
GOOD = ["case0_T1w", "case1_T1w", "case2_T1w"]
# The names tell the modality (T1w -> MR-T1); a CT-named MR fails as the wrong modality for the hippocampus.
OPTIONS = ["--group", "Hippocampus", "--no-mirror", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cropped MR cases, a corrupt file and an MR named as a CT."""
    folder = tmp_path_factory.mktemp("cohort")
    image = sitk.ReadImage(str(SAMPLE))
    for name, (x, y, z) in zip(GOOD, [(0, 0, 0), (2, 3, 1), (1, 5, 2)], strict=True):
        sitk.WriteImage(image[x:x + 32, y:y + 46, z:z + 32], str(folder / f"{name}.nii.gz"))
    sitk.WriteImage(image, str(folder / "case9_CT.nii.gz"))
    (folder / "broken_T1w.nii.gz").write_bytes(b"not an image" * 8)
    return folder


def summary(out: Path) -> dict[str, dict]:
    with open(out / "batch_summary.csv", newline="", encoding="utf-8") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_windows_per_pass_and_the_deprecated_batch_spelling(cohort, tmp_path, capsys):
    args = build_parser().parse_args(["segment", "x.nii.gz", "-o", "y.nii.gz", "--windows-per-pass", "3"])
    assert args.windows_per_pass == 3 and "deprecated" not in capsys.readouterr().err
    args = build_parser().parse_args(["segment", "x.nii.gz", "-o", "y.nii.gz", "--batch", "4"])
    assert args.windows_per_pass == 4
    assert "--batch is deprecated, use --windows-per-pass" in capsys.readouterr().err
    # both spellings still segment, with the same result
    old, new = tmp_path / "old.nii.gz", tmp_path / "new.nii.gz"
    assert main(["segment", str(cohort / "case0_T1w.nii.gz"), "-o", str(old), "--batch", "1", *OPTIONS]) == 0
    assert main(["segment", str(cohort / "case0_T1w.nii.gz"), "-o", str(new), "--windows-per-pass", "1",
                 *OPTIONS]) == 0
    assert np.array_equal(labels(old), labels(new))


def test_serial_batch_reports_failures_skips_done_cases_and_refuses_other_options(cohort, tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["batch", str(cohort), "-o", str(out), *OPTIONS]) == 1  # two cases fail
    rows = summary(out)
    assert {name: rows[f"{name}.nii.gz"]["status"] for name in GOOD} == dict.fromkeys(GOOD, "done")
    assert rows["broken_T1w.nii.gz"]["status"] == "failed" and "cannot read" in rows["broken_T1w.nii.gz"]["error"]
    assert rows["case9_CT.nii.gz"]["status"] == "failed" and "modality CT" in rows["case9_CT.nii.gz"]["error"]
    report = json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 2}
    for name in GOOD:
        side = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert side["modality"] == "MR-T1" and len(side["labels"]) == 2
        assert len(side["batch"]["model_sha256"]) == 64 and side["batch"]["options"]["mirror"] is False
        assert labels(out / f"{name}.nii.gz").max() >= 1
    assert not (out / "broken_T1w.nii.gz").exists() and not (out / "case9_CT.nii.gz").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case*")}

    # rerun: the three done cases are skipped (files untouched), the failed ones tried again
    assert main(["batch", str(cohort), "-o", str(out), *OPTIONS]) == 1
    assert json.loads((out / "batch_summary.json").read_text())["counts"] == {"done": 0, "skipped": 3, "failed": 2}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case*")} == stamps
    capsys.readouterr()

    # other options: refused before any work, nothing replaced
    assert main(["batch", str(cohort), "-o", str(out), *OPTIONS, "--threshold", "0.4"]) == 2
    err = capsys.readouterr().err
    assert "3 existing output(s)" in err and "threshold: None -> 0.4" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case*")} == stamps

    # another model (its sha256 in the sidecar differs): refused too
    side_path = out / "case1_T1w.json"
    side = json.loads(side_path.read_text(encoding="utf-8"))
    side["batch"]["model_sha256"] = "0" * 64
    side_path.write_text(json.dumps(side))
    assert main(["batch", str(cohort), "-o", str(out), *OPTIONS]) == 2
    assert "case1_T1w.nii.gz: made with another model" in capsys.readouterr().err

    # --overwrite redoes exactly the conflicting cases
    assert main(["batch", str(cohort), "-o", str(out), *OPTIONS, "--overwrite"]) == 1
    assert json.loads((out / "batch_summary.json").read_text())["counts"] == {"done": 1, "skipped": 2, "failed": 2}
    assert json.loads(side_path.read_text(encoding="utf-8"))["batch"]["model_sha256"] != "0" * 64


def test_batch_never_writes_onto_its_inputs(cohort, capsys):
    before = {p.name: p.read_bytes() for p in cohort.iterdir()}
    assert main(["batch", str(cohort), "-o", str(cohort), *OPTIONS, "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in cohort.iterdir()} == before


def test_cases_csv_on_a_two_worker_local_cluster_matches_the_serial_run(cohort, tmp_path):
    cases = tmp_path / "cases.csv"
    cases.write_text("image,name\n" + "".join(f"{cohort / n}.nii.gz,p{i}\n" for i, n in enumerate(GOOD)))
    serial, dist = tmp_path / "serial", tmp_path / "dask"
    assert main(["batch", "--cases", str(cases), "-o", str(serial), *OPTIONS]) == 0
    assert main(["batch", "--cases", str(cases), "-o", str(dist), "--workers", "2", *OPTIONS]) == 0
    report = json.loads((dist / "batch_summary.json").read_text(encoding="utf-8"))
    assert report["workers"] == 2 and report["counts"]["done"] == 3
    for i in range(len(GOOD)):
        assert np.array_equal(labels(serial / f"p{i}.nii.gz"), labels(dist / f"p{i}.nii.gz"))
        a, b = (json.loads((folder / f"p{i}.json").read_text(encoding="utf-8")) for folder in (serial, dist))
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_segment_and_serial_batch_do_not_import_dask():
    code = ("import sys; from UniversalSegLib import batch, cli; cli.build_parser(); "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_scheduler_joins_a_running_cluster(cohort, tmp_path):
    from dask.distributed import LocalCluster

    cases = tmp_path / "one.csv"
    cases.write_text(f"image\n{cohort / GOOD[0]}.nii.gz\n")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert main(["batch", "--cases", str(cases), "-o", str(tmp_path / "seg"), "--scheduler",
                     cluster.scheduler_address, *OPTIONS]) == 0
    report = json.loads((tmp_path / "seg" / "batch_summary.json").read_text(encoding="utf-8"))
    assert report["scheduler"].startswith("tcp://127.0.0.1:") and report["counts"]["done"] == 1
    assert (tmp_path / "seg" / f"{GOOD[0]}.nii.gz").is_file()

