"""The catalog: the single source of truth for modalities and tasks (structures).

Everything is data in ``catalog.json`` next to this file, in the spirit of SlicerMONAIAuto3DSeg's model
catalog: modalities (with the fallback whose model prior to use), groups, tasks (display name, colour,
SNOMED CT codes as Slicer terminology triplets, aliases such as the label names of public datasets) and
the label maps of the shared benchmark datasets. This module only reads and checks it (stdlib only).

>>> catalog = Catalog.load()
>>> catalog.task("RightParotid").id
'parotid_right'
>>> catalog.modality("t1ce").id
'MR-T1C'
>>> [t.id for t in catalog.resolve(["spleen"], ["Hippocampus"], modality="MR-T1")]
['spleen', 'hippocampus_anterior', 'hippocampus_posterior']
>>> catalog.guess_modality("MR", "Ax T2 FLAIR").id
'MR-FLAIR'
>>> catalog.task("liver").terminology_entry().split("~")[2]
'SCT^10200004^Liver'
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import CatalogError

BUNDLED = Path(__file__).with_name("catalog.json")
#: Slicer context names used in segment terminology strings (``vtkSegment`` tag ``TerminologyEntry``).
#: The DICOM master list: the General Anatomy list lacks e.g. the parotid glands and the hippocampus (issue 24).
SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
KINDS = ("CT", "MR", "PET", "US", "photo")
DICOM_MODALITIES = ("CT", "MR", "PT", "US", "OP")
#: Slice planes a 2D refiner can work on, as anatomy names them (physical axes x, y, z in LPS/RAS order).
PLANES = ("sagittal", "coronal", "axial")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def normalise(key: str) -> str:
    """Lookup form of a name: lower case without spaces, underscores or hyphens.

    >>> normalise("Spinal-Cord"), normalise("RV cavity")
    ('spinalcord', 'rvcavity')
    """
    return re.sub(r"[\s_\-]+", "", key).lower()


def _tokens(text: str) -> list[str]:
    return [tok for tok in re.split(r"[^0-9a-z]+", text.lower()) if tok]


@dataclass(frozen=True)
class Code:
    """A coded concept as in Slicer terminology files: ``Code("SCT", "10200004", "Liver")``."""

    scheme: str
    value: str
    meaning: str

    def triplet(self) -> str:
        """``"SCT^10200004^Liver"``, the form used inside Slicer terminology strings."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class Modality:
    """An image modality; ``kind`` decides intensity normalisation, ``fallback`` the prior to borrow."""

    id: str
    name: str
    kind: str
    dicom_modality: str
    fallback: str | None
    aliases: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Task:
    """One structure to segment.

    >>> task = Catalog.load().task("parotid_left")
    >>> task.applies_to("CT"), task.modifier.meaning, task.to_dict()["group"]
    (True, 'Left', 'Head and neck organs at risk')
    """

    id: str
    name: str
    group: str  # group id
    modalities: tuple[str, ...]
    color: tuple[int, int, int]
    category: Code
    type: Code
    modifier: Code | None
    region: Code | None
    region_modifier: Code | None
    aliases: tuple[str, ...]
    notes: str = ""
    group_name: str = field(default="", compare=False, repr=False)  # display name of ``group``, set by load
    refine: bool = False  # refined by default: refinement measured to help this task (benchmarks/refine_eval.py)
    refine_plane: str = "axial"  # slices a 2D refiner works on: axial, coronal or sagittal (the one measured best)
    keep_largest: bool = False  # keep only the largest connected piece by default: one-piece anatomy, measured to help
    keep_largest_joint: bool = False  # with its group's other flagged tasks: largest piece of their union (touching)
    mirror: str | None = None  # the task it becomes in the left-right mirror image (itself when unpaired); None: no
    # mirror averaging (a mirrored heart is not anatomy; it hurt the oesophagus and the hippocampus, README)

    def applies_to(self, modality_id: str) -> bool:
        """Whether the task is defined for this modality id (exact: ``"MR"`` does not cover ``"MR-T2"``)."""
        return modality_id in self.modalities

    def terminology_entry(self) -> str:
        """Slicer's segment terminology string (7 fields joined by ``~``), as in the ``TerminologyEntry`` tag.

        >>> for part in Catalog.load().task("kidney_left").terminology_entry().split("~"):
        ...     print(part)
        Segmentation category and type - DICOM master list
        SCT^123037004^Anatomical Structure
        SCT^64033007^Kidney
        SCT^7771000^Left
        Anatomic codes - DICOM master list
        ^^
        ^^
        """

        def part(code: Code | None) -> str:
            return code.triplet() if code else "^^"

        return "~".join([SEGMENTATION_CONTEXT, part(self.category), part(self.type), part(self.modifier),
                         ANATOMIC_CONTEXT, part(self.region), part(self.region_modifier)])

    def color_float(self) -> tuple[float, float, float]:
        """Colour scaled to 0-1, as Slicer's segment ``Color``."""
        r, g, b = self.color
        return (r / 255.0, g / 255.0, b / 255.0)

    def to_dict(self) -> dict:
        """JSON-able: id, name, group (display name), group_id, modalities, color, terminology, aliases, refine,
        refine_plane, keep_largest, keep_largest_joint and mirror."""
        codes = {"category": self.category, "type": self.type, "modifier": self.modifier,
                 "region": self.region, "region_modifier": self.region_modifier}
        return {
            "id": self.id, "name": self.name, "group": self.group_name or self.group, "group_id": self.group,
            "modalities": list(self.modalities), "color": list(self.color),
            "terminology": {k: (v.to_dict() if v else None) for k, v in codes.items()},
            "aliases": list(self.aliases), "refine": self.refine, "refine_plane": self.refine_plane,
            "keep_largest": self.keep_largest, "keep_largest_joint": self.keep_largest_joint,
            "mirror": self.mirror,
        }


