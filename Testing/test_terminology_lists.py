"""Every catalog terminology code must exist in 3D Slicer's own terminology lists (issue 24).

The lists are read from Slicer's sources in ``../shared/slicer-api`` (Modules/Loadable/Terminologies/Resources);
the tests skip when that folder is missing. A segment whose (category, type, modifier) triple is not in the
list named by its terminology entry, or whose anatomic region is not in the anatomic list, shows up in Slicer's
terminology selector as an unknown entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from UniversalSegLib.catalog import ANATOMIC_CONTEXT, SEGMENTATION_CONTEXT, Catalog, Code

SLICER_API = Path(__file__).resolve().parents[1].parent / "shared" / "slicer-api"
RESOURCES = Path("Slicer/Modules/Loadable/Terminologies/Resources")


def _key(item: dict) -> tuple[str, str]:
    return item["CodingSchemeDesignator"], item["CodeValue"]


def _meanings(items: list[dict]) -> dict[tuple[str, str], str]:
    return {_key(m): m["CodeMeaning"] for m in items}


@pytest.fixture(scope="module")
def terminology_dir() -> Path:
    """Slicer's terminology folder in ``../shared/slicer-api`` (skips the test when it is absent)."""
    folder = SLICER_API / RESOURCES
    if not folder.is_dir():
        pytest.skip(f"Slicer terminology lists not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def segmentation_lists(terminology_dir: Path) -> dict[str, dict]:
    """Context name -> {category key: (meaning, show_anatomy, {type key: (meaning, show_anatomy, {modifier: m})})}."""
    lists = {}
    for path in sorted(terminology_dir.glob("SegmentationCategoryTypeModifier-*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        categories = {}
        for cat in raw["SegmentationCodes"]["Category"]:
            show = bool(cat.get("showAnatomy", False))
            types = {_key(t): (t["CodeMeaning"], bool(t.get("showAnatomy", show)), _meanings(t.get("Modifier", [])))
                     for t in cat.get("Type", [])}
            categories[_key(cat)] = (cat["CodeMeaning"], show, types)
        lists[raw["SegmentationCategoryTypeContextName"]] = categories
    assert lists, f"no segmentation terminology list in {terminology_dir}"
    return lists


@pytest.fixture(scope="module")
def anatomic_lists(terminology_dir: Path) -> dict[str, dict]:
    """Context name -> {region key: (meaning, {modifier key: meaning})}."""
    lists = {}
    for path in sorted(terminology_dir.glob("AnatomicRegionAndModifier-*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        lists[raw["AnatomicContextName"]] = {
            _key(r): (r["CodeMeaning"], _meanings(r.get("Modifier", [])))
            for r in raw["AnatomicCodes"]["AnatomicRegion"]}
    assert lists, f"no anatomic terminology list in {terminology_dir}"
    return lists


def _k(code: Code) -> tuple[str, str]:
    return code.scheme, code.value


def _same(ours: Code, theirs: str) -> bool:
    return ours.meaning.casefold() == theirs.casefold()


def test_catalog_contexts_are_slicer_lists(segmentation_lists: dict, anatomic_lists: dict) -> None:
    assert SEGMENTATION_CONTEXT in segmentation_lists, sorted(segmentation_lists)
    assert ANATOMIC_CONTEXT in anatomic_lists, sorted(anatomic_lists)


def test_every_category_type_modifier_is_in_the_list(segmentation_lists: dict) -> None:
    categories = segmentation_lists.get(SEGMENTATION_CONTEXT)
    if categories is None:
        pytest.fail(f"catalog context {SEGMENTATION_CONTEXT!r} is none of {sorted(segmentation_lists)}")
    problems = []
    for task in Catalog.load().tasks:
        cat = categories.get(_k(task.category))
        if cat is None:
            problems.append(f"{task.id}: category {task.category.triplet()} not in the list")
            continue
        types = cat[2]
        found = types.get(_k(task.type))
        if found is None:
            problems.append(f"{task.id}: type {task.type.triplet()} not in category {task.category.meaning}")
            continue
        meaning, _, modifiers = found
        if not _same(task.type, meaning):
            problems.append(f"{task.id}: type {task.type.value} means {meaning!r}, not {task.type.meaning!r}")
        if task.modifier is not None:
            if _k(task.modifier) not in modifiers:
                problems.append(f"{task.id}: modifier {task.modifier.triplet()} is not a modifier of "
                                f"{task.type.meaning} (valid: {sorted(modifiers.values()) or 'none'})")
            elif not _same(task.modifier, modifiers[_k(task.modifier)]):
                problems.append(f"{task.id}: modifier {task.modifier.value} means {modifiers[_k(task.modifier)]!r}")
    assert not problems, "\n".join(problems)


def test_every_anatomic_region_is_in_the_list(segmentation_lists: dict, anatomic_lists: dict) -> None:
    regions = anatomic_lists.get(ANATOMIC_CONTEXT, {})
    categories = segmentation_lists.get(SEGMENTATION_CONTEXT, {})
    problems = []
    for task in Catalog.load().tasks:
        if task.region is None:
            assert task.region_modifier is None, f"{task.id}: region modifier without a region"
            continue
        found = regions.get(_k(task.region))
        if found is None:
            problems.append(f"{task.id}: anatomic region {task.region.triplet()} not in {ANATOMIC_CONTEXT}")
            continue
        if not _same(task.region, found[0]):
            problems.append(f"{task.id}: region {task.region.value} means {found[0]!r}")
        if task.region_modifier is not None and _k(task.region_modifier) not in found[1]:
            problems.append(f"{task.id}: region modifier {task.region_modifier.triplet()} is not a modifier of "
                            f"{task.region.meaning}")
        type_entry = categories.get(_k(task.category), (None, False, {}))[2].get(_k(task.type))
        if type_entry is not None and not type_entry[1]:
            problems.append(f"{task.id}: type {task.type.meaning} takes no anatomic region (showAnatomy false)")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_bad_code(segmentation_lists: dict) -> None:
    """The lists are really read: the codes issue 24 found missing are absent from them."""
    types = segmentation_lists["Segmentation category and type - DICOM master list"][("SCT", "123037004")][2]
    for value in ("15926001", "18234004", "74281007", "110765007"):
        assert ("SCT", value) not in types
    assert ("SCT", "255549009") not in types[("SCT", "5366008")][2]
    assert ("SCT", "64033007") in types  # kidney
