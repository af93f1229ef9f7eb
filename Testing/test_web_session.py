"""One web session without a browser: the page's values, a DICOM series from ``--data``, Segment through the runner
(polled as the server loop polls it), and every save format (NIfTI, ``.seg.nrrd``, DICOM SEG via ``dicom_out``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -r requirements-web.txt)")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from test_dicom_out import write_ct_series  # noqa: E402

from UniversalSegLib.errors import InputError  # noqa: E402
from UniversalSegLib.web import state as page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_ct_series(SAMPLE, folder / "hippo_dicom")
    (folder / "notes.txt").write_text("not an image")
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE)), str(folder / "hippo.nrrd"))
    return folder


@pytest.fixture(scope="module")
def session(data):
    from trame.app import get_server

    from UniversalSegLib.web.app import WebSession

    server = get_server("universalseg-test", client_type="vue3")
    web = WebSession(server, data_dir=str(data), idle_timeout=0)
    yield web
    web.close()


def test_the_data_folder_lists_images_and_dicom_series_and_nothing_outside(data):
    assert page.list_data_files(data) == ["hippo.nrrd", "hippo_dicom/"]
    with pytest.raises(InputError):
        page.resolve_data_file(data, "../" + data.name + "/../x")
    assert page.resolve_data_file(data, "hippo_dicom/") == (data / "hippo_dicom").resolve()


def test_the_task_list_is_the_slicer_panels(session):
    from UniversalSegLib.slicer_logic.widget_glue import modality_choices, model_task_tree

    assert [m["id"] for m in session.state.modalities] == modality_choices()
    session.state.modality = "MR-FLAIR"
    session._on_tasks_key()
    assert session.state.task_items == [] and session.state.tasks_warning.startswith("4 weak tasks hidden")
    session.state.show_weak = True
    session._on_tasks_key()
    tree = model_task_tree("MR-FLAIR", [], show_weak=True)
    assert [t["id"] for t in session.state.task_items] == [r.id for _g, rows in tree.groups for r in rows]
    session.state.show_weak = False


def test_segment_a_dicom_series_and_save_every_format(session, data):
    session.state.data_file = "hippo_dicom/"
    session.open_data_file()
    assert session.state.status.startswith("Opened 'hippo_dicom/'"), session.state.error
    session.state.modality = "MR-T1"
    session._on_tasks_key()
    session.state.tasks_selected = ["hippocampus_anterior", "hippocampus_posterior"]
    session.segment()
    assert session.job is not None and session.state.running
    deadline = time.monotonic() + 300
    while session.job is not None and time.monotonic() < deadline:
        session.poll()
        time.sleep(0.2)
    assert "2 structures segmented" in session.state.status, session.state.error
    counts = {s["id"]: s["voxels"] for s in session.state.segments}
    assert set(counts) == {"hippocampus_anterior", "hippocampus_posterior"} and min(counts.values()) > 500

    nifti = session.write("nifti")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    assert {1: int((labels == 1).sum()), 2: int((labels == 2).sum())} == {
        1: counts["hippocampus_anterior"], 2: counts["hippocampus_posterior"]}
    assert nifti.with_name(nifti.name.replace(".nii.gz", ".json")).exists()
    assert session.write("seg-nrrd").name.endswith(".seg.nrrd")
    seg = pydicom.dcmread(session.write("dicom-seg"))
    assert seg.SOPClassUID == SEG_STORAGE and len(seg.SegmentSequence) == 2

    dicom_folder, session.source = session.source, SAMPLE  # as if the image had come from a file
    with pytest.raises(InputError, match="DICOM SEG needs a DICOM series"):
        session.write("dicom-seg")
    session.source = dicom_folder


def test_a_file_that_is_not_an_image_is_a_message(session, data):
    session.state.data_file = "notes.txt"
    session.open_data_file()
    assert session.state.status.startswith("Failed:")
    with pytest.raises(InputError, match="cannot read 'notes.txt' as an image"):
        session.load_path(data / "notes.txt", "notes.txt")
