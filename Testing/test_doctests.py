"""The usage examples in the engine's docstrings run as written (those marked ``+SKIP`` need data or a scene)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import UniversalSegLib

MODULES = sorted(m.name for m in pkgutil.walk_packages(UniversalSegLib.__path__, "UniversalSegLib.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run doctest -v on it)"
