"""Static check of the Slicer API the module and its glue use, against the real Slicer files in ``slicer-api``.

``check()`` reads the module files (``UniversalSeg/**/*.py``, ``Testing/slicer_smoke.py``,
``UniversalSegLib/slicer_logic/**/*.py``) and ``.ui`` files with ``ast``/XML and follows each receiver whose class
it can tell statically: ``slicer.util`` functions (signatures from Slicer's ``util.py``), the ScriptedLoadableModule
base classes, ``parameterNodeWrapper`` names and the wrapped parameter node's members, ``PyTorchUtils``, Qt classes
(PySide6 metaobjects), CTK/qMRML widgets (their headers, ``.ui`` classes) and MRML/VTK classes (the slicer-core
wheel's classes; return types from their docstrings). It returns a :class:`Report`: what was checked, the errors,
and what was skipped with the reason. Refreshing ``slicer-api`` is the only upkeep when Slicer changes.

    python Testing/slicer_api.py [FILE.py|FILE.ui ...]     # prints the report; exit 1 on errors
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import inspect
import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = Path(os.environ.get("SLICER_API", "/work/shared/slicer-api"))
SLICER_PY = API / "Slicer/Base/Python/slicer"
PY_GLOBS = ("UniversalSeg/**/*.py", "UniversalSegLib/slicer_logic/**/*.py", "Testing/slicer_smoke.py")
UI_GLOBS = ("UniversalSeg/Resources/UI/*.ui",)

#: Attributes Slicer sets only inside the application (``slicer/__init__.py``), by the class they hold.
SLICER_GLOBALS = {"mrmlScene": "vtkMRMLScene"}
#: Attributes the ScriptedLoadableModule bases set whose class their file shows: ``self.layout =
#: self.parent.layout()`` of the module panel, a QVBoxLayout.
BASE_ATTRIBUTES = {("ScriptedLoadableModuleWidget", "layout"): "QVBoxLayout"}
#: Untyped parameters and variables in UniversalSegLib/slicer_logic by name: the MRML/VTK classes they hold (a
#: member must exist in one of them). Names not listed stay unresolved and are reported as skipped.
PARAMETER_TYPES = {
    "scene": ("vtkMRMLScene",),
    "volume": ("vtkMRMLScalarVolumeNode",), "volume_node": ("vtkMRMLScalarVolumeNode",),
    "reference_volume": ("vtkMRMLScalarVolumeNode",),
    "segmentation_node": ("vtkMRMLSegmentationNode",),
    "segmentation": ("vtkSegmentation", "vtkMRMLSegmentationNode"),
    "node": ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode",
             "vtkMRMLMarkupsFiducialNode"),
    "roi": ("vtkMRMLMarkupsROINode",), "roi_node": ("vtkMRMLMarkupsROINode",),
    "points": ("vtkMRMLMarkupsFiducialNode",), "segment": ("vtkSegment",),
}
SIGNAL_OPS = {"connect", "disconnect", "emit"}
#: Return types that stand for a subclass the caller knows (``GetNodeByID`` returns a ``vtkMRMLNode``): a member
#: missing from the base class is reported as not checked, not as an error.
BASE_CLASSES = {"vtkMRMLNode", "vtkObject", "vtkDataObject", "vtkMRMLDisplayableNode", "vtkMRMLStorableNode"}


# ------------------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    api: str
    name: str
    status: str  # "ok", "error" or "skipped"
    detail: str = ""

    def __str__(self):
        return f"{self.file}:{self.line}: {self.name}: {self.detail}"


@dataclass
class Report:
    findings: set[Finding] = field(default_factory=set)

    def _of(self, status):
        return sorted((f for f in self.findings if f.status == status), key=lambda f: (f.file, f.line, f.name))

    @property
    def errors(self) -> list[Finding]:
        return self._of("error")

    def covered(self) -> list[tuple[str, str]]:
        """(API, name) checked and found, once each (a name whose call was also checked only in its call form)."""
        names = {(f.api, f.name) for f in self.findings if f.status == "ok"}
        calls = {(api, n.split("(")[0]) for api, n in names if "(" in n}
        return sorted(x for x in names if "(" in x[1] or x not in calls)

    def uncovered(self) -> list[tuple[str, str]]:
        """(name, reason) that could not be checked statically, once each."""
        return sorted({(f.name, f.detail) for f in self.findings if f.status == "skipped"})

    def text(self) -> str:
        lines = [f"ERRORS ({len(self.errors)}):", *(f"  {e}" for e in self.errors)]
        by_api: dict[str, list[str]] = {}
        for api, name in self.covered():
            by_api.setdefault(api, []).append(name)
        lines.append(f"CHECKED ({len(self.covered())} names):")
        lines += [f"  {api}: {', '.join(names)}" for api, names in sorted(by_api.items())]
        where: dict[tuple[str, str], list[str]] = {}
        for f in self._of("skipped"):
            where.setdefault((f.name, f.detail), []).append(f"{Path(f.file).name}:{f.line}")
        lines.append(f"NOT CHECKED ({len(self.uncovered())}):")
        lines += [f"  {name}: {reason} [{', '.join(where[name, reason])}]" for name, reason in self.uncovered()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- signatures
@dataclass(frozen=True)
class Sig:
    params: tuple[str, ...]  # positional-or-keyword (and positional-only first)
    required: int
    varargs: bool
    kwonly: tuple[str, ...] = ()
    kwrequired: tuple[str, ...] = ()
    varkw: bool = False
    posonly: int = 0

    def bound(self) -> Sig:
        return Sig(self.params[1:], max(0, self.required - 1), self.varargs, self.kwonly, self.kwrequired,
                   self.varkw, max(0, self.posonly - 1))

    def text(self) -> str:
        parts = [p if i < self.required else f"{p}=..." for i, p in enumerate(self.params)]
        parts += ["*args"] if self.varargs else (["*"] if self.kwonly else [])
        parts += list(self.kwonly) + (["**kwargs"] if self.varkw else [])
        return f"({', '.join(parts)})"

    def problem(self, npos: int, keywords: list[str], star: bool, dstar: bool) -> str | None:
        if not star and npos > len(self.params) and not self.varargs:
            return f"{npos} positional arguments, accepts at most {len(self.params)}"
        filled = set(self.params[:npos])
        for kw in keywords:
            if kw in self.params[:self.posonly] or (kw not in self.params and kw not in self.kwonly):
                if not self.varkw:
                    return f"no keyword argument {kw!r}"
            elif kw in filled and not star:
                return f"{kw!r} given twice"
        if not (star or dstar):
            missing = [p for p in self.params[npos:self.required] if p not in keywords]
            missing += [k for k in self.kwrequired if k not in keywords]
            if missing:
                return f"missing required argument(s) {', '.join(missing)}"
        return None


def sig_of(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> Sig:
    a = fn.args
    params = tuple(x.arg for x in a.posonlyargs + a.args)
    return Sig(params, len(params) - len(a.defaults), a.vararg is not None, tuple(x.arg for x in a.kwonlyargs),
               tuple(x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None),
               a.kwarg is not None, len(a.posonlyargs))


def sig_of_callable(obj) -> Sig | None:
    try:
        s = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    P = inspect.Parameter
    ps = list(s.parameters.values())
    pos = [p for p in ps if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    kwo = [p for p in ps if p.kind == P.KEYWORD_ONLY]
    return Sig(tuple(p.name for p in pos), sum(p.default is P.empty for p in pos),
               any(p.kind == P.VAR_POSITIONAL for p in ps), tuple(p.name for p in kwo),
               tuple(p.name for p in kwo if p.default is P.empty), any(p.kind == P.VAR_KEYWORD for p in ps),
               sum(p.kind == P.POSITIONAL_ONLY for p in pos))


# ------------------------------------------------------------------------------ Slicer's Python files
@dataclass
class PyMember:
    kind: str  # "method", "static", "class", "property", "attr"
    sig: Sig | None = None


@dataclass
class PyClass:
    name: str
    members: dict[str, PyMember]
    bases: list[str]
    init_parent_attrs: set[str] = field(default_factory=set)


@dataclass
class PyModule:
    api: str
    names: dict[str, PyMember]  # module-level functions ("static") and other names ("attr")
    classes: dict[str, PyClass]


def _top_level(body):
    for stmt in body:
        if isinstance(stmt, ast.If | ast.Try):
            yield from _top_level(stmt.body + stmt.orelse + getattr(stmt, "finalbody", []))
            for handler in getattr(stmt, "handlers", []):
                yield from _top_level(handler.body)
        else:
            yield stmt


def _class(node: ast.ClassDef) -> PyClass:
    members: dict[str, PyMember] = {}
    parent_attrs: set[str] = set()
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            decos = {ast.unparse(d) for d in stmt.decorator_list}
            kind = ("static" if "staticmethod" in decos else "class" if "classmethod" in decos
                    else "property" if "property" in decos or any(d.endswith(".setter") for d in decos) else "method")
            members[stmt.name] = PyMember(kind, sig_of(stmt))
            for sub in ast.walk(stmt):
                stored = isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                if stored and isinstance(sub.value, ast.Name):
                    if sub.value.id == "self":
                        members.setdefault(sub.attr, PyMember("attr"))
                    elif sub.value.id == "parent" and stmt.name == "__init__":
                        parent_attrs.add(sub.attr)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                if isinstance(t, ast.Name):
                    members[t.id] = PyMember("attr")
    return PyClass(node.name, members, [ast.unparse(b) for b in node.bases], parent_attrs)


def _parse_module(api: str, path: Path, exported=None) -> PyModule:
    tree = ast.parse(path.read_text(errors="replace"))
    names: dict[str, PyMember] = {}
    classes: dict[str, PyClass] = {}
    for stmt in _top_level(tree.body):
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            names[stmt.name] = PyMember("static", sig_of(stmt))
        elif isinstance(stmt, ast.ClassDef):
            classes[stmt.name] = _class(stmt)
            init = classes[stmt.name].members.get("__init__")
            names[stmt.name] = PyMember("class", init.sig.bound() if init and init.sig else None)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names[n.id] = PyMember("attr")
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias in stmt.names:
                if alias.name != "*":
                    names[(alias.asname or alias.name).split(".")[0]] = PyMember("attr")
    if exported is not None:
        names = {k: v for k, v in names.items() if k in exported}
    return PyModule(api, names, classes)


def _all_of(path: Path):
    for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in stmt.targets):
            return set(ast.literal_eval(stmt.value))
    return None


@functools.cache
def slicer_util() -> PyModule:
    return _parse_module("slicer.util", SLICER_PY / "util.py")


@functools.cache
def scripted_loadable_module() -> PyModule:
    return _parse_module("ScriptedLoadableModule", SLICER_PY / "ScriptedLoadableModule.py")


@functools.cache
def pytorch_utils() -> PyModule:
    return _parse_module("PyTorchUtils", API / "SlicerPyTorch/PyTorchUtils/PyTorchUtils.py")


@functools.cache
def parameter_node_wrapper() -> PyModule:
    """The names ``slicer.parameterNodeWrapper`` exports (its ``__init__``'s star imports and explicit names)."""
    folder = SLICER_PY / "parameterNodeWrapper"
    merged = PyModule("parameterNodeWrapper", {}, {})
    for stmt in ast.parse((folder / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module:
            path = folder / f"{stmt.module}.py"
            star = any(a.name == "*" for a in stmt.names)
            exported = (_all_of(path) or None) if star else {a.name for a in stmt.names}
            part = _parse_module("parameterNodeWrapper", path)
            if star and exported is None:
                exported = {n for n in part.names if not n.startswith("_")}
            merged.names.update({k: v for k, v in part.names.items() if k in (exported or set())})
            merged.classes.update(part.classes)
    return merged


@functools.cache
def wrapped_members() -> dict[str, PyMember]:
    """Members ``@parameterNodeWrapper`` adds to the class (``checkedSetAttr(classtype, name, f)``)."""
    tree = ast.parse((SLICER_PY / "parameterNodeWrapper/wrapper.py").read_text(encoding="utf-8"))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    members: dict[str, PyMember] = {}
    for call in ast.walk(tree):
        if (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "checkedSetAttr" and len(call.args) == 3
                and isinstance(call.args[1], ast.Constant)):
            fn = call.args[2]
            fn = defs.get(fn.id) if isinstance(fn, ast.Name) else fn
            is_function = isinstance(fn, ast.FunctionDef | ast.Lambda)
            members[call.args[1].value] = PyMember("method", sig_of(fn)) if is_function else PyMember("attr")
    init = defs.get("_initMethod")
    for sub in ast.walk(init) if init else ():
        if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and getattr(sub.value, "id", "") == "self":
            members.setdefault(sub.attr, PyMember("attr"))
    return members


PY_MODULES = {"slicer.util": slicer_util, "slicer.ScriptedLoadableModule": scripted_loadable_module,
              "slicer.parameterNodeWrapper": parameter_node_wrapper, "PyTorchUtils": pytorch_utils}


def _py_lookup(cls_name: str, member: str, seen=()):
    """(api, owner class, PyMember) for a member of a class of Slicer's Python files or of unittest."""
    for load in PY_MODULES.values():
        mod = load()
        cls = mod.classes.get(cls_name)
        if cls is None or cls_name in seen:
            continue
        if member in cls.members:
            return mod.api, cls_name, cls.members[member]
        for base in cls.bases:
            found = _py_lookup(base.split(".")[-1], member, (*seen, cls_name)) if base != "unittest.TestCase" else \
                _real_lookup("unittest", "TestCase", member)
            if found:
                return found
        return None
    return None


def _real_lookup(module: str, cls_name: str, member: str):
    cls = getattr(importlib.import_module(module), cls_name)
    if not hasattr(cls, member):
        return None
    obj = inspect.getattr_static(cls, member)
    kind = "static" if isinstance(obj, staticmethod) else "method" if callable(obj) else "attr"
    return module, cls_name, PyMember(kind, sig_of_callable(obj) if callable(obj) else None)


# ---------------------------------------------------------------------------------------- Qt and CTK
@functools.cache
def _qt_modules():
    return [importlib.import_module(f"PySide6.{m}") for m in ("QtCore", "QtGui", "QtWidgets")]


def _qt_class(name: str):
    for mod in _qt_modules():
        obj = getattr(mod, name, None)
        if isinstance(obj, type):
            return obj
    return None


@functools.cache
def header(cls: str) -> Path | None:
    return next(iter(sorted(API.rglob(f"{cls}.h"))), None)


def _enum_names(owner) -> set[str]:
    names = set()
    for n in dir(owner):
        obj = getattr(owner, n, None)
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            names |= set(obj.__members__)
    return names


@functools.cache
def qt_members(cls: str, seen=()) -> dict[str, str] | None:
    """name -> "signal" / "slot" / "method" / "property" / "enum" of a Qt (PySide6) or CTK/qMRML (header) class."""
    qt_cls = _qt_class(cls)
    if qt_cls is not None:
        out = {n: "method" for n in dir(qt_cls) if not n.startswith("_")}
        out.update(dict.fromkeys(_enum_names(qt_cls), "enum"))
        meta = getattr(qt_cls, "staticMetaObject", None)
        if meta is not None:
            for i in range(meta.methodCount()):
                m = meta.method(i)
                out[bytes(m.name()).decode()] = "signal" if m.methodType() == m.MethodType.Signal else "slot"
            out.update({meta.property(i).name(): "property" for i in range(meta.propertyCount())})
        return out
    path = header(cls)
    if path is None or cls in seen:
        return None
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(errors="replace"), flags=re.S)
    base = re.search(rf"class\s+(?:\w+\s+)?{cls}\s*:\s*public\s+(\w+)", text)
    out: dict[str, str] = {}
    if base:
        inherited = qt_members(base.group(1), (*seen, cls))
        if inherited is None:
            return None
        out.update(inherited)
    out.update(dict.fromkeys(re.findall(r"Q_INVOKABLE[^;(]*?(\w+)\s*\(", text), "method"))
    end = r"(?=\n\s*(?:public|protected|private|signals|Q_SIGNALS)\b|\n};)"
    for kind, section in (("signal", r"(?:signals|Q_SIGNALS)"), ("slot", r"public\s+(?:slots|Q_SLOTS)")):
        for block in re.findall(section + r"\s*:(.*?)" + end, text, re.S):
            out.update(dict.fromkeys(re.findall(r"(\w+)\s*\([^;]*\)\s*(?:const)?\s*(?:override)?\s*;", block), kind))
    out.update(dict.fromkeys(re.findall(r"Q_PROPERTY\(\s*[\w:<>*& ]+?[\s*&](\w+)\s+READ", text), "property"))
    return out


@functools.cache
def signal_args(cls: str, signal: str, seen=()) -> tuple[str, ...] | None:
    """The C++ argument types of a signal (``("vtkMRMLNode",)``), from PySide6 or the class's header chain."""
    qt_cls = _qt_class(cls)
    if qt_cls is not None:
        meta = qt_cls.staticMetaObject
        for i in range(meta.methodCount()):
            m = meta.method(i)
            if bytes(m.name()).decode() == signal and m.methodType() == m.MethodType.Signal:
                return tuple(re.sub(r"\W", "", bytes(t).decode()) for t in m.parameterTypes())
        return None
    path = header(cls)
    if path is None or cls in seen:
        return None
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(errors="replace"), flags=re.S)
    for block in re.findall(r"(?:signals|Q_SIGNALS)\s*:(.*?)(?=\n\s*(?:public|protected|private)\b|\n};)", text, re.S):
        m = re.search(rf"\b{signal}\s*\(([^;]*)\)\s*;", block)
        if m:
            args = _split_top(m.group(1))
            return tuple(re.sub(r"\bconst\b|[*&]", "", a).split()[0] for a in args)
    base = re.search(rf"class\s+(?:\w+\s+)?{cls}\s*:\s*public\s+(\w+)", text)
    return signal_args(base.group(1), signal, (*seen, cls)) if base else None


# ------------------------------------------------------------------------------------------- MRML/VTK
@functools.cache
def vtk_class(name: str):
    import slicer  # the slicer-core wheel: MRML, segmentation and markups classes
    import vtk

    for mod in (slicer, vtk):
        obj = getattr(mod, name, None)
        if isinstance(obj, type) and name.startswith("vtk"):
            return obj
    return None


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([{" and 1 or (-1 if ch in ")]}" else 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def doc_overloads(doc: str, member: str) -> tuple[tuple[int, int, bool, str], ...]:
    """(min args, max args, has self, return class) of each ``member(...) -> T`` signature in a docstring (VTK's
    and PySide6's wrappers both write them; ``/`` and ``*`` markers are not arguments)."""
    out = []
    for m in re.finditer(rf"^{re.escape(member)}\(", doc or "", re.M):
        depth, i = 1, m.end()
        while i < len(doc) and depth:
            depth += {"(": 1, ")": -1}.get(doc[i], 0)
            i += 1
        params = [p for p in _split_top(doc[m.end():i - 1]) if p not in ("/", "*")]
        ret = re.match(r"\s*->\s*([\w.]+)", doc[i:])
        has_self = bool(params) and params[0] == "self"
        params = params[1:] if has_self else params
        if any(p.startswith("*") for p in params):
            continue  # *args: any count
        out.append((sum("=" not in p for p in params), len(params), has_self,
                    ret.group(1).split(".")[-1] if ret else ""))
    return tuple(out)


@functools.cache
def vtk_overloads(cls: str, member: str) -> tuple[tuple[int, int, bool, str], ...]:
    return doc_overloads(getattr(getattr(vtk_class(cls), member, None), "__doc__", None) or "", member)


@functools.cache
def qt_overloads(cls: str, member: str) -> tuple[tuple[int, int, bool, str], ...]:
    return doc_overloads(getattr(getattr(_qt_class(cls), member, None), "__doc__", None) or "", member)


def count_problem(overloads, npos: int, unbound: bool) -> str | None:
    """Why ``npos`` positional arguments fit none of the overloads (``None``: one fits, or none is known)."""
    if not overloads:
        return None
    if any(o[0] + (unbound and o[2]) <= npos <= o[1] + (unbound and o[2]) for o in overloads):
        return None
    counts = sorted({f"{o[0]}-{o[1]}" if o[0] != o[1] else str(o[0]) for o in overloads})
    return f"{npos} arguments; its signatures take {' or '.join(counts)}"


# ---------------------------------------------------------------------------------------------- analysis
K = tuple  # a kind: ("mod", name), ("qt", cls), ("vtk", cls), ("pyfunc", api, owner, name, mode), ...


def _names_in(node) -> list[str]:
    return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]


