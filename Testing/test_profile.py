"""``segment --profile OUT.json``: every stage, seconds that add up to the wall time, and safe writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from UniversalSegLib.profiling import STAGES, Profile, peak_rss_mb, seconds_since_process_start

REPO = Path(__file__).resolve().parents[1]
KBP = REPO / "samples" / "kbp_sample.nii.gz"
#: What a default run of a head-and-neck CT records (mirror on; no refinement).
EXPECTED = {"import", "setup", "read", "load_model", "resample", "normalise", "sliding_window", "network", "mirror",
            "mirror_network", "vote", "resample_back", "keep_largest", "write"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def test_stages_are_exclusive_and_add_up() -> None:
    profile = Profile()
    with profile.stage("outer"):
        time.sleep(0.02)
        with profile.stage("inner"):
            time.sleep(0.05)
        with profile.stage("inner"):
            time.sleep(0.01)
    profile.window(0.5, windows=2, mirror=True)
    report = profile.to_dict()
    assert report["stages"]["inner"]["seconds"] == pytest.approx(0.06, abs=0.03)
    assert report["stages"]["outer"]["seconds"] == pytest.approx(0.02, abs=0.03)  # the nested time is not counted
    total = sum(s["seconds"] for s in report["stages"].values()) + report["other_seconds"]
    assert total == pytest.approx(report["wall_seconds"], abs=1e-3)
    assert report["mirror_network_seconds_per_call"] == [0.5] and report["network_seconds_per_call"] == []
    assert report["peak_rss_mb"] >= report["stages"]["inner"]["peak_rss_mb"] > 0


def test_process_figures_are_plain_stdlib() -> None:
    assert peak_rss_mb() > 10
    age = seconds_since_process_start()
    assert age is None or 0 < age < 24 * 3600


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_segment_profile_has_every_stage(runtime, coarse_checkpoint, tmp_path) -> None:
    if runtime == "onnx":
        pytest.importorskip("onnxruntime")
    out, profile = tmp_path / "seg.nii.gz", tmp_path / "profile.json"
    started = time.perf_counter()
    run = cli("segment", str(KBP), "-o", str(out), "--group", "Head and neck organs at risk", "--modality", "CT",
              "--model", str(coarse_checkpoint), "--threads", "1", "--quiet", "--runtime", runtime,
              "--profile", str(profile))
    elapsed = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    assert f"wrote {profile}" in run.stdout and out.is_file()
    report = json.loads(profile.read_text(encoding="utf-8"))
    assert EXPECTED <= set(report["stages"]) <= set(STAGES)
    assert report["backend"] == runtime and report["command"] == "segment"
    calls = report["network_calls"]
    assert calls and len(report["network_seconds_per_call"]) == len(report["mirror_network_seconds_per_call"])
    network = sum(c["seconds"] for c in calls)
    staged = report["stages"]["network"]["seconds"] + report["stages"]["mirror_network"]["seconds"]
    assert network == pytest.approx(staged, rel=0.05, abs=0.01)
    stage_sum = sum(s["seconds"] for s in report["stages"].values())
    # the stages cover the process: what no stage holds (progress bar, the profile's own write) is small
    assert stage_sum == pytest.approx(report["wall_seconds"], rel=0.15, abs=0.3)
    assert report["wall_seconds"] <= elapsed + 0.05  # from process start, before the interpreter exits
    assert report["peak_rss_mb"] > 50 and report["stages"]["write"]["peak_rss_mb"] <= report["peak_rss_mb"]


def test_profile_never_overwrites(coarse_checkpoint, tmp_path) -> None:
    out, profile = tmp_path / "seg.nii.gz", tmp_path / "profile.json"
    profile.write_text("keep me")
    base = ("segment", str(KBP), "-o", str(out), "--modality", "CT", "--task", "mandible", "--model",
            str(coarse_checkpoint), "--threads", "1", "--quiet", "--runtime", "torch", "--no-mirror")
    run = cli(*base, "--profile", str(profile))
    assert run.returncode == 2 and "already exists" in run.stderr
    assert profile.read_text(encoding="utf-8") == "keep me" and not out.exists()  # refused before any work
    for target in (KBP, out):  # an input, or another output of the same run, even with --overwrite
        run = cli(*base, "--profile", str(target), "--overwrite")
        assert run.returncode == 2 and ("is the input file" in run.stderr or "same file" in run.stderr), run.stderr
    run = cli(*base, "--profile", str(profile), "--overwrite")
    assert run.returncode == 0, run.stderr
    assert json.loads(profile.read_text(encoding="utf-8"))["stages"]["write"]["seconds"] >= 0
