"""What a model can segment, read from its manifest (``MODEL.json`` beside ``MODEL.pt``), without torch.

Each task the model was trained on comes with the modality it was trained and validated on and its validation
Dice under the default inference policy (the ``validation`` reports of ``universalseg export --evaluation``:
catalog keep-largest, mirror averaging; a refined report when the catalog refines the task by default). A task
validated only during training uses that figure; one with no figure at all has ``dice`` ``None``. Tasks below
:data:`WEAK_DICE` (or without a figure) are *weak*: hidden unless asked for.

>>> tasks = {t.id: t for t in model_tasks()}
>>> tasks["mandible"].modality, round(tasks["mandible"].dice, 2), tasks["mandible"].weak
('CT', 0.86, False)
>>> tasks["brain_tumour_necrosis"].weak, tasks["brain_tumour_necrosis"].source
(True, 'validation during training')
>>> [t.id for t in offered_tasks("CT")] == [t.id for t in offered_tasks("CT", show_weak=True)]
True
>>> len(offered_tasks("CT"))
7
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog
from .errors import CatalogError, CheckpointError

#: The bundled model's manifest.
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "weights" / "universalseg-small.json"
#: Validation Dice below this marks a task weak: hidden by default.
WEAK_DICE = 0.5
WEAK_WARNING = ("Weak tasks validated below Dice {threshold:.2f} (or were not validated): their results are often "
                "wrong or empty. Use them only to try, and check every result.")


@dataclass(frozen=True)
class ModelTask:
    """One task as a model offers it; ``in_model`` is False for catalog entries the model was not trained on."""

    id: str
    name: str
    modality: str | None  # the modality it was trained and validated on (None: not in the model)
    dice: float | None  # validation Dice of the default policy (None: no figure)
    weak: bool
    in_model: bool = True
    source: str = "validation"  # which manifest figure gave ``dice``

    def label(self) -> str:
        """The task-list label: ``"Mandible (Dice 0.86)"``, ``"... (not validated)"``, ``"... (not in the model)"``."""
        if not self.in_model:
            return f"{self.name} (not in the model)"
        return f"{self.name} (Dice {self.dice:.2f})" if self.dice is not None else f"{self.name} (not validated)"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "modality": self.modality, "dice": self.dice, "weak": self.weak,
                "in_model": self.in_model, "dice_source": self.source}


def manifest_path(model: str | Path | None = None) -> Path:
    """The manifest of ``model``: ``X.json`` beside ``X.pt``, the file itself if a ``.json``; ``None``: bundled."""
    if model is None:
        return DEFAULT_MANIFEST
    path = Path(model)
    return path if path.suffix == ".json" else path.with_suffix(".json")


def read_manifest(model: str | Path | None = None) -> dict:
    """The manifest of ``model`` (see :func:`manifest_path`) as a dict."""
    path = manifest_path(model)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"no model manifest at {path} ({exc.strerror or exc})",
                              "pass a model exported with `universalseg export` (it writes MODEL.json beside "
                              "MODEL.pt), or the manifest itself") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model manifest {path} is not valid JSON (line {exc.lineno})",
                              "re-export the model") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("task_ids"), list):
        raise CheckpointError(f"model manifest {path} has no task_ids", "re-export the model")
    from . import check_manifest_version

    check_manifest_version(manifest, f"model manifest {path}")
    return manifest


def _task_of(catalog: Catalog, label: str) -> str | None:
    try:
        return catalog.task(label).id
    except CatalogError:
        return None


def model_tasks(model: str | Path | dict | None = None, catalog: Catalog | None = None) -> list[ModelTask]:
    """The tasks of a model (manifest dict, model/manifest path, ``None``: bundled) in the model's order."""
    catalog = catalog or Catalog.load()
    manifest = model if isinstance(model, dict) else read_manifest(model)
    trained = {d.get("name"): d.get("modality") for d in manifest.get("training", {}).get("datasets", [])}
    modality: dict[str, str] = {}
    for name, mod in trained.items():
        entry = catalog.datasets.get(name)
        for tid in (entry.labels.values() if entry else ()):
            modality.setdefault(tid, mod or entry.modality)
    dice: dict[str, tuple[float, str]] = {}
    during = manifest.get("validation_during_training", {}).get("dice_per_label", {})
    for key, value in during.items():  # "dataset/Label"
        dataset, _, label = key.partition("/")
        tid = _task_of(catalog, label)
        if tid is not None and value is not None:
            dice[tid] = (float(value), "validation during training")
            if dataset in trained:
                modality.setdefault(tid, trained[dataset])
    refined_by_default = {t.id for t in catalog.tasks if t.refine}
    best: dict[str, tuple[bool, float]] = {}  # task -> (report matches the default refinement, dice)
    for name, report in manifest.get("validation", {}).items():
        refined = bool(report.get("refinement"))
        for label, figures in report.get("labels", {}).items():
            tid = _task_of(catalog, label)
            if tid is None or figures.get("dice") is None:
                continue
            matches = refined == (tid in refined_by_default)
            if tid not in best or (matches and not best[tid][0]):
                best[tid] = (matches, float(figures["dice"]))
            if name in trained or name in catalog.datasets:
                modality.setdefault(tid, trained.get(name) or catalog.datasets[name].modality)
    for tid, (matches, value) in best.items():
        dice[tid] = (value, "validation" if matches else "validation (other refinement)")
    for tid, policy in manifest.get("task_policy", {}).items():  # a formal per-task block, when a manifest has one
        if isinstance(policy, dict) and policy.get("dice") is not None:
            dice[tid] = (float(policy["dice"]), "task policy")
    out = []
    for tid in manifest["task_ids"]:
        try:
            task = catalog.task(tid)
        except CatalogError:
            continue  # a task of a newer catalog: this version cannot write it
        value, source = dice.get(tid, (None, "none"))
        out.append(ModelTask(task.id, task.name, modality.get(tid), value,
                             weak=value is None or value < WEAK_DICE, source=source))
    return out


def _covers(catalog: Catalog, chosen: str, trained: str | None) -> bool:
    """Whether a task trained on ``trained`` counts for ``chosen``: the same, or ``chosen`` is its fallback prior."""
    current = catalog.modalities.get(trained) if trained else None
    while current is not None:
        if current.id == chosen:
            return True
        current = catalog.modalities.get(current.fallback) if current.fallback else None
    return False


def offered_tasks(modality: str | None = None, show_weak: bool = False, model: str | Path | dict | None = None,
                  catalog: Catalog | None = None, include_catalog: bool = False) -> list[ModelTask]:
    """The tasks to list: the model's, for ``modality`` (id, name or alias), weak ones only with ``show_weak``.

    A task counts for ``modality`` when it was trained on it or on a sequence whose prior it is (MR covers
    MR-T1). ``include_catalog`` appends every other catalog task of ``modality`` with ``in_model`` False.
    """
    catalog = catalog or Catalog.load()
    mid = catalog.modality(modality).id if modality is not None else None
    known = model_tasks(model, catalog)
    chosen = [t for t in known if (mid is None or _covers(catalog, mid, t.modality)) and (show_weak or not t.weak)]
    if include_catalog:
        have = {t.id for t in known}
        chosen += [ModelTask(t.id, t.name, None, None, weak=True, in_model=False, source="none")
                   for t in catalog.tasks_for(mid) if t.id not in have]
    return chosen


def weak_warning() -> str:
    """The warning shown beside the "show weak tasks" toggle."""
    return WEAK_WARNING.format(threshold=WEAK_DICE)