@dataclass
class _Line:
    lineno: int


class Checker:
    def __init__(self, py_files, ui_files, root=ROOT):
        self.root = Path(root)
        self.files = [Path(f) for f in py_files]
        self.ui_files = [Path(f) for f in ui_files]
        self.report = Report()
        self.trees = {f: ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in self.files}
        self.extra: dict[Path, ast.Module] = {}  # project modules followed but not checked
        self.params: dict[tuple, list[set]] = {}  # (file, qualname) -> kinds of each parameter
        self.selfattrs: dict[tuple, dict[str, set]] = {}  # (file, class) -> attr -> kinds
        self.record = False
        self.file: Path | None = None
        self.sink: list[Finding] | None = None
        self._envs: dict[Path, dict[str, set]] = {}

    # ---------------------------------------------------------------------------------- bookkeeping
    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def add(self, node, api, name, status, detail=""):
        if self.record and self.sink is not None:
            self.sink.append(Finding(self._rel(self.file), getattr(node, "lineno", 0), api, name, status, detail))
        elif self.record:
            self.report.findings.add(Finding(self._rel(self.file), getattr(node, "lineno", 0), api, name, status,
                                             detail))

    def tree(self, path: Path) -> ast.Module | None:
        if path in self.trees:
            return self.trees[path]
        if path not in self.extra:
            self.extra[path] = ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else None
        return self.extra[path]

    def ui_class(self, ui: Path, widget: str | None = None) -> str | None:
        for w in ET.parse(ui).iter("widget"):
            if widget is None or w.get("name") == widget:
                return w.get("class")
        return None

    # ---------------------------------------------------------------------------------------- modules
    def module_file(self, dotted: str, level: int, here: Path) -> Path | None:
        base = here.parent
        for _ in range(max(0, level - 1)):
            base = base.parent
        for folder in ([self.root, here.parent] if level == 0 else [base]):  # level 0: sys.path has both
            target = folder.joinpath(*dotted.split(".")) if dotted else folder
            for cand in (target.with_suffix(".py"), target / "__init__.py"):
                if cand.is_file() and dotted:
                    return cand
        return None

    def module_env(self, path: Path) -> dict[str, set]:
        if path not in self._envs:
            self._envs[path] = self._module_env(path)
        return dict(self._envs[path])

    def _module_env(self, path: Path) -> dict[str, set]:
        env: dict[str, set] = {}
        tree = self.tree(path)
        for stmt in ast.walk(tree) if tree else ():
            if isinstance(stmt, ast.Import):
                for a in stmt.names:
                    top = a.name.split(".")[0]
                    if a.asname is None and top in ("slicer", "qt", "vtk", "ctk", "PyTorchUtils"):
                        env[top] = {("mod", top)}
                    elif a.asname and a.name in PY_MODULES:
                        env[a.asname] = {("mod", a.name)}
                    elif a.asname and (sub := self.module_file(a.name, 0, path)) is not None:
                        env[a.asname] = {("proj", sub)}
                    elif a.asname is None and "." not in a.name and (sub := self.module_file(a.name, 0, path)):
                        env[a.name] = {("proj", sub)}
                    else:
                        env.setdefault((a.asname or a.name).split(".")[0], {("foreign",)})
            elif isinstance(stmt, ast.ImportFrom):
                mod = stmt.module or ""
                for a in stmt.names:
                    name = a.asname or a.name
                    if stmt.level == 0 and (mod.split(".")[0] in ("slicer", "qt", "vtk", "ctk") or mod in PY_MODULES):
                        env[name] = {("import", mod, a.name, stmt.lineno)}
                    elif stmt.level or self.module_file(mod, 0, path) is not None:
                        sub = self.module_file(f"{mod}.{a.name}" if mod else a.name, stmt.level, path)
                        if sub is not None:
                            env[name] = {("proj", sub)}
                        else:
                            src = self.module_file(mod, stmt.level, path)
                            if src is not None:
                                env[name] = {("projname", src, a.name)}
                    else:
                        env.setdefault(name, {("foreign",)})
        for stmt in tree.body if tree else ():
            if isinstance(stmt, ast.ClassDef):
                env[stmt.name] = {("own", path, stmt.name)}
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                env[stmt.name] = {("projfunc", path, stmt.name, "plain")}
        return env

    def proj_attr(self, path: Path, name: str, depth=0) -> set:
        env = self.module_env(path)
        kinds = env.get(name, set())
        out = set()
        for k in kinds:
            if k[0] == "projname" and depth < 5:
                out |= self.proj_attr(k[1], k[2], depth + 1)
            elif k[0] == "import":  # checked where that module is analysed
                saved, self.record = self.record, False
                out |= self.resolve_import(k, None)
                self.record = saved
            else:
                out.add(k)
        return out

    def resolve_import(self, k, node) -> set:
        _, mod, name, _line = k
        mod = "slicer.parameterNodeWrapper" if mod.startswith("slicer.parameterNodeWrapper.") else mod
        base = {("mod", mod)} if mod in PY_MODULES or mod in ("slicer", "qt", "vtk", "ctk") else set()
        return set().union(*(self.attr(b, name, node) for b in base)) if base else set()

    # -------------------------------------------------------------------------------------- attribute
    def attr(self, k: K, name: str, node, store=False) -> set:  # noqa: C901 - one branch per kind
        tag = k[0]
        if tag == "foreign":
            return {k}
        if tag == "mod":
            return self.mod_attr(k[1], name, node)
        if tag in ("pyclass", "pyobj"):
            found = _py_lookup(k[2], name)
            if found is None:
                self.add(node, k[1], f"{k[2]}.{name}", "error", f"{k[2]} (and its bases) has no member {name!r}")
                return set()
            api, owner, member = found
            self.add(node, api, f"{owner}.{name}", "ok")
            if member.kind in ("method", "static", "class") and member.sig is not None:
                mode = "bound" if tag == "pyobj" or member.kind == "class" else "unbound"
                return {("pyfunc", api, owner, name, "static" if member.kind == "static" else mode, member.sig)}
            if (owner, name) in BASE_ATTRIBUTES:
                return {("qt", BASE_ATTRIBUTES[owner, name])}
            return set()
        if tag in ("qtclass", "qt"):
            return self.qt_attr(k, name, node)
        if tag == "qtmember":
            if name in SIGNAL_OPS:
                if k[3] != "signal":
                    self.add(node, k[4], f"{k[1]}.{k[2]}.{name}", "error", f"{k[1]}.{k[2]} is a {k[3]}, not a signal")
                else:
                    self.add(node, k[4], f"{k[1]}.{k[2]}.{name}", "ok")
                    return {("signalop", k[1], k[2], name)}
            return set()
        if tag in ("vtkclass", "vtk", "vtkbase"):
            cls = vtk_class(k[1])
            if not hasattr(cls, name) and tag == "vtkbase":
                self.add(node, "unresolved", f"{k[1]}.{name}", "skipped",
                         f"value typed as {k[1]} (a base class); its subclass is known only at run time")
                return set()
            if not hasattr(cls, name):
                self.add(node, "MRML/VTK (slicer-core)", f"{k[1]}.{name}", "error", f"{k[1]} has no member {name!r}")
                return set()
            self.add(node, "MRML/VTK (slicer-core)", f"{k[1]}.{name}", "ok")
            if callable(getattr(cls, name)) and not isinstance(getattr(cls, name), type):
                return {("vtkmethod", k[1], name, "unbound" if tag == "vtkclass" else "bound")}
            return set()
        if tag == "ui":
            cls = self.ui_class(k[1], name)
            if cls is None:
                self.add(node, ".ui", f"ui.{name}", "error", f"no widget {name!r} in {k[1].name}")
                return set()
            return {("qt", cls)}
        if tag == "uiroot":
            return self.qt_attr(("qt", self.ui_class(k[1]) or "QWidget"), name, node)
        if tag in ("own", "ownobj", "pnw"):
            return self.own_attr(k, name, node, store)
        if tag == "parent":
            allowed = scripted_loadable_module().classes["ScriptedLoadableModule"].init_parent_attrs
            if name in allowed:
                self.add(node, "ScriptedLoadableModule", f"ScriptedLoadableModule.parent.{name}", "ok")
            else:
                self.add(node, "ScriptedLoadableModule", f"parent.{name}", "skipped",
                         "a qSlicerScriptedLoadableModule property ScriptedLoadableModule.__init__ does not set; "
                         "its header is not in slicer-api")
            return set()
        if tag == "proj":
            return self.proj_attr(k[1], name)
        if tag == "slicermodule":
            if name == "logic":
                return {("modulelogic", k[1])}
            self.add(node, "slicer.modules", f"slicer.modules.{k[1]}.{name}", "skipped",
                     "a qSlicerAbstractCoreModule member; modules exist only in the running application")
        return set()

    def mod_attr(self, mod: str, name: str, node) -> set:
        if mod in PY_MODULES:
            table = PY_MODULES[mod]()
            member = table.names.get(name)
            label = f"{mod}.{name}" if mod != "slicer.ScriptedLoadableModule" else name
            if member is None:
                self.add(node, table.api, label, "error", f"{mod} has no {name!r} ({self._source(mod)})")
                return set()
            self.add(node, table.api, label, "ok")
            if name in table.classes:
                return {("pyclass", table.api, name)}
            if member.kind == "static":
                return {("pyfunc", table.api, "", name, "static", member.sig)}
            return set()
        if mod == "slicer":
            if name in ("util", "ScriptedLoadableModule", "parameterNodeWrapper"):
                return {("mod", "slicer." + name if name != "util" else "slicer.util")}
            if name == "modules":
                return {("mod", "slicer.modules")}
            if name in SLICER_GLOBALS:
                self.add(node, "slicer", f"slicer.{name}", "ok")
                return {("vtk", SLICER_GLOBALS[name])}
            if vtk_class(name) is not None:
                self.add(node, "MRML/VTK (slicer-core)", f"slicer.{name}", "ok")
                return {("vtkclass", name)}
            if header(name) is not None:
                self.add(node, "CTK/qMRML (header)", f"slicer.{name}", "ok")
                return {("qtclass", name)}
            self.add(node, "slicer", f"slicer.{name}", "skipped",
                     "set only inside the Slicer application; not in slicer-core or slicer-api")
            return set()
        if mod == "slicer.modules":
            self.add(node, "slicer.modules", f"slicer.modules.{name}", "skipped",
                     "modules exist only in the running application")
            return {("slicermodule", name)}
        if mod == "qt":
            if name == "Qt" or _qt_class(name) is not None:
                self.add(node, "Qt (PySide6)", f"qt.{name}", "ok")
                return {("qtclass", name)}
            self.add(node, "Qt (PySide6)", f"qt.{name}", "error", f"Qt has no class {name!r}")
            return set()
        if mod == "ctk":
            if header(name) is not None:
                self.add(node, "CTK/qMRML (header)", f"ctk.{name}", "ok")
                return {("qtclass", name)}
            self.add(node, "CTK/qMRML (header)", f"ctk.{name}", "skipped", "its header is not in slicer-api")
            return set()
        if mod == "vtk":
            import vtk

            if vtk_class(name) is not None:
                self.add(node, "MRML/VTK (slicer-core)", f"vtk.{name}", "ok")
                return {("vtkclass", name)}
            if hasattr(vtk, name):
                self.add(node, "MRML/VTK (slicer-core)", f"vtk.{name}", "ok")
            else:
                self.add(node, "MRML/VTK (slicer-core)", f"vtk.{name}", "error", f"vtk has no {name!r}")
        return set()

    @staticmethod
    def _source(mod):
        return {"slicer.util": "Slicer's util.py", "PyTorchUtils": "PyTorchUtils.py"}.get(mod, mod)

    def qt_attr(self, k, name, node) -> set:
        cls = k[1]
        if cls == "Qt":
            names = _enum_names(_qt_modules()[0].Qt) | set(dir(_qt_modules()[0].Qt))
            if name in names:
                self.add(node, "Qt (PySide6)", f"Qt.{name}", "ok")
            else:
                self.add(node, "Qt (PySide6)", f"Qt.{name}", "error", f"Qt has no enum value {name!r}")
            return set()
        members = qt_members(cls)
        api = "Qt (PySide6)" if _qt_class(cls) else "CTK/qMRML (header)"
        if members is None:
            self.add(node, api, f"{cls}.{name}", "skipped", f"class {cls} not in slicer-api or PySide6")
            return set()
        if name not in members:
            self.add(node, api, f"{cls}.{name}", "error", f"{cls} has no signal/slot/property {name!r}")
            return set()
        self.add(node, api, f"{cls}.{name}", "ok")
        return {("qtmember", cls, name, members[name], api)}

    def own_attr(self, k, name, node, store) -> set:
        path, cls = k[1], k[2]
        tree = self.tree(path)
        cdef = next((c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls), None) if tree else None
        if cdef is None:
            return set()
        for stmt in cdef.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == name:
                return {("projfunc", path, f"{cls}.{name}", "bound" if k[0] != "own" else "unbound")}
        for stmt in cdef.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
                stmt, ast.AnnAssign) and k[0] != "pnw" else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return set()
        if k[0] == "pnw":
            fields = {s.target.id for s in cdef.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
            if name in fields:
                self.add(node, "parameterNodeWrapper", f"{cls}.{name} (parameter)", "ok")
            elif name in wrapped_members():
                self.add(node, "parameterNodeWrapper", f"@parameterNodeWrapper.{name}", "ok")
                member = wrapped_members()[name]
                if member.sig is not None:
                    return {("pyfunc", "parameterNodeWrapper", "@parameterNodeWrapper", name, "bound", member.sig)}
            else:
                self.add(node, "parameterNodeWrapper", f"{cls}.{name}", "error",
                         f"{cls} declares no parameter {name!r} and parameterNodeWrapper adds no such member")
            return set()
        attrs = self.selfattrs.get((path, cls), {})
        if name in attrs and k[0] == "ownobj":
            kinds = {x for x in attrs[name] if x}
            if name == "parent" and any(b[0] == "pyclass" and b[2] == "ScriptedLoadableModule"
                                        for b in self.bases(path, cdef)):
                return {("parent",)}
            return kinds
        bases = self.bases(path, cdef)
        for b in bases:
            if b[0] in ("pyclass",):
                found = _py_lookup(b[2], name)
                if found:
                    if name == "parent" and b[2] == "ScriptedLoadableModule":
                        return {("parent",)}
                    return self.attr(("pyobj" if k[0] == "ownobj" else "pyclass", b[1], b[2]), name, node)
            elif b[0] == "own":
                got = self.own_attr((k[0], b[1], b[2]), name, node, store)
                if got:
                    return got
        if bases and all(b[0] == "pyclass" for b in bases) and not store and name not in attrs:
            self.add(node, "ScriptedLoadableModule", f"{cls}.{name}", "error",
                     f"{cls} defines no {name!r} and its Slicer bases ({', '.join(b[2] for b in bases)}) neither")
        return set()

    def bases(self, path, cdef) -> list:
        env = self.module_env(path)
        out = []
        for b in cdef.bases:
            out += sorted(self.static_kinds(b, env), key=str) or [("unknown",)]
        return out

    def static_kinds(self, expr, env) -> set:
        """Kinds of a module-level name or dotted name (no findings recorded)."""
        if isinstance(expr, ast.Name):
            out = set()
            for k in env.get(expr.id, set()):
                if k[0] == "import":
                    saved, self.record = self.record, False
                    out |= self.resolve_import(k, expr)
                    self.record = saved
                elif k[0] == "projname":
                    out |= self.proj_attr(k[1], k[2])
                else:
                    out.add(k)
            return out
        if isinstance(expr, ast.Attribute):
            saved, self.record = self.record, False
            out = set().union(*[self.attr(k, expr.attr, expr) for k in self.static_kinds(expr.value, env)] or [set()])
            self.record = saved
            return out
        return set()

    # -------------------------------------------------------------------------------------------- calls
    def call(self, k: K, node: ast.Call, argkinds: list[set]) -> set:  # noqa: C901
        npos = sum(not isinstance(a, ast.Starred) for a in node.args)
        star = any(isinstance(a, ast.Starred) for a in node.args)
        kws = [kw.arg for kw in node.keywords if kw.arg]
        dstar = any(kw.arg is None for kw in node.keywords)
        tag = k[0]
        if tag == "foreign":
            return {k}
        if tag == "pyfunc":
            _, api, owner, name, mode, sig = k
            sig = sig.bound() if mode == "bound" else sig
            label = f"{api}.{name}" if not owner else f"{owner}.{name}"
            label = label if owner or api != "ScriptedLoadableModule" else name
            problem = sig.problem(npos, kws, star, dstar)
            self.add(node, api, f"{label}{sig.text()}", "error" if problem else "ok", problem or "")
            if api == "slicer.util" and name == "loadUI":
                ui = self._ui_for(node)
                return {("uiroot", ui)} if ui else set()
            if api == "slicer.util" and name == "childWidgetVariables":
                return {("ui", a[1]) for arg in argkinds for a in arg if a[0] == "uiroot"}
            return set()
        if tag == "pyclass":
            init = _py_lookup(k[2], "__init__")
            if init and init[2].sig is not None:
                sig = init[2].sig.bound()
                problem = sig.problem(npos, kws, star, dstar)
                self.add(node, k[1], f"{k[2]}{sig.text()}", "error" if problem else "ok", problem or "")
            return {("pyobj", k[1], k[2])}
        if tag == "signalop" and k[3] == "connect" and argkinds:  # the slot gets the signal's arguments
            types = signal_args(k[1], k[2]) or ()
            kinds = [{("vtkbase" if t in BASE_CLASSES else "vtk", t)} if vtk_class(t) else
                     {("qt", t)} if _qt_class(t) else set() for t in types]
            for slot in argkinds[0]:
                if slot[0] == "projfunc":
                    self.propagate((slot[1], slot[2]), kinds, bound=slot[3] == "bound")
            return set()
        if tag == "qtclass":
            return {("qt", k[1])}
        if tag == "qtmember":
            if not _qt_class(k[1]):
                return set()
            overloads = qt_overloads(k[1], k[2])
            if overloads and not (star or dstar or kws):
                problem = count_problem(overloads, npos, False)
                self.add(node, k[4], f"{k[1]}.{k[2]}()" + ("" if problem else f" ({npos} args)"),
                         "error" if problem else "ok", problem or "")
            rets = {o[3] for o in overloads if o[3] and _qt_class(o[3])}
            return {("qt", r) for r in rets}
        if tag == "vtkclass":
            return {("vtk", k[1])}
        if tag == "vtkmethod":
            return self.vtk_call(k, node, npos, star or dstar or bool(kws))
        if tag == "own":
            self.propagate((k[1], f"{k[2]}.__init__"), argkinds, bound=True)
            return {("pnw" if self.is_wrapped(k[1], k[2]) else "ownobj", k[1], k[2])}
        if tag == "projfunc":
            self.propagate((k[1], k[2]), argkinds, bound=k[3] == "bound")
            return set()
        if tag == "modulelogic":
            import slicer

            wanted = {f"vtkslicer{k[1]}modulelogic", f"vtkslicer{k[1]}logic"}
            cls = next((n for n in dir(slicer) if n.lower() in wanted), None)
            if cls:
                self.add(node, "slicer.modules", f"slicer.modules.{k[1]}.logic() -> {cls}", "ok")
                return {("vtk", cls)}
            self.add(node, "slicer.modules", f"slicer.modules.{k[1]}.logic()", "skipped",
                     "no vtkSlicer*Logic class of that module in slicer-core")
        return set()

    def vtk_call(self, k, node, npos, loose) -> set:
        _, cls, name, mode = k
        overloads = vtk_overloads(cls, name)
        label = f"{cls}.{name}"
        if overloads and not loose:
            problem = count_problem(overloads, npos, mode == "unbound")
            self.add(node, "MRML/VTK (slicer-core)", f"{label}()" + ("" if problem else f" ({npos} args)"),
                     "error" if problem else "ok", problem or "")
            if problem:
                return set()
        if name in ("AddNewNodeByClass", "CreateNodeByClass", "AddNode") and node.args:
            names = [n for n in _names_in(node.args[0]) if n.startswith("vtk")]
            if names and all(vtk_class(n) for n in names):
                return {("vtk", n) for n in names}
        rets = {o[3] for o in overloads if o[3] and vtk_class(o[3])}
        return {("vtkbase" if r in BASE_CLASSES else "vtk", r) for r in rets}

    def _ui_for(self, node) -> Path | None:
        names = [Path(s).name for s in _names_in(node) if s.endswith(".ui")]
        for ui in self.ui_files:
            if ui.name in names:
                return ui
        return self.ui_files[0] if len(self.ui_files) == 1 else None

    def is_wrapped(self, path, cls) -> bool:
        tree = self.tree(path)
        cdef = next((c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls), None) if tree else None
        env = self.module_env(path)
        return bool(cdef) and any(
            any(x[0] == "pyfunc" and x[3] == "parameterNodeWrapper"
                for x in self.static_kinds(d.func if isinstance(d, ast.Call) else d, env))
            for d in cdef.decorator_list)

    def propagate(self, key, argkinds, bound):
        slots = self.params.setdefault(key, [])
        for i, kinds in enumerate(argkinds, start=1 if bound else 0):
            while len(slots) <= i:
                slots.append(set())
            slots[i] |= kinds

    # --------------------------------------------------------------------------------------- traversal
    def ev(self, e, env) -> set:  # noqa: C901
        if e is None:
            return set()
        if isinstance(e, ast.Name):
            return set(env.get(e.id, set()))
        if isinstance(e, ast.Attribute):
            base = self.ev(e.value, env)
            if not base:
                self.unresolved(e)
                return set()
            return self.union(base, lambda k: self.attr(k, e.attr, e, isinstance(e.ctx, ast.Store)))
        if isinstance(e, ast.Call):
            fkinds = self.ev(e.func, env)
            argkinds = [self.ev(a, env) for a in e.args]
            for kw in e.keywords:
                self.ev(kw.value, env)
            if (isinstance(e.func, ast.Name) and e.func.id in ("getattr", "hasattr") and len(e.args) >= 2
                    and isinstance(e.args[1], ast.Constant) and isinstance(e.args[1].value, str)):
                return self.probe(e, argkinds[0], e.args[1].value)
            return self.union(fkinds, lambda k: self.call(k, e, argkinds))
        if isinstance(e, ast.BoolOp):
            return set().union(*(self.ev(v, env) for v in e.values))
        if isinstance(e, ast.IfExp):
            self.ev(e.test, env)
            return self.ev(e.body, env) | self.ev(e.orelse, env)
        if isinstance(e, ast.NamedExpr):
            kinds = self.ev(e.value, env)
            env[e.target.id] = kinds
            return kinds
        if isinstance(e, ast.Lambda):
            inner = {k: v for k, v in env.items() if k not in {a.arg for a in e.args.args}}
            self.ev(e.body, inner)
            return set()
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.ev(child, env)
            elif isinstance(child, ast.comprehension):
                self.ev(child.iter, env)
                for cond in child.ifs:
                    self.ev(cond, env)
            elif isinstance(child, ast.keyword):
                self.ev(child.value, env)
        return set()

    def probe(self, e: ast.Call, kinds: set, name: str) -> set:
        """``getattr(x, "Name", default)`` / ``hasattr``: the code copes with the member's absence, so a missing one
        is reported as not checked (optional), a present one as checked."""
        label = f"{e.func.id}({ast.unparse(e.args[0])}, {name!r})"
        if not kinds:
            if name[:1].isupper() or self.file and "slicer_logic" in self.file.parts:
                self.add(e, "dynamic", label, "skipped", "probed with getattr/hasattr on a value of unknown class")
            return set()
        outer, self.sink = self.sink, []
        found = self.union(kinds, lambda k: self.attr(k, name, e))
        part, self.sink = self.sink, outer
        for f in part:
            if f.status == "error":
                f = Finding(f.file, f.line, "dynamic", label, "skipped",
                            f"optional (probed with {e.func.id}): {f.detail}")
            if outer is not None:
                outer.append(f)
            elif self.record:
                self.report.findings.add(f)
        return found if e.func.id == "getattr" else set()

    def union(self, kinds, fn) -> set:
        """fn over each kind of a value; a member missing from some of its possible classes is no error when
        another has it (a value that is one of several node classes)."""
        if len(kinds) <= 1:
            return set().union(*(fn(k) for k in kinds)) if kinds else set()
        outer, results, found = self.sink, set(), []
        for k in sorted(kinds, key=str):
            self.sink = []
            results |= fn(k)
            found.append(self.sink)
        self.sink = outer
        flat = [f for part in found for f in part]
        if any(all(f.status == "ok" for f in part) for part in found):  # one of the classes has it
            flat = [f for f in flat if f.status == "ok"]
        elif any(not any(f.status == "error" for f in part) for part in found):  # unknown subclass: not checked
            flat = [f for f in flat if f.status != "error"]
        for f in flat:
            if outer is not None:
                outer.append(f)
            else:
                self.report.findings.add(f)
        return results

    def unresolved(self, e: ast.Attribute):
        if self.file is None or not self.record:
            return
        if re.fullmatch(r"[A-Z][a-z]\w*", e.attr):  # VTK/MRML-style method names
            self.add(e, "unresolved", f"{ast.unparse(e.value)}.{e.attr}", "skipped",
                     "receiver's class unknown statically (untyped value)")

    def bind(self, target, kinds, env, cls_key):
        if isinstance(target, ast.Name):
            if (all(k[0] == "vtkbase" for k in kinds) and target.id in PARAMETER_TYPES
                    and "slicer_logic" in self.file.parts):
                kinds = {("vtk", c) for c in PARAMETER_TYPES[target.id] if vtk_class(c)}
            env[target.id] = env.get(target.id, set()) | kinds if target.id in env and kinds else kinds
        elif isinstance(target, ast.Attribute):
            if isinstance(target.value, ast.Name) and target.value.id == "self" and cls_key:
                self.selfattrs.setdefault(cls_key, {}).setdefault(target.attr, set()).update(kinds)
                return
            base = self.ev(target.value, env)
            for k in base:
                self.attr(k, target.attr, target, store=True)
        elif isinstance(target, ast.Tuple | ast.List):
            for t in target.elts:
                self.bind(t, set(), env, cls_key)
        else:
            self.ev(target, env)

    def stmts(self, body, env, cls_key):  # noqa: C901
        for s in body:
            if isinstance(s, ast.Assign):
                if (len(s.targets) == 1 and isinstance(s.targets[0], ast.Tuple) and isinstance(s.value, ast.Tuple)
                        and len(s.targets[0].elts) == len(s.value.elts)):
                    for t, v in zip(s.targets[0].elts, s.value.elts, strict=True):
                        self.bind(t, self.ev(v, env), env, cls_key)
                    continue
                kinds = self.ev(s.value, env)
                for t in s.targets:
                    self.bind(t, kinds, env, cls_key)
            elif isinstance(s, ast.AnnAssign):
                kinds = self.ev(s.value, env) if s.value else set()
                self.ev(s.annotation, env)
                self.bind(s.target, kinds, env, cls_key)
            elif isinstance(s, ast.AugAssign):
                self.ev(s.value, env)
            elif isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef):
                self.function(s, env, cls_key)
            elif isinstance(s, ast.ClassDef):
                self.klass(s, env)
            elif isinstance(s, ast.For | ast.AsyncFor):
                self.ev(s.iter, env)
                self.bind(s.target, set(), env, cls_key)
                self.stmts(s.body + s.orelse, env, cls_key)
            elif isinstance(s, ast.While | ast.If):
                self.ev(s.test, env)
                self.stmts(s.body + s.orelse, env, cls_key)
            elif isinstance(s, ast.With | ast.AsyncWith):
                for item in s.items:
                    kinds = self.ev(item.context_expr, env)
                    if item.optional_vars is not None:
                        self.bind(item.optional_vars, kinds, env, cls_key)
                self.stmts(s.body, env, cls_key)
            elif isinstance(s, ast.Try):
                self.stmts(s.body + s.orelse + s.finalbody, env, cls_key)
                for h in s.handlers:
                    self.stmts(h.body, env, cls_key)
            elif isinstance(s, ast.Expr | ast.Return | ast.Raise | ast.Assert | ast.Delete):
                for child in ast.iter_child_nodes(s):
                    if isinstance(child, ast.expr):
                        self.ev(child, env)
            elif isinstance(s, ast.ImportFrom) and s.level == 0 and (s.module or "").split(".")[0] in ("slicer",):
                for a in s.names:
                    self.resolve_import(("import", s.module, a.name, s.lineno), s)

    def function(self, fn, env, cls_key):
        qual = f"{cls_key[1]}.{fn.name}" if cls_key else fn.name
        local = dict(env)
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        slots = self.params.get((self.file, qual), [])
        for d in fn.decorator_list:
            self.ev(d, env)
        for i, a in enumerate(args):
            kinds = set(slots[i]) if i < len(slots) else set()
            if a.annotation is not None:
                ann = self.ev(a.annotation, env)
                for k in ann:
                    kinds.add(("vtk", k[1]) if k[0] == "vtkclass" else ("qt", k[1]) if k[0] == "qtclass" else k)
                if not ann and not isinstance(a.annotation, ast.Constant):
                    kinds.add(("foreign",))
            if "slicer_logic" in self.file.parts and a.arg in PARAMETER_TYPES and all(k[0] == "vtkbase" for k in kinds):
                kinds = {("vtk", c) for c in PARAMETER_TYPES[a.arg] if vtk_class(c)}
            local[a.arg] = kinds
        if cls_key and args and args[0].arg == "self":
            is_static = any(getattr(d, "id", "") == "staticmethod" for d in fn.decorator_list)
            if not is_static:
                local["self"] = {("ownobj", self.file, cls_key[1])}
        for dflt in fn.args.defaults:
            self.ev(dflt, env)
        self.stmts(fn.body, local, cls_key)

    def klass(self, cdef, env):
        for b in cdef.bases:
            self.ev(b, env)
        for d in cdef.decorator_list:
            self.ev(d, env)
        self.stmts(cdef.body, dict(env), (self.file, cdef.name))

    def run(self) -> Report:
        """Passes without recording until the kinds flowing into parameters and ``self`` attributes settle, then
        one recording pass, then the ``.ui`` files."""
        def state():
            return (sum(len(k) for slots in self.params.values() for k in slots),
                    sum(len(k) for attrs in self.selfattrs.values() for k in attrs.values()))

        for final in [False] * 8 + [True]:
            before = state()
            self.record = final
            for path, tree in self.trees.items():
                self.file = path
                env = self.module_env(path)
                self.imports(env)
                self.stmts(tree.body, env, None)
            if not final and state() == before:
                self.record = True
                for path, tree in self.trees.items():
                    self.file = path
                    env = self.module_env(path)
                    self.imports(env)
                    self.stmts(tree.body, env, None)
                break
        for ui in self.ui_files:
            self.check_ui(ui)
        return self.report

    def imports(self, env):
        """Check the file's ``from slicer... import`` names and replace env's import entries by their kinds."""
        for name, kinds in list(env.items()):
            out = set()
            for k in kinds:
                if k[0] == "import":
                    out |= self.resolve_import(k, _Line(k[3]))
                elif k[0] == "projname":
                    out |= self.proj_attr(k[1], k[2])
                else:
                    out.add(k)
            env[name] = out

    # ------------------------------------------------------------------------------------------------ .ui
    def check_ui(self, ui: Path):
        self.file = ui
        dynamic = dynamic_properties()
        for w in ET.parse(ui).iter("widget"):
            cls, name = w.get("class"), w.get("name")
            members = qt_members(cls)
            api = "Qt (PySide6)" if _qt_class(cls) else "CTK/qMRML (header)"
            if members is None:
                self.add(w, api, f"{cls} (.ui)", "error", f"class {cls} of {name} not in slicer-api or PySide6")
                continue
            for prop in w.findall("property"):
                pname = prop.get("name")
                if pname in members or pname in dynamic:
                    self.add(w, api, f"{cls}.{pname} (.ui property)", "ok")
                else:
                    self.add(w, api, f"{cls}.{pname}", "error", f"{cls} ({name}) has no property {pname!r}")


