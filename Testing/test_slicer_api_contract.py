"""Contract: every signal/slot/property the module glue uses on a .ui widget exists in the real Slicer/CTK/Qt API.

Widget classes come from the .ui; Slicer/CTK members from their headers in /work/shared/slicer-api (following the
``class X : public Base`` chain); Qt classes from PySide6 metaobjects. Refreshing slicer-api is the only upkeep.
"""

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = Path(os.environ.get("SLICER_API", "/work/shared/slicer-api"))
UI = ROOT / "UniversalSeg/Resources/UI/UniversalSeg.ui"
pytestmark = pytest.mark.skipif(not API.is_dir(), reason="no slicer-api copy")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")


def _header(cls):
    return next(iter(sorted(API.rglob(f"{cls}.h"))), None)


def _members(cls, seen=()):
    """Names of signals, slots, Q_INVOKABLE methods and Q_PROPERTYs of cls and its bases; None if unknown."""
    qt_cls = getattr(QtWidgets, cls, None)
    if qt_cls is not None:
        meta = qt_cls.staticMetaObject
        names = {bytes(meta.method(i).name()).decode() for i in range(meta.methodCount())}
        names |= {meta.property(i).name() for i in range(meta.propertyCount())}
        return names | {n for n in dir(qt_cls) if not n.startswith("_")}
    path = _header(cls)
    if path is None or cls in seen:
        return None
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(errors="replace"), flags=re.S)
    names = set(re.findall(r"Q_PROPERTY\(\s*[\w:<>*& ]+?[\s*&](\w+)\s+READ", text))
    names |= set(re.findall(r"Q_INVOKABLE[^;(]*?(\w+)\s*\(", text))
    section = r"(?:signals|Q_SIGNALS|public\s+(?:slots|Q_SLOTS))\s*:(.*?)"
    end = r"(?=\n\s*(?:public|protected|private|signals|Q_SIGNALS)\b|\n};)"
    for block in re.findall(section + end, text, re.S):
        names |= set(re.findall(r"(\w+)\s*\([^;]*\)\s*(?:const)?\s*(?:override)?\s*;", block))
    base = re.search(rf"class\s+(?:\w+\s+)?{cls}\s*:\s*public\s+(\w+)", text)
    if base:
        inherited = _members(base.group(1), (*seen, cls))
        if inherited is None:
            return None
        names |= inherited
    return names


def _ui_widgets():
    return {w.get("name"): w.get("class") for w in ET.parse(UI).iter("widget")}


def _glue_files():
    return sorted((ROOT / "UniversalSeg").rglob("*.py"))


def _uses():
    """(file, line, widget name, member) for every self.ui.X.member in the glue."""
    for path in _glue_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui"):
                yield path.name, node.lineno, node.value.attr, node.attr


def test_every_widget_member_used_exists():
    widgets, errors = _ui_widgets(), []
    for fname, line, name, member in _uses():
        cls = widgets.get(name)
        if cls is None:
            errors.append(f"{fname}:{line}: no widget {name!r} in the .ui")
            continue
        members = _members(cls)
        if members is None:
            errors.append(f"{fname}:{line}: class {cls} of {name} not found in slicer-api or Qt")
        elif member not in members:
            errors.append(f"{fname}:{line}: {cls} ({name}) has no signal/slot/property {member!r}")
    assert not errors, "\n".join(errors)


def _dynamic_properties():
    """Dynamic properties Slicer's own python reads from widgets (e.g. parameterNodeWrapper's SlicerParameterName)."""
    return {m for f in (API / "Slicer/Base/Python/slicer").rglob("*.py")
            for m in re.findall(r"\.property\(\"(\w+)\"\)|PropertyName\s*=\s*\"(\w+)\"", f.read_text(errors="replace"))
            for m in m if m}


def test_every_ui_property_exists():
    errors, dynamic = [], _dynamic_properties()
    for w in ET.parse(UI).iter("widget"):
        members = _members(w.get("class"))
        if members is None:
            errors.append(f"class {w.get('class')} not found")
            continue
        for prop in w.findall("property"):
            if prop.get("name") not in members | dynamic:
                errors.append(f"{w.get('class')} ({w.get('name')}) has no property {prop.get('name')!r}")
    assert not errors, "\n".join(errors)
