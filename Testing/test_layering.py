"""Run-time code never imports training code: outside ``UniversalSegLib/training/`` no module imports
``UniversalSegLib.training`` (absolute or relative, at module level or inside a function).

The one exception is the command-line dispatcher, ``UniversalSegLib/cli.py``: its ``train``, ``evaluate``
and ``export`` sub-commands are training commands, so those handlers (and only they) import training
code, lazily inside the function. Segmenting, refining and the Slicer module never load it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import UniversalSegLib

PACKAGE = Path(UniversalSegLib.__file__).resolve().parent
TRAINING = "UniversalSegLib.training"
#: (file relative to the package, function) whose body may import training code.
ALLOWED = {("cli.py", "cmd_evaluate"), ("cli.py", "cmd_train"), ("cli.py", "_check_fresh_run_dir"),
           ("cli.py", "cmd_export"), ("cli.py", "cmd_add_task")}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``UniversalSegLib/refine/cli.py`` -> ``UniversalSegLib.refine.cli`` (a package's ``__init__`` -> the package)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``from X import ...`` names (relative levels resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_training(name: str) -> bool:
    return name == TRAINING or name.startswith(TRAINING + ".")


def training_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, str | None]]:
    """(line, imported module, enclosing function or None) for every import of training code in ``source``."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, function) for a in child.names if _is_training(a.name))
            elif isinstance(child, ast.ImportFrom):
                target = _absolute(child, module, is_package)
                names = [target] + [f"{target}.{a.name}" for a in child.names]
                hit = next((n for n in names if _is_training(n)), None)
                if hit is not None:
                    found.append((child.lineno, hit, function))
            visit(child, inner)

    visit(ast.parse(source), None)
    return found


def _outside_training() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts[:1])


@pytest.mark.parametrize("path", _outside_training(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_module_does_not_import_training(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    found = training_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    bad = [(line, name, fn) for line, name, fn in found if (relative, fn) not in ALLOWED]
    assert not bad, (f"UniversalSegLib/{relative} imports training code {bad}: move what run-time code needs out "
                     "of UniversalSegLib/training/ (e.g. into refine/) or the command into training/")


def test_every_module_is_checked() -> None:
    names = {module_name(p) for p in _outside_training()}
    assert {"UniversalSegLib.cli", "UniversalSegLib.refine.pipeline", "UniversalSegLib.slicer_logic.logic"} <= names
    assert not any(_is_training(n) for n in names)


@pytest.mark.parametrize("source", [
    "from ..training.data import read_dataset\n",  # what refine/finetune.py did before it moved
    "def f():\n    from ..training.data import read_dataset\n",
    "from .. import training\n",
    "from ..training import train\n",
    "import UniversalSegLib.training.trainer as t\n",
    "from UniversalSegLib.training import data\n",
    "from UniversalSegLib import training\n",
])
def test_the_check_sees_training_imports(source: str) -> None:
    assert training_imports(source, "UniversalSegLib.refine.finetune")


@pytest.mark.parametrize("source", [
    "from .slices import SIZE\n",
    "from ..models import HermesNet\n",
    "import UniversalSegLib.trainingwheels\n",
    "from .training import x\n",  # UniversalSegLib.refine.training, not the training package
])
def test_the_check_ignores_other_imports(source: str) -> None:
    assert not training_imports(source, "UniversalSegLib.refine.finetune")


def test_the_check_resolves_package_relative_imports() -> None:
    assert training_imports("from .training import config\n", "UniversalSegLib", is_package=True)
    assert not training_imports("from .training import config\n", "UniversalSegLib.refine", is_package=True)
