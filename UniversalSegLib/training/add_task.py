"""Add a structure to a trained model by learning its task prior only (``universalseg add-task``, issue 30).

The parent's weights stay frozen: the new task gets one new row in the task pool of each of the five fusion
points (inserted before the null token, whose vector is kept), and, where the modality has no prior in the model
(not even through its catalog fallback), one new modality row. Only those rows are trained. The child model marks
the task as *added* (``inference["added_tasks"]``): inference runs it in a pass of its own and never passes it as
context to the other tasks, so every old task sees exactly the priors it saw in the parent and its outputs are
bit-identical (Testing/test_add_task.py checks it).

Data: ``DIR/images`` and ``DIR/labels`` with the same file names (NIfTI/NRRD; any non-zero voxel, or ``label``,
is the structure), or a ``DIR/dataset.json`` as the shared sets have (the label by value, else by name). A
held-out part of the cases (hash of the case id, as the training splits) gives the validation Dice written into
the new manifest, through the run-time inference path.

>>> add_task("liver", "MR-T2", "../shared/data/mri_abdomen_chaos", "liver.pt", iterations=40)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Catalog, Code, Modality, Task, normalise
from ..errors import CatalogError, InputError
from ..policy import POLICY_KEY, validate_policy
from ..volume import file_sha256
from .data import assign_split

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GRID_TOLERANCE = 1e-3  # relative; masks must lie on their image's grid
Progress = Callable[[int, int, float], None]  # (iteration, total, loss)


@dataclass
class CaseData:
    """One image with the binary mask of the new structure (both on the image's own grid)."""

    id: str
    image: Path
    label: Path
    value: int | None  # the label value of the structure; None: every non-zero voxel


@dataclass
class AddTaskReport:
    """What :func:`add_task` did: the manifest written and the figures behind it."""

    manifest: dict
    task_id: str
    dice: float | None
    dice_per_case: dict[str, float] = field(default_factory=dict)
    untrained_dice: float | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- data
def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_cases(data: str | Path, name: str, label: int | None = None, catalog: Catalog | None = None
               ) -> tuple[list[CaseData], dict]:
    """The cases of ``data`` and a description of the dataset (name, modality, licence, source, label)."""
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"data folder '{folder}' does not exist" if not folder.exists() else
                         f"data path '{folder}' is not a folder",
                         "give a folder with images/ and labels/ (same file names), or with a dataset.json")
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        return _from_dataset_json(folder, meta_path, name, label, catalog or Catalog.load())
    missing = [sub for sub in ("images", "labels") if not (folder / sub).is_dir()]
    if missing:
        raise InputError(f"data folder '{folder}' has no {' and no '.join(f'{m}/' for m in missing)} folder "
                         "(and no dataset.json)",
                         "put the images in DIR/images and the masks, with the same file names, in DIR/labels")
    images = sorted(p for p in (folder / "images").iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise InputError(f"'{folder / 'images'}' holds no NIfTI or NRRD image", "add .nii.gz or .nrrd files")
    cases = []
    for image in images:
        mask = folder / "labels" / image.name
        if not mask.is_file():
            raise InputError(f"image '{image.name}' has no mask '{mask}'",
                             "give every image a mask of the same file name in labels/, or remove the image")
        cases.append(CaseData(_stem(image), image, mask, label))
    info = {"name": folder.name, "modality": None, "licence": "not stated (user data)", "source": str(folder),
            "label": label, "layout": "images/labels"}
    return cases, info


def _from_dataset_json(folder: Path, meta_path: Path, name: str, label: int | None, catalog: Catalog
                       ) -> tuple[list[CaseData], dict]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (ValueError, KeyError, AttributeError) as err:
        raise InputError(f"{meta_path} is not a dataset.json with a 'labels' map ({err})",
                         'fix it, e.g. "labels": {"1": "Liver"}') from None
    if label is None:
        wanted = {normalise(name)}
        try:
            task = catalog.task(name)
            wanted |= {normalise(k) for k in (task.id, task.name, *task.aliases)}
        except CatalogError:
            pass
        matches = [v for v, n in labels.items() if normalise(n) in wanted]
        if len(matches) != 1:
            raise InputError(f"{meta_path} has no label named '{name}' (labels: "
                             f"{', '.join(f'{v} {n}' for v, n in labels.items())})",
                             "pass --label VALUE to choose the label")
        label = matches[0]
    elif label not in labels:
        raise InputError(f"label {label} is not in {meta_path} (labels: {', '.join(map(str, labels))})",
                         "pass one of its label values with --label")
    cases = []
    for i, rec in enumerate(meta.get("cases") or meta.get("training") or []):
        present = rec.get("present_labels")
        if present is not None and label not in [int(v) for v in present]:
            continue  # not annotated in this case: unknown, not background
        cid = str(rec.get("id", f"case{i}"))
        image, mask = folder / rec["image"], folder / rec["label"]
        for what, path in (("image", image), ("label", mask)):
            if not path.is_file():
                raise InputError(f"case {cid}: {what} file '{path}' does not exist", f"fix {meta_path}")
        cases.append(CaseData(cid, image, mask, label))
    info = {"name": folder.name, "modality": meta.get("modality"), "licence": meta.get("license") or
            meta.get("licence") or "not stated", "source": meta.get("source"), "label": label,
            "label_name": labels[label], "layout": "dataset.json"}
    return cases, info


def read_case(case: CaseData) -> tuple[sitk.Image, sitk.Image]:
    """The image and the binary mask (uint8) of one case; masks on another grid or empty are refused."""
    image, mask = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.label))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"case {case.id}: image '{case.image}' is not a single-channel 3D volume",
                         "give 3D scalar images (one file per image)")
    same = (image.GetSize() == mask.GetSize()
            and np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=GRID_TOLERANCE)
            and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=GRID_TOLERANCE * max(image.GetSpacing()))
            and np.allclose(image.GetDirection(), mask.GetDirection(), atol=GRID_TOLERANCE))
    if not same:
        spacings = [tuple(round(s, 3) for s in x.GetSpacing()) for x in (mask, image)]
        raise InputError(f"case {case.id}: mask '{case.label}' is on another grid than its image (size "
                         f"{mask.GetSize()} vs {image.GetSize()}, spacing {spacings[0]} vs {spacings[1]})",
                         "resample the mask onto its image's grid (nearest neighbour), or export both again")
    array = sitk.GetArrayViewFromImage(mask)
    binary = (array == case.value) if case.value is not None else (array != 0)
    if not binary.any():
        what = f"no voxel of label {case.value}" if case.value is not None else "no foreground voxel"
        raise InputError(f"case {case.id}: mask '{case.label}' is empty ({what})",
                         "remove the case, or choose the label that holds the structure (--label)")
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(image)
    return image, out


