"""Inference policy: how a model is run on each of its tasks, and how well that was validated.

The policy belongs to the model, not to the catalog: a manifest (``MODEL.json`` beside ``MODEL.pt``)
carries an ``inference_policy`` block, written by ``universalseg export`` and read here::

    "inference_policy": {
      "version": 1,
      "tasks": {
        "mandible": {
          "keep_largest": true,            # keep only the largest connected piece
          "keep_largest_joint": false,     # first, the largest piece of the union of the group's joint tasks
          "mirror": {"axes": ["x"], "partner": "mandible"},   # or null: no mirror averaging
          "threshold": 0.5,                # probability threshold, in (0, 1)
          "refine": false,                 # refined by default (segment --refine)
          "validation": {"coarse_dice": 0.857, "refined_dice": null, "source": "validation"},
          "shown": true                    # offered in the panel; only when the default policy's Dice >= 0.5
        }, ...}}

``validation.coarse_dice`` is the validation Dice of the network's result under this policy, ``refined_dice``
that after refinement (``null``: not measured). The default policy's Dice (:attr:`TaskPolicy.dice`) is the
refined one when ``refine`` is on. A model whose manifest has no block (exported before 0.9) is run with the
catalog's values (:func:`build_policy` makes the same block from the catalog and the manifest's figures).
This module needs no torch.

>>> block = {"version": 1, "tasks": {"larynx": {
...     "keep_largest": True, "keep_largest_joint": False, "mirror": {"axes": ["x"], "partner": "larynx"},
...     "threshold": 0.5, "refine": False, "shown": True,
...     "validation": {"coarse_dice": 0.68, "refined_dice": None, "source": "validation"}}}}
>>> policy = validate_policy(block, ["larynx"])
>>> policy.tasks["larynx"].dice, policy.tasks["larynx"].mirror_partner
(0.68, 'larynx')
>>> block["tasks"]["larynx"]["threshold"] = 1.5
>>> validate_policy(block, ["larynx"])
Traceback (most recent call last):
...
UniversalSegLib.policy.PolicyError: model manifest: inference_policy.tasks.larynx.threshold is 1.5, \
not a probability in (0, 1). What to do: set it to the probability the task was validated at, e.g. 0.5.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog, Task
from .errors import CatalogError, CheckpointError

#: The manifest key of the block, and the schema version this UniversalSeg reads and writes.
POLICY_KEY = "inference_policy"
POLICY_VERSION = 1
#: A task is shown in the panel only when its default policy validated at least this Dice.
SHOW_DICE = 0.5
#: The axes a mirror may be averaged over: this version mirrors left-right only (the canonical grid's x).
MIRROR_AXES = ("x",)
_TASK_KEYS = ("keep_largest", "keep_largest_joint", "mirror", "threshold", "refine", "validation", "shown")
_VALIDATION_KEYS = ("coarse_dice", "refined_dice", "source")


class PolicyError(CheckpointError):
    """A manifest's ``inference_policy`` block that this version cannot use; the message names the field."""


@dataclass(frozen=True)
class TaskPolicy:
    """The policy and validation figures of one task (see the module docstring for the fields)."""

    keep_largest: bool = False
    keep_largest_joint: bool = False
    mirror_partner: str | None = None  # the task it becomes in the mirrored image (itself when unpaired)
    mirror_axes: tuple[str, ...] = ()
    threshold: float = 0.5
    refine: bool = False
    coarse_dice: float | None = None
    refined_dice: float | None = None
    source: str = "none"  # where coarse_dice comes from: "validation", "validation during training", "none"
    shown: bool = False

    @property
    def dice(self) -> float | None:
        """Validation Dice of the default policy: refined when ``refine`` is on (``None``: not measured)."""
        return self.refined_dice if self.refine else self.coarse_dice

    def apply(self, task: Task) -> Task:
        """``task`` with this policy's post-processing in place of the catalog's (what inference reads)."""
        return dataclasses.replace(task, keep_largest=self.keep_largest, keep_largest_joint=self.keep_largest_joint,
                                   mirror=self.mirror_partner, refine=self.refine)

    def to_dict(self) -> dict:
        mirror = {"axes": list(self.mirror_axes), "partner": self.mirror_partner} if self.mirror_partner else None
        return {"keep_largest": self.keep_largest, "keep_largest_joint": self.keep_largest_joint, "mirror": mirror,
                "threshold": self.threshold, "refine": self.refine,
                "validation": {"coarse_dice": self.coarse_dice, "refined_dice": self.refined_dice,
                               "source": self.source},
                "shown": self.shown}


@dataclass(frozen=True)
class InferencePolicy:
    """A validated ``inference_policy`` block: one :class:`TaskPolicy` per task of the model."""

    tasks: dict[str, TaskPolicy]
    version: int = POLICY_VERSION

    def apply(self, task: Task) -> Task:
        """``task`` as this model runs it; a task the block does not name is returned unchanged."""
        policy = self.tasks.get(task.id)
        return policy.apply(task) if policy is not None else task

    def threshold(self, task_id: str, default: float = 0.5) -> float:
        policy = self.tasks.get(task_id)
        return policy.threshold if policy is not None else default

    def to_dict(self) -> dict:
        return {"version": self.version, "tasks": {tid: p.to_dict() for tid, p in self.tasks.items()}}


