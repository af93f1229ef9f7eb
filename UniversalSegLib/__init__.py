"""UniversalSeg engine: universal medical image segmentation, importable without Slicer.

Heavy dependencies (torch, MONAI) load only when a model is used, so ``import UniversalSegLib``
stays fast for the Slicer module and the CLI's ``tasks`` command.

>>> from UniversalSegLib import __version__
>>> isinstance(__version__, str)
True
"""

from __future__ import annotations

import os

__version__ = "0.9.0"  # the one package version; pyproject.toml holds the same (Testing/test_versions.py)

#: Manifest field naming the package versions a weights file works with, e.g. ">=0.9,<1.0".
REQUIRES_FIELD = "requires_universalseg"


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.strip().split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def version_matches(spec: str, version: str = __version__) -> bool:
    """Whether ``version`` meets ``spec``: comma-separated clauses such as ``>=0.9,<1.0`` (==, !=, <, <=, >, >=).

    >>> version_matches(">=0.9,<1.0", "0.9.0"), version_matches(">=0.9,<1.0", "1.0.0")
    (True, False)
    """
    have = _parse(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                want = _parse(clause[len(op):])
                break
        else:
            op, want = "==", _parse(clause)
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


def check_manifest_version(manifest: dict, source: object = "model manifest") -> None:
    """Raise ``CheckpointError`` if ``manifest`` names package versions this one is not among.

    A manifest without the field (older exports) is accepted.
    """
    spec = manifest.get(REQUIRES_FIELD) if isinstance(manifest, dict) else None
    if spec is None:
        return
    if not isinstance(spec, str) or not version_matches(spec, __version__):
        from .errors import CheckpointError

        raise CheckpointError(
            f"{source} needs UniversalSeg {spec} but this is UniversalSeg {__version__}",
            f"install a UniversalSeg version in {spec}, or use weights made for {__version__}")


def check_manifest_beside(weights: str | os.PathLike, what: str = "model") -> None:
    """:func:`check_manifest_version` on the manifest beside ``weights`` (``X.pt`` -> ``X.json``), if there is one."""
    import json
    from pathlib import Path

    manifest = Path(weights).with_suffix(".json")
    if manifest.is_file():
        check_manifest_version(json.loads(manifest.read_text(encoding="utf-8")), f"{what} manifest {manifest}")
