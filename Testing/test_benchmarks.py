"""``benchmarks/universal_vs_specific.py``: baselines from a run folder, reports of both sides written and read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, build_checkpoint
from test_evaluate import make_dataset

SCRIPT = REPO / "benchmarks" / "universal_vs_specific.py"


def run_script(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def mean_row(stdout: str, name: str) -> list[str]:
    """Cells of the bold mean row of dataset ``name``."""
    rows = [line for line in stdout.splitlines() if line.startswith(f"| {name} | **mean**")]
    assert len(rows) == 1, stdout
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_compare_with_partial_baseline_run_and_reuse_reports(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data / "hippo")
    make_dataset(data / "other")
    run = tmp_path / "runs" / "baseline_equal"  # a baseline run still training: only "hippo" is finished
    (run / "baseline" / "hippo").mkdir(parents=True)
    (run / "baseline" / "other").mkdir()
    build_checkpoint(run / "baseline" / "hippo" / "best.pt", seed=1)
    common = ["--datasets", "hippo", "other", "--data-root", data, "--split", "all", "--limit", 2]

    first = run_script("--universal", tiny_checkpoint, "--baseline", run, *common,
                       "--reports", tmp_path / "ours", "--baseline-reports", tmp_path / "theirs")
    assert first.returncode == 0, first.stderr
    hippo, other = mean_row(first.stdout, "hippo"), mean_row(first.stdout, "other")
    assert hippo[3].startswith("**") and other[3] == "-"  # baseline column only where a best.pt exists
    theirs = json.loads((tmp_path / "theirs" / "hippo.json").read_text(encoding="utf-8"))
    assert theirs["model"] == str(run / "baseline" / "hippo" / "best.pt")
    assert not (tmp_path / "theirs" / "other.json").exists()
    ours = json.loads((tmp_path / "ours" / "hippo.json").read_text(encoding="utf-8"))
    assert f"**{ours['mean_dice']:.3f}**" == hippo[2] and ours["limit"] == 2

    again = run_script("--universal-reports", tmp_path / "ours", *common)  # no baseline, no re-evaluation
    assert again.returncode == 0, again.stderr
    assert mean_row(again.stdout, "hippo")[2] == hippo[2] and mean_row(again.stdout, "other")[2] == other[2]

    both = run_script("--universal-reports", tmp_path / "ours", "--baseline-from-reports", tmp_path / "theirs",
                      *common[3:], "--datasets", "hippo")  # both sides read back: the first run's table
    assert both.returncode == 0, both.stderr
    assert mean_row(both.stdout, "hippo")[2:4] == hippo[2:4]
    missing = run_script("--universal-reports", tmp_path / "ours", "--baseline-from-reports", tmp_path / "theirs",
                         *common)
    assert missing.returncode != 0 and "other.json" in missing.stderr

    wrong = run_script("--universal-reports", tmp_path / "ours", *common, "--no-keep-largest")
    assert wrong.returncode != 0 and "keep_largest" in wrong.stderr and "--reports" in wrong.stderr
    plain = run_script("--universal-reports", tmp_path / "ours", *common, "--no-mirror")  # made with mirror
    assert plain.returncode != 0 and "mirror = True" in plain.stderr
    fewer = run_script("--universal-reports", tmp_path / "ours", *common[:-2], "--limit", 1)
    assert fewer.returncode != 0 and "--limit 1" in fewer.stderr
    del ours["mirror"]  # a report from before mirror averaging counts as made without it
    (tmp_path / "ours" / "hippo.json").write_text(json.dumps(ours))
    older = run_script("--universal-reports", tmp_path / "ours", "--datasets", "hippo", *common[3:], "--no-mirror")
    assert older.returncode == 0, older.stderr


def test_finished_run_uses_its_manifest(tmp_path: Path) -> None:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("universal_vs_specific", SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "baseline" / "a").mkdir(parents=True)
    (tmp_path / "baseline" / "a" / "best.pt").write_bytes(b"")
    assert module.baseline_checkpoints(tmp_path) == {"a": tmp_path / "baseline" / "a" / "best.pt"}
    (tmp_path / "baseline.json").write_text(json.dumps({"checkpoints": {"a": "x/a.pt", "b": "x/b.pt"}}))
    assert module.baseline_checkpoints(tmp_path) == {"a": Path("x/a.pt"), "b": Path("x/b.pt")}
    assert module.baseline_checkpoints(tmp_path / "baseline.json") == module.baseline_checkpoints(tmp_path)


def test_transformed_input_maps_labels_back_onto_the_original_voxels(tiny_checkpoint: Path, one_thread) -> None:
    """Segmenting an image through a view (mirror + a quarter turn, and contrast-inverted) equals segmenting that
    view directly and mapping its labels back: the transform and its inverse match, also on a non-square plane."""
    import importlib.util

    import numpy as np
    import SimpleITK as sitk

    from UniversalSegLib.api import segment

    spec = importlib.util.spec_from_file_location("transformed_input", REPO / "benchmarks" / "transformed_input.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(3)
    view = sitk.GetImageFromArray(rng.normal(100, 20, (10, 14, 12)).astype(np.float32))  # what the net sees
    original = sitk.GetImageFromArray(bench.transform(sitk.GetArrayFromImage(view), True, 1, inverse=True))
    assert original.GetSize() == (14, 12, 10)  # the quarter turn swapped the in-plane axes
    kwargs = {"tasks": ["hippocampus_anterior", "hippocampus_posterior"], "modality": "MR", "model": tiny_checkpoint,
              "options": bench.InferenceOptions(mirror=False)}
    direct = sitk.GetArrayFromImage(segment(view, **kwargs).labels)
    through = bench.transformed_segment(original, mirror=True, turns=1, **kwargs).labels
    assert through.GetSize() == original.GetSize()
    assert direct.any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(through), bench.transform(direct, True, 1, inverse=True))
    negated = sitk.GetImageFromArray(-sitk.GetArrayFromImage(view))
    inverted = sitk.GetArrayFromImage(segment(negated, **kwargs).labels)
    assert (inverted != direct).any()  # the network sees another image
    through = bench.transformed_segment(original, mirror=True, turns=1, invert=True, **kwargs).labels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(through), bench.transform(inverted, True, 1, inverse=True))


def test_threshold_sweep_matches_segment_at_each_threshold(tmp_path: Path, tiny_checkpoint: Path, one_thread) -> None:
    """Re-thresholding kept probabilities gives what ``segment`` gives with that threshold, case by case, while
    the network runs once per case."""
    import importlib.util

    from UniversalSegLib.inference import InferenceOptions
    from UniversalSegLib.training.evaluate import evaluate_dataset

    spec = importlib.util.spec_from_file_location("threshold_sweep", REPO / "benchmarks" / "threshold_sweep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = make_dataset(tmp_path / "hippo")
    cached, rows = bench.CachedProbabilities(), {}
    for threshold in (0.3, 0.5, 0.7):
        cached.threshold = threshold
        swept = evaluate_dataset(data, model=tiny_checkpoint, segment_fn=cached)
        direct = evaluate_dataset(data, model=tiny_checkpoint, options=InferenceOptions(threshold=threshold))
        strip = [{k: v for k, v in row.items() if k != "seconds"} for row in swept["cases"]]
        assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in direct["cases"]]
        rows[threshold] = strip
    assert len(cached.results) == 2  # case c has no label file: two images segmented, once each
    assert rows[0.3] != rows[0.7]  # the threshold mattered
