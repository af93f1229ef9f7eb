"""Refinement on only where it helps: per-task decisions from ``universalseg evaluate --refine`` reports.

A report of ``evaluate --split val --refine-task all --json R.json`` scores every label before and after
refinement on the same cases (``coarse_dice`` and ``dice``). A task is refined by default when refinement
raised its Dice there by at least :data:`REFINE_GAIN` and the refined Dice is not below the coarse Dice the
policy block already carries (the full validation split's); :func:`record_decisions` writes the decision and
the refined figure into a model manifest's ``inference_policy`` block (its validator checks the result) and
keeps the report under ``validation`` beside the coarse ones. Torch-free.

>>> report = {"dataset": "d", "refinement": {"backend": "litemedsam"}, "split": "val",
...           "labels": {"Larynx": {"coarse_dice": 0.60, "dice": 0.65, "n": 3, "refined": True}}}
>>> [(d.task, d.refine, round(d.gain, 2)) for d in decisions([report])]
[('larynx', True, 0.05)]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from ..catalog import Catalog
from ..errors import CatalogError, InputError
from ..policy import POLICY_KEY, validate_policy

#: The least validation Dice gain that turns refinement on for a task.
REFINE_GAIN = 0.01


@dataclass(frozen=True)
class Decision:
    """Coarse and refined Dice of one task on the same validation cases, and whether it is refined by default."""

    task: str
    dataset: str
    coarse_dice: float
    refined_dice: float
    cases: int
    refine: bool

    @property
    def gain(self) -> float:
        return self.refined_dice - self.coarse_dice


def decisions(reports: Sequence[dict], floor: dict[str, float | None] | None = None,
              catalog: Catalog | None = None) -> list[Decision]:
    """One :class:`Decision` per scored label of the ``evaluate --refine`` reports.

    ``floor``: task id -> the coarse Dice already on record (the policy's); a refined Dice below it keeps
    refinement off even with a gain on the report's cases.
    """
    catalog = catalog or Catalog.load()
    found = []
    for report in reports:
        if not report.get("refinement"):
            raise InputError(f"report of {report.get('dataset')} is not one of `evaluate --refine`",
                             "run universalseg evaluate --split val --refine-task all --json REPORT.json")
        for name, figures in report["labels"].items():
            if not figures.get("n") or figures.get("coarse_dice") is None or not figures.get("refined", True):
                continue  # not scored, or not refined in this run (``--refine-task`` named other tasks)
            try:
                task = catalog.task(name).id
            except CatalogError:
                continue
            coarse, refined = float(figures["coarse_dice"]), float(figures["dice"])
            low = (floor or {}).get(task)
            refine = refined - coarse >= REFINE_GAIN and (low is None or refined >= low)
            found.append(Decision(task, str(report.get("dataset")), coarse, refined, int(figures["n"]), refine))
    return found


def record_decisions(manifest: dict, reports: Sequence[dict], catalog: Catalog | None = None) -> list[Decision]:
    """Write the decisions into ``manifest`` (in place): each task's ``refine`` and ``validation.refined_dice``,
    and each report under ``validation["<dataset> refined"]``; the block is validated before anything changes."""
    block = copy.deepcopy(manifest[POLICY_KEY])
    floor = {tid: entry["validation"]["coarse_dice"] for tid, entry in block["tasks"].items()}
    made = [d for d in decisions(reports, floor, catalog) if d.task in block["tasks"]]
    for decision in made:
        entry = block["tasks"][decision.task]
        entry["refine"] = decision.refine
        entry["validation"]["refined_dice"] = round(decision.refined_dice, 4)
        default = entry["validation"]["refined_dice"] if decision.refine else entry["validation"]["coarse_dice"]
        entry["shown"] = default is not None and default >= 0.5
    task_ids = manifest.get("task_ids")
    validate_policy(block, task_ids if isinstance(task_ids, list) else None)
    manifest[POLICY_KEY] = block
    validation = manifest.setdefault("validation", {})
    for report in reports:
        kept = {k: v for k, v in report.items() if k != "cases"}
        kept["labels"] = {n: f for n, f in report["labels"].items() if f.get("refined", True)}  # only refined ones
        kept["case_ids"] = [row["case"] for row in report.get("cases", [])]
        validation[f"{report['dataset']} refined"] = kept
    return made
