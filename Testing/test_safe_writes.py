"""Never destroy the user's data: outputs that are inputs, existing outputs, races, failed writes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UniversalSegLib import safe_write
from UniversalSegLib.catalog import Catalog
from UniversalSegLib.cli import main
from UniversalSegLib.errors import OutputError, UniversalSegError
from UniversalSegLib.inference import SegmentationResult
from UniversalSegLib.safe_write import atomic_output, check_outputs, commit, same_file, temp_path
from UniversalSegLib.writers import write_result


def _image(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    sitk.WriteImage(image, str(path))
    return path


def _result() -> SegmentationResult:
    catalog = Catalog.load()
    labels = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    return SegmentationResult(labels, [catalog.tasks_for("MR-T1")[0]], catalog.modality("MR-T1"))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# --- output is an input, by any spelling ---------------------------------------------------------------

def test_segment_refuses_output_equal_to_input(tmp_path, capsys):
    img = _image(tmp_path / "ct.nii.gz")
    before = img.read_bytes()
    assert main(["segment", str(img), "-o", str(img), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is the input file" in err and "What to do" in err
    assert img.read_bytes() == before


@pytest.mark.parametrize("spelling", ["symlink", "dotdot", "hardlink", "relative"])
def test_output_resolving_to_input_is_refused(tmp_path, monkeypatch, spelling):
    img = _image(tmp_path / "ct.nii.gz")
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out = tmp_path / "sub" / "link.nii.gz"
        out.symlink_to(img)
    elif spelling == "dotdot":
        out = tmp_path / "sub" / ".." / "ct.nii.gz"
    elif spelling == "hardlink":
        out = tmp_path / "sub" / "hard.nii.gz"
        os.link(img, out)
        assert os.stat(out).st_ino == os.stat(img).st_ino
    else:
        monkeypatch.chdir(tmp_path / "sub")
        out = Path("../ct.nii.gz")
    with pytest.raises(OutputError, match="is the input file"):
        check_outputs([out], [img], overwrite=True)  # --overwrite never allows writing over an input
    assert same_file(out, img)


def test_sidecar_may_not_land_on_an_input(tmp_path):
    mask = _image(tmp_path / "mask.nii.gz")
    sidecar_input = tmp_path / "seg.json"
    sidecar_input.write_text("{}")
    with pytest.raises(OutputError, match="seg.json"):
        write_result(_result(), tmp_path / "seg.nii.gz", inputs=(mask, sidecar_input), overwrite=True)
    assert sidecar_input.read_text(encoding="utf-8") == "{}" and not (tmp_path / "seg.nii.gz").exists()


def test_segment_preview_may_not_land_on_the_input(tmp_path):
    img = _image(tmp_path / "ct.nii.gz")
    assert main(["segment", str(img), "-o", str(tmp_path / "seg.nii.gz"), "--preview", str(img),
                 "--overwrite", "--quiet"]) == 2


def test_outputs_may_not_coincide(tmp_path):
    with pytest.raises(OutputError, match="same file"):
        check_outputs([tmp_path / "a.png", tmp_path / "x" / ".." / "a.png"], ())


def test_refine_refuses_writing_over_its_mask(tmp_path):
    img = _image(tmp_path / "ct.nii.gz")
    mask = _image(tmp_path / "coarse.nii.gz")
    before = mask.read_bytes()
    assert main(["refine", str(img), "--mask", str(mask), "-o", str(mask), "--overwrite"]) == 2
    assert mask.read_bytes() == before


def test_export_refuses_writing_over_its_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"precious")
    assert main(["export", str(ckpt), "-o", str(ckpt), "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err and ckpt.read_bytes() == b"precious"
    report = tmp_path / "out.json"  # the manifest of out.pt would land on an evaluation report
    report.write_text('{"dataset": "d"}')
    assert main(["export", str(ckpt), "-o", str(tmp_path / "out.pt"), "--evaluation", str(report),
                 "--overwrite"]) == 2
    assert report.read_text(encoding="utf-8") == '{"dataset": "d"}'


def test_evaluate_refuses_report_over_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    assert main(["evaluate", str(tmp_path), "--json", str(tmp_path / "dataset.json"), "--overwrite"]) == 2
    assert (tmp_path / "dataset.json").read_text(encoding="utf-8") == "{}"


# --- existing outputs need --overwrite -----------------------------------------------------------------

def test_existing_output_needs_overwrite(tmp_path, capsys):
    img = _image(tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"earlier result")
    assert main(["segment", str(img), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "pass --overwrite" in err
    assert out.read_bytes() == b"earlier result"
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "dataset.json").write_text("{}")
    assert main(["evaluate", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 2


def test_write_result_overwrite(tmp_path):
    out = tmp_path / "seg.nii.gz"
    written = write_result(_result(), out)
    assert written == [out, tmp_path / "seg.json"]
    with pytest.raises(OutputError, match="already exists"):
        write_result(_result(), out)
    write_result(_result(), out, overwrite=True)
    assert sitk.ReadImage(str(out)).GetSize() == (6, 5, 4)
    assert _leftovers(tmp_path) == []


def test_finetune_default_output_is_not_the_shipped_weights(monkeypatch):
    from UniversalSegLib.refine.litemedsam import FINETUNED, WEIGHTS_DIR
    from UniversalSegLib.training import finetune

    monkeypatch.delenv("UNIVERSALSEG_CACHE", raising=False)
    assert not same_file(finetune.candidate(), FINETUNED)
    assert WEIGHTS_DIR.resolve() not in finetune.candidate().resolve().parents
    parser_default = subprocess.run([sys.executable, "-m", "UniversalSegLib.training.finetune", "train", "--help"],
                                    capture_output=True, text=True, check=True,
                                    env={**os.environ, "COLUMNS": "300"}).stdout
    assert "cache/refine/litemedsam_finetuned.pt" in parser_default


def test_finetune_refuses_existing_output_before_training(tmp_path):
    from UniversalSegLib.training import finetune

    out = tmp_path / "w.pt"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        finetune.main(["train", "--output", str(out)])  # refused before any data is read
    assert out.read_bytes() == b"old"


# --- failures leave nothing half-written ---------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a chmod 0555 folder")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_outputs([folder / "seg.nii.gz"], ())
    finally:
        folder.chmod(0o755)


def test_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        check_outputs([tmp_path / "nope" / "seg.nii.gz"], ())


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    real_write = Path.write_text

    def half_then_enospc(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_enospc)
    with pytest.raises(OutputError, match="No space left"):
        write_result(_result(), tmp_path / "seg.nii.gz")
    with pytest.raises(OutputError, match="No space left"):
        with atomic_output(target) as tmp:
            tmp.write_text("x" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_real_full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not permitted)")
    try:
        with pytest.raises(OutputError):
            with atomic_output(mnt / "big.json") as tmp:
                tmp.write_bytes(os.urandom(256 * 1024))
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_sitk_failure_leaves_nothing(tmp_path, monkeypatch):
    from UniversalSegLib import writers

    def boom(image, name, *args):
        Path(name).write_bytes(b"partial")
        raise RuntimeError("write failed\nITK: disk full")

    monkeypatch.setattr(writers.sitk, "WriteImage", boom)
    with pytest.raises(OutputError, match="disk full"):
        write_result(_result(), tmp_path / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == []


# --- two runs at once ----------------------------------------------------------------------------------

def test_second_commit_does_not_replace_the_first(tmp_path):
    final = tmp_path / "seg.json"
    first, second = temp_path(final), temp_path(final)
    first.write_text("first")
    second.write_text("second")
    check_outputs([final], ())  # both runs passed the early check before either wrote
    commit(first, final)
    with pytest.raises(OutputError, match="already exists"):
        commit(second, final)
    assert final.read_text(encoding="utf-8") == "first" and _leftovers(tmp_path) == []
    third = temp_path(final)
    third.write_text("third")
    commit(third, final, overwrite=True)
    assert final.read_text(encoding="utf-8") == "third"


def test_concurrent_writers_exactly_one_wins(tmp_path):
    final = tmp_path / "out.json"
    outcomes: list[str] = []

    def run(n: int) -> None:
        try:
            with atomic_output(final) as tmp:
                tmp.write_text(str(n))
            outcomes.append("won")
        except UniversalSegError:
            outcomes.append("refused")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1 and final.read_text(encoding="utf-8") in {str(n) for n in range(8)}
    assert _leftovers(tmp_path) == []


def test_commit_keeps_plain_permissions(tmp_path):
    with atomic_output(tmp_path / "a.txt") as tmp:
        tmp.write_text("a")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert safe_write.temp_path(tmp_path / "x.seg.nrrd").name.endswith(".tmp.seg.nrrd")


def test_train_no_resume_refuses_a_run_folder_with_checkpoints(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"weeks of training")
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: run\ndatasets:\n  - path: synth_mr\n    modality: MR-T1\n"
                      "    tasks: {1: hippocampus_anterior}\n")
    assert main(["train", str(config), "--no-resume"]) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--overwrite" in err
    assert (tmp_path / "run" / "best.pt").read_bytes() == b"weeks of training"
