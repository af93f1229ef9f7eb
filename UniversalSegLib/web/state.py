"""What the page shows, computed without trame: the server's files, task rows, sizes, save formats.

    >>> parse_size("1G"), parse_size("512M"), parse_size("2048")
    (1073741824, 536870912, 2048)
    >>> human_size(1536 * 1024 ** 2)
    '1.5 GB'
    >>> [item["id"] for item in task_items("MR-T1", [])["items"]]
    ['hippocampus_anterior', 'hippocampus_posterior']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..catalog import Catalog
from ..errors import InputError

#: Files the page offers from ``--data`` (a folder holding ``.dcm`` files is offered as a DICOM series).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Save formats: (id, label, file suffix).
SAVE_FORMATS = (("nifti", "NIfTI label map (.nii.gz + .json)", ".nii.gz"),
                ("seg-nrrd", "Slicer segmentation (.seg.nrrd)", ".seg.nrrd"),
                ("dicom-seg", "DICOM SEG (.dcm; DICOM inputs only)", ".dcm"))
DEFAULT_UPLOAD_LIMIT = 1024 ** 3


def parse_size(text: str | int) -> int:
    """Bytes from ``"1G"``, ``"500M"``, ``"64K"`` or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 1G, 500M or a number of bytes)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024 ** power)


def human_size(size: float) -> str:
    """``1.5 GB``, ``300 MB``, ``12 KB``, ``7 bytes``."""
    for unit, power in (("GB", 3), ("MB", 2), ("KB", 1)):
        if size >= 1024 ** power:
            value = size / 1024 ** power
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(size)} bytes"


def too_large_message(name: str, size: int | None, limit: int) -> str:
    """The line shown for an upload over the limit."""
    what = f"'{name}' ({human_size(size)})" if size is not None else f"'{name}'"
    return (f"{what} is larger than this server's upload limit of {human_size(limit)}: put the file in the "
            "server's --data folder and open it from the list, or restart the server with a larger --upload-limit.")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_data_files(data_dir: str | Path | None, limit: int = 500) -> list[str]:
    """Images under ``data_dir`` (relative paths, sorted), and folders holding DICOM files (``folder/``)."""
    if not data_dir:
        return []
    root = Path(data_dir)
    if not root.is_dir():
        return []
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file() and is_image_name(path.name) and not path.name.lower().endswith(".seg.nrrd"):
            found.append(path.relative_to(root).as_posix())
        elif path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir() if p.is_file()):
            found.append(path.relative_to(root).as_posix() + "/")
        if len(found) >= limit:
            break
    return found


def resolve_data_file(data_dir: str | Path | None, relative: str) -> Path:
    """The path of a listed file; never outside ``data_dir``.

    >>> resolve_data_file("/srv/data", "../etc/passwd")
    Traceback (most recent call last):
    ...
    UniversalSegLib.errors.InputError: '../etc/passwd' is not a file of this server's data folder. What to do: ...
    """
    if not data_dir:
        raise InputError("this server has no data folder", "start it with --data DIR, or upload a file")
    root = Path(data_dir).resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents or not path.exists():
        raise InputError(f"'{relative}' is not a file of this server's data folder", "pick a file from the list")
    return path


def modality_items(catalog: Catalog | None = None) -> list[dict]:
    """The modality dropdown: the same ids, in the same order, as the Slicer panel."""
    from ..slicer_logic.widget_glue import modality_choices  # imports slicer: not in the front server

    catalog = catalog or Catalog.load()
    return [{"id": m, "title": m} for m in modality_choices(catalog)]


def task_items(modality: str, selected: Sequence[str], show_weak: bool = False,
               catalog: Catalog | None = None) -> dict:
    """The task list for ``modality``: the Slicer panel's tree (:func:`model_task_tree`), flattened for the page.

    Returns ``{"items": [{"id", "title", "group", "tooltip"}], "chosen": [...], "warning": str, "hidden": int}``.
    """
    from ..slicer_logic.widget_glue import model_task_tree

    tree = model_task_tree(modality, selected, show_weak=show_weak, catalog=catalog)
    items = [{"id": row.id, "title": row.name, "group": group, "tooltip": row.tooltip}
             for group, rows in tree.groups for row in rows]
    return {"items": items, "chosen": list(tree.chosen), "warning": tree.warning, "hidden": tree.hidden}


def save_suffix(fmt: str) -> str:
    for key, _label, suffix in SAVE_FORMATS:
        if key == fmt:
            return suffix
    raise InputError(f"unknown save format '{fmt}'", "choose NIfTI, Slicer segmentation or DICOM SEG")


def safe_stem(name: str) -> str:
    """A file name stem from a volume name: letters, digits, ``-``, ``_``, ``.``.

    >>> safe_stem("hippo sample.nii.gz")
    'hippo_sample'
    """
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "segmentation"