# ---------------------------------------------------------------------------------------------- task
def resolve_task(name: str, catalog: Catalog, code: str | None = None) -> tuple[Task, bool]:
    """The catalog's task for ``name`` (id, name or alias), else a new one with ``code`` (``SCHEME^VALUE^MEANING``)
    or unknown terminology; the bool says whether the catalog knows it."""
    try:
        return catalog.task(name), True
    except CatalogError:
        pass
    tid = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not tid or not tid[0].isalpha():
        raise InputError(f"task name '{name}' gives no usable id", "start the name with a letter, e.g. 'gallbladder'")
    type_code = parse_code(code) if code else Code("", "", name)
    task = Task(tid, name, f"task:{tid}", (), (200, 200, 60), Code("SCT", "123037004", "Anatomical Structure"),
                type_code, None, None, None, ())
    return task, False


def parse_code(code: str) -> Code:
    """``"SCT^28231008^Gallbladder"`` -> :class:`Code`."""
    parts = code.split("^")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InputError(f"terminology code '{code}' is not SCHEME^VALUE^MEANING",
                         "give it as in Slicer terminology files, e.g. SCT^28231008^Gallbladder")
    return Code(*(p.strip() for p in parts))


def _modality_row(modality: Modality, modality_ids: Sequence[str], catalog: Catalog) -> int | None:
    current: Modality | None = modality
    while current is not None:
        if current.id in modality_ids:
            return list(modality_ids).index(current.id)
        current = catalog.modalities.get(current.fallback) if current.fallback else None
    return None


