"""Geometry: results live on the input's own grid, whatever its orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from UniversalSegLib.api import image_checksum, segment
from UniversalSegLib.inference import InferenceOptions
from UniversalSegLib.preprocess import canonical_grid, normalise, to_grid

OPTIONS = InferenceOptions(probabilities=True)


def phantom(size=(36, 30, 24), spacing=(1.2, 1.0, 1.5)) -> sitk.Image:
    """A smooth CT-like phantom: air around a soft-tissue ellipsoid with two bright blobs."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij")
    radius = np.sqrt((x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2)
    array = -1000.0 + 1040.0 / (1 + np.exp((radius - 1) / 0.06))  # skin blurred over a few voxels, as scanned
    array += 900 * np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2 + z**2) / 0.02)
    array += 500 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2 + (z - 0.3) ** 2) / 0.05)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 13.5, 7.0))
    return image


def reindexed(image: sitk.Image, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> sitk.Image:
    """The same physical image stored with permuted and flipped voxel axes (no resampling)."""
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    origin = np.asarray(image.GetOrigin())
    for axis, flip in enumerate(flips):  # axis in (i, j, k)
        if flip:
            origin = origin + direction[:, axis] * spacing[axis] * (size[axis] - 1)
            direction[:, axis] *= -1
            array = np.flip(array, axis=2 - axis)
    array = np.transpose(array, [2 - o for o in order[::-1]])
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(spacing[list(order)].tolist())
    out.SetDirection(direction[:, list(order)].flatten().tolist())
    out.SetOrigin(origin.tolist())
    return out


def ones_like(image: sitk.Image) -> sitk.Image:
    """An image of ones on ``image``'s grid: its field of view."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def on_grid(image: sitk.Image, reference: sitk.Image, nearest: bool = False) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(to_grid(image, reference, interp, default=0.0))


def run(image: sitk.Image, model, spacing=None):
    return segment(image, tasks=["mandible", "brainstem"], modality="CT", model=model, options=OPTIONS)


def test_reindexed_phantom_is_the_same_physical_image():
    image = phantom()
    other = reindexed(image, (2, 0, 1), (True, False, True))
    assert other.GetSize() != image.GetSize()
    np.testing.assert_allclose(on_grid(other, image), sitk.GetArrayFromImage(image), atol=1e-3)


@pytest.mark.parametrize("order,flips", [((0, 1, 2), (True, True, False)), ((2, 0, 1), (False, True, True)),
                                         ((1, 2, 0), (True, False, False))])
def test_flipped_and_permuted_storage_gives_the_same_segmentation(tiny_checkpoint, order, flips):
    image = phantom()
    reference = run(image, tiny_checkpoint)
    assert 0 < np.count_nonzero(sitk.GetArrayViewFromImage(reference.labels)) < np.prod(image.GetSize())
    other = reindexed(image, order, flips)
    result = run(other, tiny_checkpoint)
    assert result.labels.GetSize() == other.GetSize()
    for task in ("mandible", "brainstem"):
        np.testing.assert_allclose(on_grid(result.probabilities[task], image),
                                   sitk.GetArrayFromImage(reference.probabilities[task]), atol=1e-4)
    np.testing.assert_array_equal(on_grid(result.labels, image, nearest=True),
                                  sitk.GetArrayFromImage(reference.labels))


def oblique_copy(image: sitk.Image, degrees_z: float = 25, degrees_x: float = 12, size=(60, 56, 50),
                 spacing=(0.8, 0.8, 0.8)) -> sitk.Image:
    """The same physical content resampled onto a finer grid rotated about z and x (an oblique acquisition)."""
    az, ax = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rotation = rz @ rx
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    size, spacing = np.asarray(size), np.asarray(spacing, dtype=float)
    grid = sitk.Image(size.tolist(), sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(rotation.flatten().tolist())
    grid.SetOrigin((centre - rotation @ (spacing * (size - 1) / 2)).tolist())
    return to_grid(image, grid, default=float(sitk.GetArrayViewFromImage(image).min()))


def test_oblique_storage_gives_the_same_network_input_and_a_result_on_its_own_grid(tiny_checkpoint):
    image = phantom()
    oblique = oblique_copy(image)
    spacing = (1.0, 1.0, 1.0)
    ours = normalise(to_grid(oblique, canonical_grid(oblique, spacing)), "CT")
    theirs = normalise(to_grid(image, canonical_grid(image, spacing)), "CT")
    # Both canonical grids are axis-aligned; compare them on the reference's grid, inside the body.
    ours_img = sitk.GetImageFromArray(ours)
    ours_img.CopyInformation(canonical_grid(oblique, spacing))
    ref_grid = canonical_grid(image, spacing)
    support = on_grid(ones_like(oblique), ref_grid, nearest=True) > 0
    support &= on_grid(image, ref_grid) > -900
    a, b = on_grid(ours_img, ref_grid)[support], theirs[support]
    assert np.corrcoef(a, b)[0, 1] > 0.97
    result = run(oblique, tiny_checkpoint)
    assert result.labels.GetSize() == oblique.GetSize()
    assert np.allclose(result.labels.GetDirection(), oblique.GetDirection())
    assert np.allclose(result.labels.GetOrigin(), oblique.GetOrigin())


def rotation_matrices():
    return st.lists(st.floats(-1, 1), min_size=9, max_size=9).filter(
        lambda v: abs(np.linalg.det(np.reshape(v, (3, 3)))) > 0.2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.tuples(*[st.integers(4, 20)] * 3), spacing=st.tuples(*[st.floats(0.3, 4.0)] * 3),
       origin=st.tuples(*[st.floats(-500, 500)] * 3), raw=rotation_matrices(), seed=st.integers(0, 1000))
def test_output_grid_equals_input_grid(tiny_checkpoint, size, spacing, origin, raw, seed):
    q, _ = np.linalg.qr(np.reshape(raw, (3, 3)))
    image = sitk.GetImageFromArray(np.random.default_rng(seed).normal(0, 100, size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(q.flatten().tolist())
    before = image_checksum(image)
    result = segment(image, tasks=["spleen"], modality="CT", model=tiny_checkpoint)
    labels = result.labels
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetSpacing(), image.GetSpacing())
    assert np.allclose(labels.GetOrigin(), image.GetOrigin())
    assert np.allclose(labels.GetDirection(), image.GetDirection())
    assert image_checksum(image) == before  # the input is never modified


def test_canonical_grid_keeps_voxel_centres_of_axis_aligned_images():
    image = reindexed(phantom(), (1, 0, 2), (True, False, False))
    grid = canonical_grid(image)
    assert np.allclose(grid.GetDirection(), np.eye(3).flatten())
    assert sorted(grid.GetSize()) == sorted(image.GetSize())
    assert np.allclose(sorted(grid.GetSpacing()), sorted(image.GetSpacing()))


def test_group_spacing_and_window_apply_only_when_the_request_shares_one_group_setting() -> None:
    from UniversalSegLib.preprocess import target_spacing, target_window

    inference = {"spacing": [1.5, 1.5, 1.5], "patch_size": [64, 64, 64],
                 "group_spacing": {"hippocampus": [1.0, 1.0, 1.0], "heart_cine": None},
                 "group_patch_size": {"hippocampus": [32, 48, 32], "heart_cine": [96, 96, 16]}}
    assert target_spacing(inference, ["hippocampus"]) == (1.0, 1.0, 1.0)
    assert target_spacing(inference, ["heart_cine"]) is None  # the stored voxel grid
    assert target_spacing(inference, ["hippocampus", "heart_cine"]) == (1.5, 1.5, 1.5)
    assert target_window(inference, ["heart_cine"]) == (96, 96, 16)
    assert target_window(inference, ["hippocampus", "heart_cine"]) == (64, 64, 64)
    assert target_window(inference, ["liver"]) == (64, 64, 64)  # a group the model has no patch for
    assert target_window({"patch_size": [64, 64, 64]}, ["hippocampus"]) == (64, 64, 64)  # older checkpoints


def test_windows_per_forward_pass_do_not_change_the_result(tiny_checkpoint):
    image = phantom()
    probs = []
    for batch in (1, 2, 3):  # 1: PyTorch's naive CPU convolution; 2 and 3: oneDNN (README "Training")
        options = InferenceOptions(window=(32, 16, 16), batch_size=batch, probabilities=True)
        result = segment(image, tasks=["mandible"], modality="CT", model=tiny_checkpoint, options=options)
        probs.append(sitk.GetArrayFromImage(result.probabilities["mandible"]))
    assert probs[0].std() > 0
    for other in probs[1:]:
        assert np.abs(probs[0] - other).max() < 1e-4  # float rounding of other convolution algorithms only


def test_groups_trained_at_different_settings_run_in_separate_passes(tmp_path) -> None:
    from conftest import build_checkpoint

    from UniversalSegLib.api import load_model
    from UniversalSegLib.catalog import Catalog

    inference = {"spacing": [1.5, 1.5, 1.5], "patch_size": [64, 64, 64],
                 "group_spacing": {"heart_cine": None, "left_atrium": [1.25, 1.25, 1.25],
                                   "hippocampus": [1.25, 1.25, 1.25]},
                 "group_patch_size": {"heart_cine": [96, 96, 16], "left_atrium": [64, 64, 32],
                                      "hippocampus": [64, 64, 32]}}
    segmenter = load_model(build_checkpoint(tmp_path / "m.pt", inference=inference))
    catalog = Catalog.load()
    rv, myo, la = (catalog.task(t) for t in ("heart_rv_cavity", "heart_lv_myocardium", "left_atrium_cavity"))
    anterior = catalog.task("hippocampus_anterior")
    passes = segmenter._passes([la, rv], [myo], InferenceOptions())
    assert [(p[0], p[1], p[2], p[3]) for p in passes] == [
        ([la], [], (1.25, 1.25, 1.25), (64, 64, 32)), ([rv], [myo], None, (96, 96, 16))]
    together = segmenter._passes([la, anterior], [], InferenceOptions())  # trained alike: one pass
    assert len(together) == 1 and together[0][2] == (1.25, 1.25, 1.25)
    window = segmenter._passes([la, rv], [], InferenceOptions(window=(32, 32, 32)))  # spacing still differs
    assert [p[3] for p in window] == [(32, 32, 32)] * 2 and [p[2] for p in window] == [(1.25, 1.25, 1.25), None]

    image = phantom()  # both passes end on the input grid, label values in the order asked
    result = segmenter.run(image, [la, rv], catalog.modality("cine-MR"), 0, InferenceOptions(probabilities=True))
    assert result.labels.GetSize() == image.GetSize() and set(result.probabilities) == {la.id, rv.id}
    labels = sitk.GetArrayFromImage(result.labels)
    for value, task in enumerate([la, rv], start=1):
        prob = sitk.GetArrayFromImage(result.probabilities[task.id])
        assert prob.shape == labels.shape
        assert np.all(prob[labels == value] >= 0.5)


def test_joint_largest_piece_drops_a_false_blob_larger_than_the_true_label():
    from UniversalSegLib.catalog import Catalog
    from UniversalSegLib.inference import Segmenter

    tasks = Catalog.load().group("heart_cine")  # RV cavity, LV myocardium, LV cavity: marked keep_largest_joint
    assert [t.keep_largest_joint for t in tasks] == [True, True, True]
    labels = np.zeros((6, 40, 60), np.uint8)
    labels[1:5, 10:20, 5:15] = 1  # RV beside the LV wall
    labels[1:5, 8:22, 15:29] = 2  # myocardium ring
    labels[1:5, 11:19, 18:26] = 3  # LV cavity inside it: 256 voxels
    labels[0:6, 28:38, 45:55] = 3  # a false LV far away, larger (600 voxels)
    image = sitk.GetImageFromArray(labels.astype(np.float32))

    def result(keep_largest: bool | None) -> np.ndarray:
        out = Segmenter._keep_largest(labels.copy(), image, InferenceOptions(keep_largest=keep_largest), tasks)
        return sitk.GetArrayFromImage(out)

    by_catalog = result(None)
    assert (by_catalog == 3).sum() == 256 and not by_catalog[:, 28:, 45:].any()  # the blob, not the LV, went
    assert np.array_equal(by_catalog == 1, labels == 1) and np.array_equal(by_catalog == 2, labels == 2)
    assert (result(False) == 3).sum() == 256 + 600  # --no-keep-largest: nothing removed
