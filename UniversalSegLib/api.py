"""The Python API: what the CLI, the Slicer logic and the web front end call.

>>> from UniversalSegLib.api import segment, write_result
>>> result = segment("ct.nii.gz", groups=["Head and neck organs at risk"], modality="CT")  # doctest: +SKIP
>>> write_result(result, "ct_seg.nii.gz")  # doctest: +SKIP
>>> write_dicom(segment("CT_DIR"), "CT_DIR", "ct_seg.dcm", "dicom-seg")  # DICOM SEG or "rtstruct"  # doctest: +SKIP
>>> result.label_of("mandible")  # doctest: +SKIP
7
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from .catalog import Catalog, Modality
from .dicom_out import write_dicom
from .errors import CatalogError, CheckpointError
from .inference import InferenceOptions, Progress, SegmentationResult, Segmenter, _stage
from .policy import load_policy
from .volume import ImageInfo, check_volume, read_image
from .writers import write_result

if TYPE_CHECKING:
    from .profiling import Profile

__all__ = ["DEFAULT_MODEL", "segment", "load_model", "choose_modality", "write_result", "write_dicom",
           "InferenceOptions"]

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "universalseg-small.pt"
CT_MINIMUM_HU = -500.0  # air in a CT is about -1000 HU; MR and PET have no values this low


def load_model(path: str | Path | None = None, device: str = "cpu", catalog: Catalog | None = None,
               backend: str = "torch", threads: int | None = None) -> Segmenter:
    """Load a checkpoint (ours or the original Hermes layout) as a :class:`Segmenter`.

    ``None`` loads the bundled default model. The checkpoint's task ids must all be in the
    catalog, unless it is an original Hermes checkpoint with generic ids. ``backend``: ``"torch"`` (the
    reference), ``"onnx"`` (ONNX Runtime on the CPU, torch-free once the graph is exported and cached, see
    :mod:`UniversalSegLib.onnx_runtime`) or ``"auto"`` (onnx where onnxruntime is installed and the device is the
    CPU; torch, with a note on stderr, if the export fails). ``threads``: ONNX Runtime's intra-op threads.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        hint = ("pass --model PATH with a checkpoint file" if path != DEFAULT_MODEL else
                "the bundled model is missing from this installation: reinstall, or pass --model PATH")
        raise CheckpointError(f"model checkpoint '{path}' does not exist", hint)
    stat = path.stat()
    from .onnx_runtime import choose_backend

    chosen = choose_backend(backend, device)
    manifest = path.with_suffix(".json")  # its inference policy is read at load: an edit must not hit the cache
    changed = stat.st_mtime_ns + (manifest.stat().st_mtime_ns if manifest.is_file() else 0)
    args = (str(path), changed, stat.st_size, device, catalog or Catalog.load())
    if chosen == "onnx":
        try:
            return _load_cached(*args, "onnx", threads)
        except Exception as err:  # auto: an export that fails must not stop the segmentation
            if backend != "auto" or isinstance(err, CheckpointError):
                raise
            import sys

            print(f"note: ONNX Runtime backend unavailable ({err}); using torch", file=sys.stderr)
    return _load_cached(*args, "torch", None)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, _mtime: int, _size: int, device: str, catalog: Catalog, backend: str = "torch",
                 threads: int | None = None) -> Segmenter:
    loaded: Any
    if backend == "onnx":
        from .onnx_runtime import load_hermes

        loaded = load_hermes(path, threads=threads)
    else:
        from .models import load_checkpoint

        loaded = load_checkpoint(path)
    # The manifest beside the weights brings the model's inference policy; old exports: the catalog's.
    policy = load_policy(path, loaded.task_ids) if loaded.source_format == "universalseg" else None
    if loaded.source_format == "universalseg":
        custom = set(loaded.inference.get("added_tasks") or ())  # add-task names the catalog may not know
        unknown = [t for t in loaded.task_ids if not _in_catalog(catalog, t) and t not in custom]
        bad_mod = [m for m in loaded.modality_ids if m not in catalog.modalities]
        if unknown or bad_mod:
            raise CheckpointError(
                f"checkpoint '{path}' (catalog {loaded.catalog_version}) names tasks or modalities this catalog "
                f"({catalog.version}) does not have: {', '.join(unknown + bad_mod)}",
                "update UniversalSeg to a version whose catalog has them, or use a model made for this one",
            )
    return Segmenter(loaded, device=device, name=Path(path).name, policy=policy)