@dataclass(frozen=True)
class DatasetEntry:
    """A shared dataset: its modality id and label value -> task id."""

    name: str
    modality: str
    labels: dict[int, str] = field(hash=False)


class Catalog:
    """Modalities, groups, tasks and dataset label maps, with lookups that forgive case and separators.

    >>> catalog = Catalog.load()
    >>> catalog.groups()[:2]
    ['Head and neck organs at risk', 'Hippocampus']
    >>> [t.id for t in catalog.group("hippocampus")]
    ['hippocampus_anterior', 'hippocampus_posterior']
    >>> catalog.datasets["mri_cardiac_acdc"].labels[2]
    'heart_lv_myocardium'
    """

    def __init__(self, version: str, modalities: dict[str, Modality], groups: dict[str, tuple[str, str]],
                 tasks: tuple[Task, ...], datasets: dict[str, DatasetEntry]) -> None:
        self.version = version
        self.modalities = modalities
        self.tasks = tasks
        self.datasets = datasets
        self._groups = groups  # id -> (display name, description)
        self._task_keys = {normalise(k): t for t in tasks for k in (t.id, t.name, *t.aliases)}
        self._modality_keys = {normalise(k): m for m in modalities.values()
                               for k in (m.id, m.name, *m.aliases)}
        self._group_keys = {normalise(k): gid for gid, (name, _) in groups.items() for k in (gid, name)}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """Read and check a catalog file; ``None`` gives the bundled ``catalog.json`` (read once, cached)."""
        if path is None:
            return _bundled()
        return _parse(Path(path))

    # ------------------------------------------------------------------ lookups
    def task(self, key: str) -> Task:
        """A task by id, display name or alias (``"RV cavity"``, ``"spinal-cord"``, ``"SpinalCord"``)."""
        found = self._task_keys.get(normalise(key))
        if found is None:
            close = difflib.get_close_matches(normalise(key), list(self._task_keys), n=3, cutoff=0.6)
            ids = list(dict.fromkeys(self._task_keys[c].id for c in close))
            hint = f"did you mean {', '.join(ids)}? " if ids else ""
            hint += "Run `universalseg tasks` to list all tasks"
            raise CatalogError(f"unknown task '{key}'", hint)
        return found

    def modality(self, key: str) -> Modality:
        """A modality by id, name or alias (``"MR-T1"``, ``"T1w"``, ``"late gadolinium"``)."""
        found = self._modality_keys.get(normalise(key))
        if found is None:
            raise CatalogError(f"unknown modality '{key}'", f"use one of {', '.join(self.modalities)}")
        return found

    def groups(self) -> list[str]:
        """Group display names in catalog order."""
        return [name for name, _ in self._groups.values()]

    def group(self, key: str) -> list[Task]:
        """The tasks of a group (by id or display name), in catalog order."""
        gid = self._group_keys.get(normalise(key))
        if gid is None:
            raise CatalogError(f"unknown group '{key}'", f"use one of: {'; '.join(self.groups())}")
        return [t for t in self.tasks if t.group == gid]

    def tasks_for(self, modality: str | None = None) -> list[Task]:
        """All tasks, or those that apply to a modality (id, name or alias)."""
        if modality is None:
            return list(self.tasks)
        mid = self.modality(modality).id
        return [t for t in self.tasks if t.applies_to(mid)]

    def resolve(self, tasks: Sequence[str] = (), groups: Sequence[str] = (), modality: str | None = None,
                force: bool = False) -> list[Task]:
        """Requested tasks in the order given, then each group in catalog order, without duplicates.

        With nothing requested, every task of ``modality``. A task that does not apply to ``modality`` is an
        error unless ``force``.
        """
        mod = self.modality(modality) if modality is not None else None
        if isinstance(tasks, str) or isinstance(groups, str):
            raise TypeError("tasks and groups are sequences of names, not a single string")
        chosen = [self.task(k) for k in tasks] + [t for g in groups for t in self.group(g)]
        if not chosen:
            if mod is None:
                raise CatalogError("no task, group or modality given",
                                   "name tasks (--task), groups (--group) or a modality (--modality); "
                                   "`universalseg tasks` lists them")
            chosen = self.tasks_for(mod.id)
            if not chosen:
                raise CatalogError(f"no task applies to modality {mod.id}", "name the tasks to segment")
        chosen = list(dict.fromkeys(chosen))
        if mod is not None and not force:
            wrong = [t for t in chosen if not t.applies_to(mod.id)]
            if wrong:
                listed = "; ".join(f"{t.id} ({t.name}) applies to {', '.join(t.modalities)}" for t in wrong)
                raise CatalogError(f"task(s) not defined for modality {mod.id}: {listed}",
                                   "pick another task or modality, or pass --force to segment it anyway")
        return chosen

    def guess_modality(self, dicom_modality: str | None = None,
                       description: str | None = None) -> Modality | None:
        """Best modality for a DICOM Modality tag and/or a series description or file name, else ``None``.

        The most specific alias match wins (``"T2 FLAIR"`` -> MR-FLAIR, ``"MRI T2"`` -> MR-T2); a DICOM tag
        restricts the candidates and, with no usable description, gives the generic modality of that tag.

        >>> catalog = Catalog.load()
        >>> catalog.guess_modality("PT").id, catalog.guess_modality(None, "sub-01_T1w.nii.gz").id
        ('PET', 'MR-T1')
        """
        candidates = list(self.modalities.values())
        if dicom_modality:
            tagged = [m for m in candidates if m.dicom_modality == dicom_modality.strip().upper()]
            candidates = tagged or candidates
        else:
            tagged = []
        if description:
            toks = _tokens(description)
            grams = {"".join(toks[i:i + n]) for n in (1, 2, 3) for i in range(len(toks) - n + 1)}
            best: tuple[int, int] | None = None
            winner = None
            for m in candidates:
                for alias in (m.id, *m.aliases):
                    key = "".join(_tokens(alias))
                    if key and key in grams:
                        score = (self._depth(m), len(key))
                        if best is None or score > best:
                            best, winner = score, m
            if winner is not None:
                return winner
        if tagged:
            return min(tagged, key=self._depth)
        return None

    def _depth(self, modality: Modality) -> int:
        depth, current = 0, modality
        while current.fallback is not None and depth < len(self.modalities):
            depth, current = depth + 1, self.modalities[current.fallback]
        return depth