# ---------------------------------------------------------------------------------------------- model
def grow_model(loaded, new_modality: bool):
    """A copy of ``loaded.model`` with one more task row (before the null token) and, if asked, one more
    modality row; the old rows, the null token and every other weight are copied exactly."""
    import torch

    from ..models import HermesNet

    parent = loaded.model
    cfg = replace(parent.config, num_tasks=parent.config.num_tasks + 1,
                  num_modalities=parent.config.num_modalities + int(new_modality))
    child = HermesNet(cfg)
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    for fusion in (f"{n}." for n in ("prior_init_fuse_2", "prior_init_fuse_3", "prior_init_fuse_4",
                                     "prior_fuse_5", "prior_fuse_6")):
        rows = state[fusion + "task_prior"]
        init = rows[:-1].mean(dim=0, keepdim=True)  # the mean of the known tasks: a generic structure
        state[fusion + "task_prior"] = torch.cat([rows[:-1], init, rows[-1:]])
        if new_modality:
            mods = state[fusion + "modality_prior"]
            state[fusion + "modality_prior"] = torch.cat([mods, mods.mean(dim=0, keepdim=True)])
    if new_modality:  # the auxiliary modality head gets an output for it (unused at inference)
        w, b = state["mod_out.classifier.fc2.weight"], state["mod_out.classifier.fc2.bias"]
        state["mod_out.classifier.fc2.weight"] = torch.cat([w, torch.zeros_like(w[:1])])
        state["mod_out.classifier.fc2.bias"] = torch.cat([b, torch.zeros_like(b[:1])])
    child.load_state_dict(state, strict=True)
    return child.eval()


def _trainable(child, task_row: int, modality_row: int | None) -> list:
    """Enable gradients on the task (and new modality) pools only, masked to the new rows."""
    import torch

    for p in child.parameters():
        p.requires_grad_(False)
    params = []
    for fusion in child.fusions:
        params.append(fusion.task_prior.requires_grad_(True))
        mask = torch.zeros_like(fusion.task_prior)
        mask[task_row] = 1
        fusion.task_prior.register_hook(lambda g, m=mask: g * m)
        if modality_row is not None:
            params.append(fusion.modality_prior.requires_grad_(True))
            mmask = torch.zeros_like(fusion.modality_prior)
            mmask[modality_row] = 1
            fusion.modality_prior.register_hook(lambda g, m=mmask: g * m)
    return params


