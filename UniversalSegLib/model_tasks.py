"""What a model can segment, read from its manifest (``MODEL.json`` beside ``MODEL.pt``), without torch.

Each task the model was trained on comes with the modality it was trained and validated on and its validation
Dice under the model's default inference policy: the manifest's ``inference_policy`` block
(:mod:`UniversalSegLib.policy`; the refined Dice where the policy refines the task). A manifest without the
block (exported before 0.9) gets it from the catalog's policy and its ``validation`` reports (a task validated
only during training uses that figure). A task without a figure has ``dice`` ``None``. Tasks the policy does not
show (Dice below :data:`WEAK_DICE`, or none) are *weak*: hidden unless asked for.

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
from .policy import SHOW_DICE, InferencePolicy, build_policy, policy_of, validate_policy

#: The bundled model's manifest.
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "weights" / "universalseg-small.json"
#: Validation Dice below this marks a task weak: hidden by default (the policy's ``shown`` is false).
WEAK_DICE = SHOW_DICE
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
    terminology: str | None = None  # Slicer terminology entry; a task added with an unknown name: its --code or None
    added: bool = False  # added to the model by `universalseg add-task`

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


def model_policy(manifest: dict, catalog: Catalog | None = None, where: str = "model manifest") -> InferencePolicy:
    """The manifest's validated ``inference_policy`` block; for a manifest without one (exported before 0.9),
    the same block made from the catalog's policy and the manifest's validation reports."""
    policy = policy_of(manifest, where)
    if policy is None:
        policy = validate_policy(build_policy(manifest, catalog or Catalog.load()), where=f"{where} (catalog policy)")
    return policy


def model_tasks(model: str | Path | dict | None = None, catalog: Catalog | None = None) -> list[ModelTask]:
    """The tasks of a model (manifest dict, model/manifest path, ``None``: bundled) in the model's order."""
    catalog = catalog or Catalog.load()
    manifest = model if isinstance(model, dict) else read_manifest(model)
    where = "model manifest" if isinstance(model, dict) else f"model manifest {manifest_path(model)}"
    policy = model_policy(manifest, catalog, where)
    trained = {d.get("name"): d.get("modality") for d in (manifest.get("training") or {}).get("datasets") or []}
    modality: dict[str, str] = {}
    for name, mod in trained.items():
        entry = catalog.datasets.get(name)
        for tid in (entry.labels.values() if entry else ()):
            modality.setdefault(tid, mod or entry.modality)
    during = (manifest.get("validation_during_training") or {}).get("dice_per_label") or {}
    for key, value in during.items():  # "dataset/Label"
        dataset, _, label = key.partition("/")
        tid = _task_of(catalog, label)
        if tid is not None and value is not None and dataset in trained:
            modality.setdefault(tid, trained[dataset])
    for name, report in (manifest.get("validation") or {}).items():
        for label, figures in (report.get("labels") or {}).items():
            tid = _task_of(catalog, label)
            known = name in trained or name in catalog.datasets
            if tid is not None and (figures or {}).get("dice") is not None and known:
                modality.setdefault(tid, trained.get(name) or catalog.datasets[name].modality)
    added = manifest.get("added_tasks") or {}  # tasks `universalseg add-task` added, maybe unknown to the catalog
    out = []
    for tid in manifest["task_ids"]:
        extra = added.get(tid) if isinstance(added.get(tid), dict) else None
        try:
            task = catalog.task(tid)
            name, terminology = task.name, task.terminology_entry()
        except CatalogError:
            if extra is None:
                continue  # a task of a newer catalog: this version cannot write it
            name, terminology = str(extra.get("name") or tid), extra.get("terminology")
        if extra is not None:
            modality.setdefault(tid, extra.get("modality"))
        entry = policy.tasks.get(tid)
        value = entry.dice if entry is not None else None
        source = "none" if entry is None or value is None else "validation (refined)" if entry.refine else entry.source
        out.append(ModelTask(tid, name, modality.get(tid), value, weak=entry is None or not entry.shown,
                             source=source, terminology=terminology, added=extra is not None))
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