@lru_cache(maxsize=1)
def _bundled() -> Catalog:
    return _parse(BUNDLED)


def _parse(path: Path) -> Catalog:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}",
                           "check the path, or omit it to use the bundled catalog") from exc
    except json.JSONDecodeError as exc:
        raise CatalogError(f"catalog {path} is not valid JSON (line {exc.lineno}: {exc.msg})",
                           "fix the JSON syntax") from exc
    problems: list[str] = []
    try:
        catalog = _build(raw, problems)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"malformed entry ({type(exc).__name__}: {exc})")
        catalog = None
    if problems or catalog is None:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CatalogError(f"catalog {path} is invalid: {shown}", "fix these entries in the catalog file")
    return catalog


def _code(raw: dict | None, where: str, problems: list[str], required: bool = False) -> Code | None:
    if raw is None:
        if required:
            problems.append(f"{where} is missing")
        return None
    code = Code(str(raw["scheme"]), str(raw["value"]), str(raw["meaning"]))
    text = f"{code.scheme}{code.value}{code.meaning}"
    if not (code.scheme and code.value and code.meaning) or any(ch in text for ch in "~^|"):
        problems.append(f"{where} must have a non-empty scheme, value and meaning without '~', '^' or '|'")
    return code


def _unique(kind: str, keys: dict[str, str], key: str, owner: str, problems: list[str]) -> None:
    norm = normalise(key)
    if norm in keys and keys[norm] != owner:
        problems.append(f"{kind} name '{key}' of {owner} clashes with {keys[norm]}")
    keys.setdefault(norm, owner)


