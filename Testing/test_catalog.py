"""Tests of the task/modality catalog (UniversalSegLib/catalog.py and catalog.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from UniversalSegLib.catalog import ANATOMIC_CONTEXT, BUNDLED, SEGMENTATION_CONTEXT, Catalog
from UniversalSegLib.errors import CatalogError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared/data"

REQUIRED_TASKS = [
    "brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible",
    "hippocampus_anterior", "hippocampus_posterior", "brain_tumour_necrosis", "brain_tumour_edema",
    "brain_tumour_non_enhancing", "brain_tumour_enhancing", "heart_rv_cavity", "heart_lv_myocardium",
    "heart_lv_cavity", "left_atrium_cavity", "spleen", "fetal_head", "retinal_vessels",
    "liver", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder", "aorta",
    "inferior_vena_cava", "adrenal_gland_left", "adrenal_gland_right", "duodenum", "liver_tumour",
    "kidney_tumour",
]
EXPECTED_DATASETS = {
    "ct_headneck_openkbp": "CT", "mri_hippocampus_msd": "MR-T1", "mri_braintumor_brats2015": "MR-FLAIR",
    "mri_cardiac_acdc": "cine-MR", "mri_leftatrium_la2018": "LGE-MR", "us_fetalhead_hc18": "US",
    "fundus_vessels_drive": "FUNDUS", "ct_abdomen_btcv": "CT", "mri_abdomen_chaos": "MR-T2",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def _raw() -> dict:
    return json.loads(BUNDLED.read_text(encoding="utf-8"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- content
def test_bundled_catalog_loads_and_is_cached(catalog: Catalog) -> None:
    assert catalog.version == "2026.11.0"
    assert Catalog.load() is catalog
    assert Catalog.load(BUNDLED) is not catalog  # an explicit path is read afresh
    assert [t.id for t in Catalog.load(BUNDLED).tasks] == [t.id for t in catalog.tasks]
    assert len(catalog.tasks) >= 40
    assert len({t.id for t in catalog.tasks}) == len(catalog.tasks)
    assert set(REQUIRED_TASKS) <= {t.id for t in catalog.tasks}


def test_modalities_and_fallbacks(catalog: Catalog) -> None:
    required = ["CT", "PET", "MR", "MR-T1", "MR-T1C", "MR-T2", "MR-FLAIR", "cine-MR", "LGE-MR", "US",
                "FUNDUS"]
    assert set(required) <= set(catalog.modalities)
    for mid, mod in catalog.modalities.items():
        expected = "MR" if mid.startswith("MR-") or mid in ("cine-MR", "LGE-MR") else None
        assert mod.fallback == expected, mid
        assert mod.kind in ("CT", "MR", "PET", "US", "photo")
    assert catalog.modalities["FUNDUS"].kind == "photo"
    assert catalog.modalities["PET"].dicom_modality == "PT"
    assert {"T1", "T1w", "MPRAGE"} <= set(catalog.modalities["MR-T1"].aliases)


def test_every_code_is_a_snomed_digit_string(catalog: Catalog) -> None:
    for task in catalog.tasks:
        codes = [task.category, task.type, task.modifier, task.region, task.region_modifier]
        for code in filter(None, codes):
            assert code.scheme == "SCT", task.id
            assert code.value.isdigit() and code.meaning, (task.id, code)
        assert task.category.value in ("123037004", "49755003", "85756007"), task.id  # anatomy, altered, tissue
        assert all(0 <= v <= 255 for v in task.color)
    assert catalog.task("liver_tumour").category.value == "49755003"
    assert catalog.task("kidney_tumour").region.value == "64033007"


def test_groups_are_contiguous_and_ordered(catalog: Catalog) -> None:
    order = list(dict.fromkeys(t.to_dict()["group"] for t in catalog.tasks))
    assert order == catalog.groups()
    assert catalog.groups()[0] == "Head and neck organs at risk"
    assert [t.id for t in catalog.group("Hippocampus")] == ["hippocampus_anterior", "hippocampus_posterior"]
    assert catalog.group("hippocampus") == catalog.group("HIPPOCAMPUS")
    assert all(t.group == "abdominal_organs" for t in catalog.group("Abdominal organs"))


def test_dataset_map(catalog: Catalog) -> None:
    assert {name: d.modality for name, d in catalog.datasets.items()} == EXPECTED_DATASETS
    assert catalog.datasets["ct_headneck_openkbp"].labels[3] == "parotid_right"
    assert catalog.datasets["mri_braintumor_brats2015"].labels[4] == "brain_tumour_enhancing"


def _shared_datasets() -> list[Path]:
    return sorted(SHARED_DATA.glob("*/dataset.json")) if SHARED_DATA.is_dir() else []


@pytest.mark.skipif(not _shared_datasets(), reason="../shared/data is not available")
def test_every_shared_label_resolves_to_a_task_of_the_dataset_modality(catalog: Catalog) -> None:
    checked = 0
    for path in _shared_datasets():
        meta = json.loads(path.read_text(encoding="utf-8"))
        folder = path.parent.name
        if meta.get("labels"):
            entry = catalog.datasets[folder]
            assert set(entry.labels) == {int(v) for v in meta["labels"]}, folder
            for value, name in meta["labels"].items():
                task = catalog.task(name)  # the dataset's own label name is an alias
                assert task.id == entry.labels[int(value)], (folder, name)
                assert task.applies_to(entry.modality), (folder, name, entry.modality)
                checked += 1
        for case in meta.get("cases", []):  # per-case labels (the smoke set)
            for name in (case.get("labels") or {}).values():
                modality = catalog.guess_modality(None, case["modality"])
                assert modality is not None, case["id"]
                assert catalog.task(name).applies_to(modality.id), (case["id"], name, modality.id)
                checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------- lookups
@pytest.mark.parametrize("key, expected", [
    ("spinal_cord", "spinal_cord"), ("Spinal cord", "spinal_cord"), ("SpinalCord", "spinal_cord"),
    ("SPINAL-CORD", "spinal_cord"), ("RightParotid", "parotid_right"), ("left parotid gland", "parotid_left"),
    ("Anterior hippocampus", "hippocampus_anterior"), ("RV cavity", "heart_rv_cavity"),
    ("Right ventricle cavity", "heart_rv_cavity"), ("Left ventricle myocardium", "heart_lv_myocardium"),
    ("Non-enhancing tumor", "brain_tumour_non_enhancing"), ("Vessel", "retinal_vessels"),
    ("IVC", "inferior_vena_cava"),
])
def test_task_lookup(catalog: Catalog, key: str, expected: str) -> None:
    assert catalog.task(key).id == expected


def test_unknown_task_suggests_close_matches(catalog: Catalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.task("parotid")
    message = str(err.value)
    assert "'parotid'" in message and "parotid_right" in message and "parotid_left" in message
    assert "universalseg tasks" in message
    with pytest.raises(CatalogError, match="universalseg tasks"):
        catalog.task("zzzz")


def test_modality_lookup(catalog: Catalog) -> None:
    assert catalog.modality("mr-t1").id == "MR-T1"
    assert catalog.modality("T1w").id == "MR-T1"
    assert catalog.modality("late gadolinium").id == "LGE-MR"
    assert catalog.modality("t1ce").id == "MR-T1C"
    assert catalog.modality("Colour fundus photograph").id == "FUNDUS"
    with pytest.raises(CatalogError) as err:
        catalog.modality("DWI")
    assert "'DWI'" in str(err.value) and "MR-FLAIR" in str(err.value) and "FUNDUS" in str(err.value)


def test_unknown_group_lists_groups(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="Abdominal organs"):
        catalog.group("kidneys")


def test_tasks_for(catalog: Catalog) -> None:
    assert catalog.tasks_for() == list(catalog.tasks)
    assert [t.id for t in catalog.tasks_for("FUNDUS")] == ["retinal_vessels"]
    assert [t.id for t in catalog.tasks_for("late gadolinium")][-1] == "left_atrium_cavity"
    assert all(t.applies_to("US") for t in catalog.tasks_for("US"))


# --------------------------------------------------------------------------- resolve
def test_resolve_tasks_then_groups_in_catalog_order_without_duplicates(catalog: Catalog) -> None:
    chosen = catalog.resolve(["spleen", "Brainstem"], ["Hippocampus", "head_neck_oar"])
    hn = [t.id for t in catalog.group("head_neck_oar")]
    assert [t.id for t in chosen] == (["spleen", "brainstem", "hippocampus_anterior", "hippocampus_posterior"]
                                      + [i for i in hn if i != "brainstem"])
    assert [t.id for t in catalog.resolve(["liver", "Liver", "hepar"])] == ["liver"]


def test_resolve_modality_only(catalog: Catalog) -> None:
    assert [t.id for t in catalog.resolve(modality="FUNDUS")] == ["retinal_vessels"]
    assert catalog.resolve(modality="MR-FLAIR") == catalog.tasks_for("MR-FLAIR")
    with pytest.raises(CatalogError, match="no task, group or modality"):
        catalog.resolve()


def test_resolve_rejects_task_of_other_modality_unless_forced(catalog: Catalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.resolve(["spinal_cord", "larynx"], modality="MR-T2")
    message = str(err.value)
    assert "larynx" in message and "MR-T2" in message and "CT" in message and "--force" in message
    assert "spinal_cord" not in message
    assert [t.id for t in catalog.resolve(["larynx"], modality="MR-T2", force=True)] == ["larynx"]
    with pytest.raises(CatalogError, match="retinal_vessels"):
        catalog.resolve(groups=["Retinal vessels"], modality="CT")
    assert [t.id for t in catalog.resolve(["spinal_cord"], modality="MR-T2")] == ["spinal_cord"]


# --------------------------------------------------------------------------- guess_modality
@pytest.mark.parametrize("dicom, description, expected", [
    ("CT", None, "CT"), ("PT", None, "PET"), ("MR", None, "MR"), ("US", None, "US"), ("OP", None, "FUNDUS"),
    ("mr", "Ax T2 FLAIR", "MR-FLAIR"), ("MR", "t1_mprage_sag", "MR-T1"), ("MR", "T1 post contrast", "MR-T1C"),
    ("MR", "SAX cine bSSFP", "cine-MR"), ("MR", "LGE PSIR", "LGE-MR"), ("CT", "FLAIR", "CT"),
    (None, "BraTS_001_t1ce.nii.gz", "MR-T1C"), (None, "sub-01_T1w.nii.gz", "MR-T1"),
    (None, "MRI T2", "MR-T2"),
    (None, "LGE-MRI", "LGE-MR"), (None, "Fundus photo (RGB)", "FUNDUS"), (None, "ultrasound", "US"),
    (None, "21_training.tif", None), (None, None, None), ("SEG", None, None), ("SEG", "CT chest", "CT"),
])
def test_guess_modality(catalog: Catalog, dicom: str | None, description: str | None,
                        expected: str | None) -> None:
    guessed = catalog.guess_modality(dicom, description)
    assert (guessed.id if guessed else None) == expected


# --------------------------------------------------------------------------- Slicer terminology
def test_terminology_entry_format(catalog: Catalog) -> None:
    for task in catalog.tasks:
        entry = task.terminology_entry()
        fields = entry.split("~")
        assert len(fields) == 7, task.id
        assert fields[0] == SEGMENTATION_CONTEXT and fields[4] == ANATOMIC_CONTEXT
        assert fields[1] == f"SCT^{task.category.value}^{task.category.meaning}"
        assert fields[2] == f"SCT^{task.type.value}^{task.type.meaning}"
        optional = ((fields[3], task.modifier), (fields[5], task.region), (fields[6], task.region_modifier))
        for field_, code in optional:
            assert field_ == (f"SCT^{code.value}^{code.meaning}" if code else "^^")
        assert "|" not in entry
        assert all(len(f.split("^")) == 3 for i, f in enumerate(fields) if i not in (0, 4))
    left = catalog.task("parotid_left").terminology_entry()
    assert left == (f"{SEGMENTATION_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^45289007^Parotid gland"
                    f"~SCT^7771000^Left~{ANATOMIC_CONTEXT}~^^~^^")
    assert catalog.task("liver_tumour").terminology_entry().split("~")[5] == "SCT^10200004^Liver"


def test_colour_and_dict(catalog: Catalog) -> None:
    task = catalog.task("spleen")
    assert task.color_float() == pytest.approx((157 / 255, 108 / 255, 162 / 255))
    data = task.to_dict()
    assert data["group"] == "Abdominal organs" and data["group_id"] == "abdominal_organs"
    assert data["terminology"]["type"] == {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"}
    assert data["terminology"]["modifier"] is None
    assert json.loads(json.dumps(data)) == data
    assert task.applies_to("CT") and not task.applies_to("FUNDUS")


# --------------------------------------------------------------------------- broken files
def _break(kind: str) -> dict:
    raw = _raw()
    tasks = raw["tasks"]
    if kind == "duplicate id":
        tasks.append(copy.deepcopy(tasks[-1]) | {"name": "Other", "aliases": []})
    elif kind == "unknown group":
        tasks[0]["group"] = "no_such_group"
    elif kind == "colour 300":
        tasks[0]["color"] = [300, 0, 0]
    elif kind == "unknown modality":
        tasks[0]["modalities"] = ["CT", "XR"]
    elif kind == "unknown dataset task":
        raw["datasets"]["us_fetalhead_hc18"]["labels"]["1"] = "fetal_heart"
    elif kind == "dataset task of other modality":
        raw["datasets"]["us_fetalhead_hc18"]["labels"]["1"] = "liver"
    elif kind == "alias clash":
        tasks[1]["aliases"] = ["Brain stem"]
    elif kind == "empty code":
        tasks[0]["terminology"]["type"]["value"] = ""
    elif kind == "group not contiguous":
        tasks.append(tasks.pop(0))
    elif kind == "bad fallback":
        raw["modalities"][3]["fallback"] = "MRI-X"
    elif kind == "missing key":
        del tasks[0]["modalities"]
    elif kind == "one-sided mirror":
        next(t for t in tasks if t["id"] == "parotid_right")["mirror"] = "mandible"
    return raw


@pytest.mark.parametrize("kind, fragment", [
    ("duplicate id", "duplicate task id 'retinal_vessels'"),
    ("unknown group", "unknown group 'no_such_group'"),
    ("colour 300", "[300, 0, 0]"), ("unknown modality", "unknown modality 'XR'"),
    ("unknown dataset task", "unknown task 'fetal_heart'"),
    ("dataset task of other modality", "task liver does not apply to US"),
    ("alias clash", "clashes with brainstem"), ("empty code", "type must have"),
    ("group not contiguous", "contiguous"), ("bad fallback", "MRI-X"), ("missing key", "modalities"),
    ("one-sided mirror", "task parotid_right: mirror 'mandible' must be"),
])
def test_broken_catalog_is_rejected(tmp_path: Path, kind: str, fragment: str) -> None:
    path = _write(tmp_path, _break(kind))
    with pytest.raises(CatalogError) as err:
        Catalog.load(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_unreadable_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid JSON"):
        Catalog.load(bad)


def test_valid_copy_loads(tmp_path: Path) -> None:
    loaded = Catalog.load(_write(tmp_path, _raw()))
    assert [t.id for t in loaded.tasks] == [t.id for t in Catalog.load().tasks]


def test_refine_flag_comes_from_the_catalog_file(tmp_path: Path) -> None:
    raw = _raw()
    flags = {t["id"]: bool(t.get("refine", False)) for t in raw["tasks"]}
    raw["tasks"][0]["refine"] = not flags[raw["tasks"][0]["id"]]
    loaded = Catalog.load(_write(tmp_path, raw))
    assert loaded.tasks[0].refine is not flags[raw["tasks"][0]["id"]]
    assert [t.refine for t in loaded.tasks[1:]] == [flags[t["id"]] for t in raw["tasks"][1:]]
    assert loaded.tasks[0].to_dict()["refine"] is loaded.tasks[0].refine


def test_mirrors_pair_left_and_right_and_leave_the_heart_out(catalog: Catalog) -> None:
    assert catalog.task("parotid_left").mirror == "parotid_right"
    assert catalog.task("optic_nerve_right").mirror == "optic_nerve_left"
    assert catalog.task("mandible").mirror == "mandible"  # "self" in the file
    assert catalog.task("heart_lv_cavity").mirror is None  # a mirrored heart is not anatomy
    assert catalog.task("esophagus").mirror is None  # left of the midline: averaging cost it 0.07 Dice
    assert catalog.task("parotid_left").to_dict()["mirror"] == "parotid_right"
    for task in catalog.tasks:  # every pair is mutual
        assert task.mirror is None or catalog.task(task.mirror).mirror == task.id


def test_refine_plane_comes_from_the_catalog_file_and_is_checked(tmp_path: Path) -> None:
    raw = _raw()
    raw["tasks"][0]["refine_plane"] = "sagittal"
    loaded = Catalog.load(_write(tmp_path, raw))
    assert loaded.tasks[0].refine_plane == loaded.tasks[0].to_dict()["refine_plane"] == "sagittal"
    assert loaded.tasks[1].refine_plane == "axial"  # the default when the file says nothing
    raw["tasks"][0]["refine_plane"] = "oblique"
    with pytest.raises(CatalogError, match="refine_plane 'oblique' must be one of sagittal, coronal, axial"):
        Catalog.load(_write(tmp_path, raw))