def _in_catalog(catalog: Catalog, task_id: str) -> bool:
    try:
        return catalog.task(task_id).id == task_id
    except CatalogError:
        return False


def choose_modality(catalog: Catalog, image: sitk.Image, info: ImageInfo, explicit: str | None,
                    tasks: Sequence[str] = ()) -> Modality:
    """The modality to use: the one given, else DICOM tags or the file name, else what the tasks and intensities say.

    Raises :class:`CatalogError` asking for ``--modality`` when nothing decides it.
    """
    if explicit:
        return catalog.modality(explicit)
    guessed = catalog.guess_modality(info.dicom_modality, info.description or info.name)
    if guessed is not None:
        return guessed
    looks_ct = float(sitk.GetArrayViewFromImage(image).min()) <= CT_MINIMUM_HU
    candidates: set[str] | None = None
    for key in tasks:
        mods = set(catalog.task(key).modalities)
        candidates = mods if candidates is None else candidates & mods
    if candidates:
        if looks_ct and "CT" in candidates:
            return catalog.modality("CT")
        specific = sorted(c for c in candidates if c != "CT")
        if len(specific) == 1 and not looks_ct:
            return catalog.modality(specific[0])
    elif looks_ct:
        return catalog.modality("CT")
    raise CatalogError(f"cannot tell the modality of '{info.name}'",
                       f"pass --modality (one of {', '.join(catalog.modalities)})")


def segment(
    image: str | Path | sitk.Image,
    *,
    tasks: Sequence[str] = (),
    groups: Sequence[str] = (),
    modality: str | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
    force: bool = False,
    options: InferenceOptions | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    catalog: Catalog | None = None,
    info: ImageInfo | None = None,
    backend: str = "torch",
    profile: Profile | None = None,
) -> SegmentationResult:
    """Segment an image file, DICOM folder or SimpleITK image; the input is never modified.

    ``tasks`` take ids or names; ``groups`` expand in catalog order after them, to the group's tasks
    the model was trained for. With neither,
    every task of the modality that the model knows is segmented. ``info`` (from
    :func:`~UniversalSegLib.volume.read_image`) helps guess the modality of an image passed in memory.
    ``backend``: see :func:`load_model` (the CLI's default is ``"auto"``, this function's the torch reference);
    ``profile`` (:class:`~UniversalSegLib.profiling.Profile`) collects per-stage seconds and memory.
    """
    with _stage(profile, "setup"):
        catalog = catalog or Catalog.load()
    with _stage(profile, "read"):
        if isinstance(image, sitk.Image):
            check_volume(image)
            info = info or ImageInfo(name="image")
        else:
            image, info = read_image(image)
    with _stage(profile, "setup"):
        requested = list(tasks) + [t.id for g in groups for t in catalog.group(g)]
        mod = choose_modality(catalog, image, info, modality, requested)
    with _stage(profile, "load_model"):
        segmenter = load_model(model, device=device, catalog=catalog, backend=backend, threads=threads)
    if tasks or groups:
        named = catalog.resolve(tasks, (), mod.id, force=force) if tasks else []
        grouped = catalog.resolve((), groups, mod.id, force=force) if groups else []
        known = set(segmenter.loaded.task_ids)
        in_model = [t for t in grouped if t.id in known]
        if groups and not in_model:
            raise CatalogError(f"the model knows none of the tasks of {', '.join(groups)}",
                               f"choose other tasks or another model (it knows {', '.join(segmenter.loaded.task_ids)})")
        # Named tasks must be known (checked by the segmenter); a group gives what the model knows of it.
        chosen = list({t.id: t for t in named + in_model}.values())
    else:
        chosen = [t for t in catalog.tasks_for(mod.id) if t.id in segmenter.loaded.task_ids]
        if not chosen:
            raise CatalogError(f"the model knows no task for modality {mod.id}",
                               "name the tasks with --task, or choose another model")
    context = [t for g in dict.fromkeys(t.group for t in chosen) for t in catalog.group(g)]
    if threads and segmenter.backend == "torch":
        import torch

        torch.set_num_threads(threads)
    row = segmenter.modality_row(mod, lambda key: catalog.modality(key))
    if profile is not None:
        profile.info.update(backend=segmenter.backend, model=segmenter.name)
    return segmenter.run(image, chosen, mod, row, options, context=context, progress=progress, cancel=cancel,
                         profile=profile)


def image_checksum(image: sitk.Image) -> str:
    """A checksum of voxel values and geometry, to prove an input was left unchanged."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    digest.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())).encode())
    return digest.hexdigest()