def _build(raw: dict, problems: list[str]) -> Catalog:
    version = str(raw["catalog_version"])
    modalities: dict[str, Modality] = {}
    mod_keys: dict[str, str] = {}
    for m in raw["modalities"]:
        mod = Modality(m["id"], m["name"], m["kind"], m["dicom_modality"], m.get("fallback"),
                       tuple(m.get("aliases", ())), m.get("description", ""))
        if mod.id in modalities:
            problems.append(f"duplicate modality id '{mod.id}'")
        if mod.kind not in KINDS:
            problems.append(f"modality {mod.id}: kind '{mod.kind}' is not one of {', '.join(KINDS)}")
        if mod.dicom_modality not in DICOM_MODALITIES:
            problems.append(f"modality {mod.id}: DICOM modality '{mod.dicom_modality}' is not one of "
                            f"{', '.join(DICOM_MODALITIES)}")
        for key in (mod.id, mod.name, *mod.aliases):
            _unique("modality", mod_keys, key, mod.id, problems)
        modalities[mod.id] = mod
    for mod in modalities.values():
        seen, current = {mod.id}, mod
        while current.fallback is not None:
            if current.fallback not in modalities:
                problems.append(f"modality {current.id}: fallback '{current.fallback}' is not a modality")
                break
            if current.fallback in seen:
                problems.append(f"modality {mod.id}: fallback chain loops")
                break
            seen.add(current.fallback)
            current = modalities[current.fallback]

    groups: dict[str, tuple[str, str]] = {}
    group_keys: dict[str, str] = {}
    for g in raw["groups"]:
        if g["id"] in groups:
            problems.append(f"duplicate group id '{g['id']}'")
        for key in (g["id"], g["name"]):
            _unique("group", group_keys, key, g["id"], problems)
        groups[g["id"]] = (g["name"], g.get("description", ""))

    tasks: list[Task] = []
    ids: set[str] = set()
    task_keys: dict[str, str] = {}
    for t in raw["tasks"]:
        tid = t["id"]
        where = f"task {tid}"
        term = t["terminology"]
        color = tuple(t["color"])
        if tid in ids:
            problems.append(f"duplicate task id '{tid}'")
        ids.add(tid)
        if not _ID.match(tid):
            problems.append(f"{where}: id must be lower-case snake_case")
        if t["group"] not in groups:
            problems.append(f"{where}: unknown group '{t['group']}'")
        if not t["modalities"]:
            problems.append(f"{where}: no modalities")
        problems.extend(f"{where}: unknown modality '{m}'" for m in t["modalities"] if m not in modalities)
        if len(color) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                      for v in color):
            problems.append(f"{where}: color {list(color)} must be three integers 0-255")
        plane = t.get("refine_plane", "axial")
        if plane not in PLANES:
            problems.append(f"{where}: refine_plane '{plane}' must be one of {', '.join(PLANES)}")
        task = Task(
            id=tid, name=t["name"], group=t["group"], modalities=tuple(t["modalities"]),
            color=color,
            category=_code(term.get("category"), f"{where} category", problems, required=True),
            type=_code(term.get("type"), f"{where} type", problems, required=True),
            modifier=_code(term.get("modifier"), f"{where} modifier", problems),
            region=_code(term.get("region"), f"{where} region", problems),
            region_modifier=_code(term.get("region_modifier"), f"{where} region_modifier", problems),
            aliases=tuple(t.get("aliases", ())), notes=t.get("notes", ""),
            group_name=groups.get(t["group"], (t["group"], ""))[0], refine=bool(t.get("refine", False)),
            refine_plane=plane, keep_largest=bool(t.get("keep_largest", False)),
            keep_largest_joint=bool(t.get("keep_largest_joint", False)),
            mirror=(tid if t.get("mirror") == "self" else t.get("mirror")),
        )
        for key in (task.id, task.name, *task.aliases):
            _unique("task", task_keys, key, task.id, problems)
        tasks.append(task)

    order = list(dict.fromkeys(t.group for t in tasks))
    runs = [t.group for i, t in enumerate(tasks) if i == 0 or tasks[i - 1].group != t.group]
    if len(runs) != len(order):
        problems.append("tasks of a group must be contiguous")
    if [g for g in groups if g in order] != order:
        problems.append("tasks must follow the order of the groups list")
    problems.extend(f"group {g} has no task" for g in groups if g not in order)

    by_id = {t.id: t for t in tasks}
    for t in tasks:
        partner = by_id.get(t.mirror) if t.mirror else None
        if t.mirror and (partner is None or partner.mirror != t.id or partner.group != t.group):
            problems.append(f"task {t.id}: mirror '{t.mirror}' must be 'self' or a task of its group whose mirror is "
                            f"{t.id}")
    datasets: dict[str, DatasetEntry] = {}
    for name, d in raw.get("datasets", {}).items():
        labels = {int(value): tid for value, tid in d["labels"].items()}
        if d["modality"] not in modalities:
            problems.append(f"dataset {name}: unknown modality '{d['modality']}'")
        for value, tid in labels.items():
            if value < 1:
                problems.append(f"dataset {name}: label value {value} must be 1 or more")
            if tid not in by_id:
                problems.append(f"dataset {name}: label {value} names unknown task '{tid}'")
            elif not by_id[tid].applies_to(d["modality"]):
                problems.append(f"dataset {name}: task {tid} does not apply to {d['modality']}")
        datasets[name] = DatasetEntry(name, d["modality"], labels)
    return Catalog(version, modalities, groups, tuple(tasks), datasets)