@functools.cache
def dynamic_properties() -> frozenset[str]:
    """Dynamic properties Slicer's own Python reads from widgets (e.g. parameterNodeWrapper's SlicerParameterName)."""
    pattern = r"\.property\(\"(\w+)\"\)|PropertyName\s*=\s*\"(\w+)\""
    texts = [f.read_text(errors="replace") for f in SLICER_PY.rglob("*.py")]
    return frozenset(name for text in texts for found in re.findall(pattern, text) for name in found if name)


def discover(root: Path = ROOT) -> tuple[list[Path], list[Path]]:
    py = sorted({p for g in PY_GLOBS for p in Path(root).glob(g) if p.is_file()})
    ui = sorted({p for g in UI_GLOBS for p in Path(root).glob(g)})
    return py, ui


def check(py_files=None, ui_files=None, root: Path = ROOT) -> Report:
    """The report for the given files (default: the discovered module, glue and smoke-test files)."""
    found_py, found_ui = discover(root)
    return Checker(found_py if py_files is None else py_files, found_ui if ui_files is None else ui_files, root).run()


def coverage(report: Report | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(covered (api, name), uncovered (name, reason)) of the project's files."""
    report = report or check()
    return report.covered(), report.uncovered()


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    rep = check([a for a in args if a.suffix == ".py"] or None, [a for a in args if a.suffix == ".ui"] or None)
    print(rep.text())
    sys.exit(1 if rep.errors else 0)