def _crop(image: np.ndarray, mask: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
          foreground: np.ndarray | None, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """A random (z, y, x) crop of ``patch``, centred on a foreground voxel when ``foreground`` is given."""
    need = [max(0, p - s) for p, s in zip(patch, image.shape, strict=True)]
    if any(need):
        widths = [(n // 2, n - n // 2) for n in need]
        image = np.pad(image, widths, constant_values=pad)
        mask = np.pad(mask, widths)
        if foreground is not None:
            foreground = foreground + np.array([w[0] for w in widths])
    starts = []
    for axis, (p, s) in enumerate(zip(patch, image.shape, strict=True)):
        if foreground is not None:
            centre = int(foreground[axis])
            starts.append(int(np.clip(centre - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p)))
        else:
            starts.append(int(rng.integers(0, s - p + 1)))
    sl = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
    return image[sl], mask[sl]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ---------------------------------------------------------------------------------------------- main
def add_task(name: str, modality: str, data: str | Path, output: str | Path, *, parent: str | Path | None = None,
             label: int | None = None, code: str | None = None, iterations: int = 60, overwrite: bool = False,
             spacing: Sequence[float] | None = None, patch: Sequence[int] | None = None, val_fraction: float = 0.2,
             split: tuple[Sequence[str], Sequence[str]] | None = None, lr: float = 1e-2, batch_size: int = 2,
             seed: int = 0, measure_untrained: bool = False, catalog: Catalog | None = None,
             progress: Progress | None = None) -> AddTaskReport:
    """Train the prior of a new task ``name`` on ``data`` with ``parent`` frozen; write ``output`` + manifest.

    ``spacing`` (x, y, z mm; default: the data's median spacing, at least 1.5 mm) and ``patch`` (x, y, z, multiples
    of 16; default: the median resampled size, rounded up to 16, at most 96 x 96 x 48) are the grid and window the
    task is trained and run at. ``split`` (train ids, validation ids) replaces the hash split of ``val_fraction``.
    """
    import torch

    from ..api import DEFAULT_MODEL
    from ..inference import InferenceOptions, Segmenter
    from ..model_tasks import model_policy
    from ..models import LoadedModel, load_checkpoint, save_checkpoint
    from ..preprocess import canonical_grid, normalise, to_grid
    from ..safe_write import atomic_output, check_outputs
    from .export import export_model, usage_terms

    started = time.perf_counter()
    catalog = catalog or Catalog.load()
    parent_path = Path(parent) if parent is not None else DEFAULT_MODEL
    output = Path(output)
    if iterations < 1:
        raise InputError(f"--iterations {iterations} is not a positive number", "use for example 60")
    if output.suffix != ".pt":
        raise InputError(f"output '{output}' does not end in .pt", "name the new model like NEW_MODEL.pt")
    task, in_catalog = resolve_task(name, catalog, code)
    mod = catalog.modality(modality)
    cases, info = find_cases(data, name, label, catalog)
    if len(cases) < 2:
        raise InputError(f"'{data}' has {len(cases)} usable case(s) of '{name}'",
                         "give at least 2 (one is held out for the validation Dice)")
    parent_manifest_path = parent_path.with_suffix(".json")
    inputs = [parent_path, parent_manifest_path, *(c.image for c in cases), *(c.label for c in cases)]
    check_outputs([output, output.with_suffix(".json")], inputs, overwrite)
    loaded = load_checkpoint(parent_path)
    if task.id in loaded.task_ids:
        raise InputError(f"the model '{parent_path.name}' already has a task '{task.id}'",
                         "choose another --name, or start from a model without it (--from)")
    parent_manifest: dict = {}
    if parent_manifest_path.is_file():
        parent_manifest = json.loads(parent_manifest_path.read_text(encoding="utf-8"))

    # data: read, check, resample onto the task's grid
    pairs = [(c, *read_case(c)) for c in cases]
    if spacing is None:
        median = np.median([img.GetSpacing() for _, img, _ in pairs], axis=0)
        spacing = tuple(float(max(1.5, round(s, 3))) for s in median)
    spacing = tuple(float(s) for s in spacing)
    prepared = {}
    for c, image, mask in pairs:
        grid = canonical_grid(image, spacing)
        prepared[c.id] = (normalise(to_grid(image, grid), mod.kind),
                          sitk.GetArrayFromImage(to_grid(mask, grid, sitk.sitkNearestNeighbor)).astype(np.float32))
    if patch is None:
        median_size = np.median([a.shape[::-1] for a, _ in prepared.values()], axis=0)  # (x, y, z)
        patch = tuple(int(min(cap, max(32, 16 * math.ceil(s / 16)))) for s, cap in zip(median_size, (96, 96, 48),
                                                                                     strict=True))
    patch = tuple(int(p) for p in patch)
    if any(p % 16 or p < 16 for p in patch):
        raise InputError(f"patch {patch} is not a multiple of 16 on every axis", "use for example 96 96 32")
    if split is not None:
        train_ids, val_ids = list(split[0]), list(split[1])
        unknown = [i for i in (*train_ids, *val_ids) if i not in prepared]
        if unknown:
            raise InputError(f"split names cases that '{data}' lacks: {', '.join(unknown[:5])}", "fix the split")
    else:
        assignment = assign_split([c.id for c in cases], val_fraction)
        train_ids = [c.id for c in cases if assignment[c.id] == "train"]
        val_ids = [c.id for c in cases if assignment[c.id] == "val"]

    # model: grow, freeze, train the new rows
    modality_row = _modality_row(mod, loaded.modality_ids, catalog)
    new_modality = modality_row is None
    child = grow_model(loaded, new_modality)
    task_row = loaded.model.config.num_tasks  # the old null row's index; the null token moves one down
    modality_ids = list(loaded.modality_ids) + ([mod.id] if new_modality else [])
    if new_modality:
        modality_row = len(modality_ids) - 1
    assert modality_row is not None
    task_ids = list(loaded.task_ids) + [task.id]
    group = f"task:{task.id}"
    inference = json.loads(json.dumps(loaded.inference))
    inference.setdefault("group_spacing", {})[group] = list(spacing)
    inference.setdefault("group_patch_size", {})[group] = list(patch)
    inference["added_tasks"] = list(inference.get("added_tasks") or []) + [task.id]
    child_loaded = LoadedModel(child, task_ids, modality_ids, loaded.catalog_version, inference, {}, "universalseg")
    run_task = replace(task, keep_largest=True if not in_catalog else task.keep_largest, mirror=None)
    # the task is run alone: its own pass and grid (inference.py), so the group mates of the catalog do not matter

    def validate() -> dict[str, float]:
        segmenter = Segmenter(child_loaded, device="cpu", name=output.name)
        out = {}
        for c, image, mask in pairs:
            if c.id not in val_ids:
                continue
            result = segmenter.run(image, [run_task], mod, modality_row, InferenceOptions(mirror=False))
            out[c.id] = _dice(sitk.GetArrayViewFromImage(result.labels) == 1, sitk.GetArrayViewFromImage(mask) > 0)
        return out

    untrained = float(np.mean(list(validate().values()))) if measure_untrained and val_ids else None
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = _trainable(child, task_row, modality_row if new_modality else None)
    optimiser = torch.optim.Adam(params, lr=lr)
    window = patch[::-1]  # (z, y, x)
    foreground = {cid: np.argwhere(m > 0) for cid, (_, m) in prepared.items()}
    query = torch.tensor([[task_row, child.null_task]] * batch_size)
    mod_idx = torch.tensor([modality_row] * batch_size)
    child.eval()  # instance norm without running statistics: the same in both modes; no dropout
    last = 0.0
    for it in range(iterations):
        images, masks = [], []
        for _ in range(batch_size):
            cid = train_ids[int(rng.integers(len(train_ids)))]
            img, msk = prepared[cid]
            fg = foreground[cid]
            point = fg[int(rng.integers(len(fg)))] if rng.random() < 0.67 else None
            a, b = _crop(img, msk, window, rng, point, float(img.min()))
            images.append(a)
            masks.append(b)
        x = torch.from_numpy(np.stack(images)[:, None])
        y = torch.from_numpy(np.stack(masks)[:, None])
        logits = child(x, query, mod_idx).logits[:, :1]
        prob = torch.sigmoid(logits)
        inter = (prob * y).sum(dim=(1, 2, 3, 4))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3, 4)) + y.sum(dim=(1, 2, 3, 4)) + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + dice.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        last = float(loss.detach())
        if progress is not None:
            progress(it + 1, iterations, last)
    for p in child.parameters():
        p.requires_grad_(False)
    parent_state = loaded.model.state_dict()
    for fusion_name, fusion in zip(("prior_init_fuse_2", "prior_init_fuse_3", "prior_init_fuse_4", "prior_fuse_5",
                                    "prior_fuse_6"), child.fusions, strict=True):
        old = parent_state[f"{fusion_name}.task_prior"]
        if not (torch.equal(fusion.task_prior[:task_row], old[:-1]) and torch.equal(fusion.task_prior[-1], old[-1])):
            raise RuntimeError("a frozen task prior changed while training the new one")  # a bug, never data
    seconds = time.perf_counter() - started
    per_case = validate() if val_ids else {}
    dice_value = float(np.mean(list(per_case.values()))) if per_case else None

    # write: checkpoint -> export (model + manifest) -> manifest completed with the parent's figures
    dataset_name = info["name"]
    parent_sha = file_sha256(parent_path)
    added = {"name": task.name, "in_catalog": in_catalog, "modality": mod.id,
             "terminology": task.terminology_entry() if in_catalog else (task.type.triplet() if code else None),
             "dataset": dataset_name, "label": info.get("label"), "iterations": iterations, "spacing": list(spacing),
             "patch_size": list(patch), "trained": ["task_prior"] + (["modality_prior"] if new_modality else []),
             "new_modality_prior": new_modality, "train_cases": train_ids, "val_cases": val_ids,
             "val_dice": dice_value, "val_dice_per_case": per_case, "seconds": round(seconds, 1)}
    parent_training = parent_manifest.get("training") or {}
    datasets = list(parent_training.get("datasets") or []) + [
        {"name": dataset_name, "modality": mod.id, "cases": len(train_ids), "val_cases": len(val_ids),
         "licence": info["licence"], "source": info.get("source"), "added_task": task.id}]
    licences = {**(parent_training.get("licences") or {}), dataset_name: info["licence"]}
    metadata = {"datasets": datasets, "licenses": licences, "iterations": iterations,
                "training_seconds": round(seconds, 1), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"),
                "config": {"add_task": {k: v for k, v in added.items() if k not in ("val_dice_per_case",)}},
                "parent": {"file": parent_path.name, "sha256": parent_sha}, "added_tasks": {task.id: added}}
    report = {"labels": {task.id: {"dice": dice_value, "cases": len(per_case)}}, "cases": list(per_case),
              "per_case": per_case}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".ckpt.pt", dir=output.parent)
    os.close(fd)
    try:
        save_checkpoint(tmp_name, child, task_ids=task_ids, modality_ids=modality_ids,
                        catalog_version=loaded.catalog_version or catalog.version, inference=inference,
                        metadata=json.loads(json.dumps(metadata)))
        manifest = export_model(tmp_name, output, evaluation={dataset_name: report},
                                overwrite=overwrite, inputs=tuple(inputs), catalog=catalog)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    tasks_block = dict(model_policy(parent_manifest, catalog).to_dict()["tasks"]) if parent_manifest else {}
    new_entry = manifest[POLICY_KEY]["tasks"][task.id]
    new_entry.update(keep_largest=run_task.keep_largest, keep_largest_joint=False, mirror=None, refine=False)
    new_entry["validation"] = {"coarse_dice": dice_value, "refined_dice": None,
                               "source": "validation" if dice_value is not None else "none"}
    new_entry["shown"] = dice_value is not None and dice_value >= 0.5
    for tid in task_ids[:-1]:
        if tid in tasks_block:
            manifest[POLICY_KEY]["tasks"][tid] = tasks_block[tid]  # the parent's policy, unchanged
    validate_policy(manifest[POLICY_KEY], task_ids, f"the inference policy for {output}")
    manifest["training"]["licences"] = licences
    manifest["training"]["datasets"] = datasets
    manifest["usage"] = usage_terms(licences)
    manifest["validation"] = {**(parent_manifest.get("validation") or {}), **manifest["validation"]}
    manifest["validation_during_training"] = parent_manifest.get("validation_during_training") or \
        manifest["validation_during_training"]
    manifest["parent"] = {"name": parent_manifest.get("name", parent_path.stem), "version":
                          parent_manifest.get("version"), "file": parent_path.name, "sha256": parent_sha}
    manifest["added_tasks"] = {**(parent_manifest.get("added_tasks") or {}), task.id: added}
    with atomic_output(output.with_suffix(".json"), True, inputs) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return AddTaskReport(manifest, task.id, dice_value, per_case, untrained, time.perf_counter() - started)