def _fail(where: str, field: str, problem: str, hint: str) -> PolicyError:
    return PolicyError(f"{where}: {POLICY_KEY}{field} {problem}", hint)


def _keys(raw: dict, allowed: Sequence[str], where: str, field: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use only {', '.join(allowed)}"
            raise _fail(where, f"{field}.{key}", "is not a field of the policy", hint)
    for key in allowed:
        if key not in raw:
            raise _fail(where, f"{field}.{key}", "is missing",
                        "add it (re-export the model with `universalseg export` to write a complete block)")


def _bool(raw: dict, key: str, where: str, field: str) -> bool:
    if not isinstance(raw[key], bool):
        raise _fail(where, f"{field}.{key}", f"is {raw[key]!r}, not true or false", "write true or false")
    return raw[key]


def _dice(raw: dict, key: str, where: str, field: str) -> float | None:
    value = raw[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise _fail(where, f"{field}.{key}", f"is {value!r}, not a Dice in [0, 1] or null",
                    "write the validation Dice (from `universalseg evaluate`), or null where it was not measured")
    return float(value)


def _task(tid: str, raw: Any, where: str) -> TaskPolicy:
    field = f".tasks.{tid}"
    if not isinstance(raw, dict):
        raise _fail(where, field, f"is {type(raw).__name__}, not an object", "give an object with "
                    + ", ".join(_TASK_KEYS))
    _keys(raw, _TASK_KEYS, where, field)
    threshold = raw["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise _fail(where, f"{field}.threshold", f"is {threshold!r}, not a probability in (0, 1)",
                    "set it to the probability the task was validated at, e.g. 0.5")
    mirror, partner, axes = raw["mirror"], None, ()
    if mirror is not None:
        if not isinstance(mirror, dict):
            raise _fail(where, f"{field}.mirror", f"is {mirror!r}", 'give null or {"axes": ["x"], "partner": TASK}')
        _keys(mirror, ("axes", "partner"), where, f"{field}.mirror")
        axes = tuple(mirror["axes"]) if isinstance(mirror["axes"], list) else ()
        if not axes or any(a not in MIRROR_AXES for a in axes):
            raise _fail(where, f"{field}.mirror.axes", f"is {mirror['axes']!r}",
                        f"this version averages over {list(MIRROR_AXES)} (left-right) only; or set mirror to null")
        partner = mirror["partner"]
        if not isinstance(partner, str) or not partner:
            raise _fail(where, f"{field}.mirror.partner", f"is {partner!r}",
                        f"name the task {tid} becomes in the mirrored image ('{tid}' itself when unpaired)")
    validation = raw["validation"]
    if not isinstance(validation, dict):
        raise _fail(where, f"{field}.validation", f"is {validation!r}, not an object",
                    'give {"coarse_dice": D, "refined_dice": D or null, "source": "validation"}')
    _keys(validation, _VALIDATION_KEYS, where, f"{field}.validation")
    source = validation["source"]
    if not isinstance(source, str) or not source:
        raise _fail(where, f"{field}.validation.source", f"is {source!r}",
                    "say where coarse_dice comes from: validation, validation during training, or none")
    policy = TaskPolicy(
        keep_largest=_bool(raw, "keep_largest", where, field),
        keep_largest_joint=_bool(raw, "keep_largest_joint", where, field),
        mirror_partner=partner, mirror_axes=axes, threshold=float(threshold), refine=_bool(raw, "refine", where, field),
        coarse_dice=_dice(validation, "coarse_dice", where, f"{field}.validation"),
        refined_dice=_dice(validation, "refined_dice", where, f"{field}.validation"),
        source=source, shown=_bool(raw, "shown", where, field))
    if policy.shown and (policy.dice is None or policy.dice < SHOW_DICE):
        measured = "refined_dice" if policy.refine else "coarse_dice"
        raise _fail(where, f"{field}.shown", f"is true but the default policy's {measured} is {policy.dice}",
                    f"show only tasks validated at Dice >= {SHOW_DICE} (set shown to false), or fix the figure")
    return policy


def validate_policy(block: Any, task_ids: Sequence[str] | None = None, where: str = "model manifest"
                    ) -> InferencePolicy:
    """Check an ``inference_policy`` block and return it typed; :class:`PolicyError` names the wrong field.

    With ``task_ids`` (the model's), every one must have an entry and no other task may.
    """
    if not isinstance(block, dict):
        raise _fail(where, "", f"is {type(block).__name__}, not an object", "re-export the model")
    version = block.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(where, ".version", f"is {version!r}, not an integer",
                    f"write the schema version (this UniversalSeg writes {POLICY_VERSION})")
    if version > POLICY_VERSION:
        raise _fail(where, ".version", f"is {version}, newer than this UniversalSeg reads ({POLICY_VERSION})",
                    "update UniversalSeg, or use a model exported for this version")
    _keys(block, ("version", "tasks"), where, "")
    if not isinstance(block["tasks"], dict):
        raise _fail(where, ".tasks", "is not an object", "give one entry per task id of the model")
    tasks = {str(tid): _task(str(tid), raw, where) for tid, raw in block["tasks"].items()}
    for tid, policy in tasks.items():
        partner = tasks.get(policy.mirror_partner) if policy.mirror_partner else None
        if policy.mirror_partner and partner is None:
            raise _fail(where, f".tasks.{tid}.mirror.partner", f"is '{policy.mirror_partner}', a task with no entry",
                        "name a task of the model (its own id when unpaired), or set mirror to null")
        if policy.mirror_partner and partner is not None and partner.mirror_partner != tid:
            raise _fail(where, f".tasks.{tid}.mirror.partner", f"is '{policy.mirror_partner}', whose mirror is not "
                        f"'{tid}'", f"pair the two tasks both ways, use '{tid}' for an unpaired structure, or null")
    if task_ids is not None:
        missing = [t for t in task_ids if t not in tasks]
        extra = [t for t in tasks if t not in task_ids]
        if missing:
            raise _fail(where, ".tasks", f"has no entry for {', '.join(missing)}",
                        "add an entry for every task in task_ids (re-export the model with `universalseg export`)")
        if extra:
            raise _fail(where, ".tasks", f"names {', '.join(extra)}, which the model was not trained for",
                        "remove those entries, or export the model that has them")
    return InferencePolicy(tasks, version)


def policy_of(manifest: dict, where: str = "model manifest") -> InferencePolicy | None:
    """The validated block of ``manifest`` (checked against its ``task_ids``), ``None`` when it has none."""
    if POLICY_KEY not in manifest:
        return None
    task_ids = manifest.get("task_ids")
    return validate_policy(manifest[POLICY_KEY], task_ids if isinstance(task_ids, list) else None, where)


def load_policy(model: str | Path, task_ids: Sequence[str] | None = None) -> InferencePolicy | None:
    """The policy in the manifest beside weights ``model`` (``X.json`` for ``X.pt``); ``None`` without one.

    Also checks the manifest's ``requires_universalseg``. ``task_ids``: those of the loaded weights.
    """
    from . import check_manifest_version

    path = Path(model).with_suffix(".json")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read model manifest {path} ({exc})", "re-export the model") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"model manifest {path} is not a JSON object", "re-export the model")
    check_manifest_version(manifest, f"model manifest {path}")
    if POLICY_KEY not in manifest:
        return None
    return validate_policy(manifest[POLICY_KEY], task_ids, f"model manifest {path}")


def _task_of(catalog: Catalog, label: str) -> str | None:
    try:
        return catalog.task(label).id
    except CatalogError:
        return None


def build_policy(manifest: dict, catalog: Catalog, overrides: dict[str, dict] | None = None) -> dict:
    """An ``inference_policy`` block for ``manifest``'s tasks: the catalog's policy (changed by ``overrides``,
    task id -> fields) with the figures of the manifest's ``validation`` reports (a report with a
    ``refinement`` gives ``refined_dice``), else of ``validation_during_training``."""
    coarse: dict[str, tuple[float, str]] = {}
    refined: dict[str, float] = {}
    during = (manifest.get("validation_during_training") or {}).get("dice_per_label") or {}
    for key, value in during.items():  # "dataset/Label"
        tid = _task_of(catalog, key.partition("/")[2])
        if tid is not None and value is not None:
            coarse[tid] = (float(value), "validation during training")
    for report in (manifest.get("validation") or {}).values():
        for label, figures in (report.get("labels") or {}).items():
            tid = _task_of(catalog, label)
            if tid is None or (figures or {}).get("dice") is None:
                continue
            if report.get("refinement"):
                refined[tid] = float(figures["dice"])
            else:
                coarse[tid] = (float(figures["dice"]), "validation")
    tasks: dict[str, dict] = {}
    task_ids = manifest.get("task_ids") or []
    for task_id in task_ids:
        try:
            task = catalog.task(task_id)
        except CatalogError:
            task = None
        entry = {"keep_largest": bool(task and task.keep_largest),
                 "keep_largest_joint": bool(task and task.keep_largest_joint),
                 "mirror": ({"axes": list(MIRROR_AXES), "partner": task.mirror}
                            if task and task.mirror in task_ids else None),  # a partner the model has
                 "threshold": 0.5, "refine": bool(task and task.refine)}
        entry.update((overrides or {}).get(task_id, {}))
        value, source = coarse[task_id] if task_id in coarse else (None, "none")
        figures = {"coarse_dice": value, "refined_dice": refined.get(task_id), "source": source}
        default = figures["refined_dice"] if entry["refine"] else value
        tasks[task_id] = {**entry, "validation": figures, "shown": default is not None and default >= SHOW_DICE}
    return {"version": POLICY_VERSION, "tasks": tasks}
