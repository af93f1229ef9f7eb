"""Installing the engine's packages into Slicer's Python without ever replacing Slicer's torch, numpy or SimpleITK.

The pip commands are checked as built, then run for real: pip (this interpreter's) installs a locally built
tiny wheel that declares ``Requires-Dist: torch`` into a fresh virtual environment holding a "torch 1.0", from a
folder that also offers a "torch 99": without ``--no-deps`` pip replaces torch (the control), with
:func:`ensure_dependencies` it does not. Offline is a real pip failure against a closed localhost port.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata
import os
import socket
import subprocess
import sys
import types
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from UniversalSegLib.slicer_logic import dependencies as deps
from UniversalSegLib.slicer_logic.dependencies import (
    DEPENDENCIES,
    KEEP,
    REFINE_BACKEND_DEPENDENCIES,
    TORCH_REQUIREMENT,
    Dependency,
    DependencyError,
    ensure_dependencies,
    pip_install_command,
    subprocess_pip,
)

API = Path(os.environ.get("SLICER_API", "/work/shared/slicer-api"))
UTIL = API / "Slicer" / "Base" / "Python" / "slicer" / "util.py"
PYTORCH_UTILS = API / "SlicerPyTorch" / "PyTorchUtils" / "PyTorchUtils.py"
KEEP_NAMES = {k.lower() for k in KEEP}


def _distribution_names(args: list[str]) -> set[str]:
    """The requirement arguments of a pip command (what it installs), as lower-case names."""
    values = {"-c", "--constraint", "--target", "--find-links", "--index-url", "-r", "--python", "--retries",
              "--timeout"}
    names, skip = set(), False
    for arg in args[1:]:
        if skip:
            skip = False
        elif arg in values:
            skip = True
        elif not arg.startswith("-"):
            names.add(deps._name(arg))
    return names


# ---------------------------------------------------------------------------------------------- the commands
@pytest.mark.parametrize("dep", [d for d in [*DEPENDENCIES, *REFINE_BACKEND_DEPENDENCIES.values()]
                                 if d.route in ("pip", "pip-no-deps")], ids=lambda d: d.requirement)
def test_pip_commands_cannot_replace_torch(dep, tmp_path):
    args = pip_install_command(dep.requirement, tmp_path / "c.txt")
    assert args[0] == "install" and "--no-deps" in args
    assert args[args.index("-c") + 1] == str(tmp_path / "c.txt")
    assert "-r" not in args, "a requirements file would bring its own, unchecked lines"
    assert _distribution_names(args) == {deps._name(dep.requirement)}
    assert not _distribution_names(args) & KEEP_NAMES


@pytest.mark.parametrize("requirement", ["torch", "torch==2.13.0", "Torch>=2", "numpy<3", "SimpleITK", "simpleitk==2.5",
                                         "torchvision"])
def test_pip_is_never_asked_for_torch_numpy_or_simpleitk(requirement):
    with pytest.raises(ValueError, match="never installed with pip"):
        pip_install_command(requirement, "c.txt")


def test_requirements_file_matches_the_dependencies():
    """Resources/requirements.txt (the offline route's file) lists exactly the pip packages, with the same pins."""
    lines = [line.strip() for line in (REPO / "UniversalSeg/Resources/requirements.txt").read_text().splitlines()]
    listed = sorted(line for line in lines if line and not line.startswith("#"))
    assert listed == sorted(d.requirement for d in DEPENDENCIES if d.route == "pip")
    assert not {deps._name(r) for r in listed} & KEEP_NAMES
    pins = {deps._name(line): line for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
            if "==" in line and not line.startswith("#")}
    assert all(pins[deps._name(r)] == r for r in listed), "Slicer gets the engine's tested versions"
    torch_floor = TORCH_REQUIREMENT.removeprefix(">=")
    assert tuple(map(int, pins["torch"].split("==")[1].split("."))) >= tuple(map(int, torch_floor.split(".")))


class Recorder:
    """A pip runner that records each command and the constraints file it was given, and succeeds."""

    def __init__(self, status: int = 0, output: tuple[str, ...] = ()):
        self.calls: list[list[str]] = []
        self.constraints: list[str] = []
        self.status, self.output = status, output

    def __call__(self, args, log):
        self.calls.append(list(args))
        if "-c" in args:
            self.constraints.append(Path(args[args.index("-c") + 1]).read_text(encoding="utf-8"))
        for line in self.output:
            log(line)
        return self.status


ABSENT = Dependency("us_absent_pkg", "us-absent-pkg==1.0", "pip")
ABSENT_TORCH = Dependency("us_absent_torch", "torch", "pytorch")  # stands for a missing torch


def test_every_missing_package_alone_with_no_deps_and_the_present_versions_pinned():
    run, torch_calls, progress, questions = Recorder(), [], [], []
    backend = Dependency("us_absent_weights", "us-absent-weights==0.1", "pip-no-deps")
    result = ensure_dependencies(lambda q: questions.append(q) or True, progress.append,
                                 install_torch=lambda req: torch_calls.append(req) or types.ModuleType("torch"),
                                 dependencies=[ABSENT_TORCH, ABSENT, backend, *DEPENDENCIES], run_pip=run)
    assert result is False  # the recorder installed nothing, so they are still missing; said so
    assert "Still missing" in progress[-1]
    assert torch_calls == [TORCH_REQUIREMENT], "torch goes through the PyTorch extension, with the version floor"
    assert [_distribution_names(c) for c in run.calls] == [{"us-absent-pkg"}, {"us-absent-weights"}]
    assert all("--no-deps" in c for c in run.calls)
    pinned = dict(line.split("==") for line in run.constraints[0].split())
    assert pinned["torch"] == importlib.metadata.version("torch")
    assert pinned["numpy"] == importlib.metadata.version("numpy")
    assert pinned["SimpleITK"] == importlib.metadata.version("SimpleITK")
    assert [p for p in progress if p.startswith("Installing")] == [
        "Installing us-absent-pkg==1.0 (1 of 3)", "Installing us-absent-weights==0.1 (2 of 3)",
        f"Installing torch{TORCH_REQUIREMENT} through the PyTorch extension (3 of 3)"]
    assert len(questions) == 1 and "us-absent-pkg==1.0" in questions[0] and f"torch{TORCH_REQUIREMENT}" in questions[0]
    assert f"numpy {importlib.metadata.version('numpy')}" in questions[0], "the prompt says what is kept"


def test_nothing_missing_asks_nothing():
    assert ensure_dependencies(None, None, dependencies=DEPENDENCIES, run_pip=None) is True


def test_declining_installs_nothing():
    run, torch_calls, progress = Recorder(), [], []
    assert ensure_dependencies(lambda q: False, progress.append, install_torch=torch_calls.append,
                               dependencies=[ABSENT_TORCH, ABSENT], run_pip=run) is False
    assert run.calls == [] and torch_calls == []
    assert progress == ["Installation cancelled: nothing was installed"]


def test_missing_slicer_package_is_never_installed():
    run = Recorder()
    with pytest.raises(DependencyError, match="reinstall 3D Slicer"):
        ensure_dependencies(lambda q: pytest.fail("no question: there is nothing to install"), print,
                            dependencies=[Dependency("us_absent_numpy", "numpy", "slicer"), ABSENT], run_pip=run)
    assert run.calls == []


def test_torch_without_the_pytorch_extension_says_so_before_asking(monkeypatch):
    monkeypatch.setattr(deps.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("PyTorchUtils", "us_absent_torch") else object())
    with pytest.raises(DependencyError, match="PyTorch extension.*missing") as raised:
        ensure_dependencies(lambda q: pytest.fail("asked"), print, dependencies=[ABSENT_TORCH], run_pip=Recorder())
    assert "Extension Manager" in raised.value.hint


def test_a_pip_failure_that_is_not_offline_names_the_package():
    run = Recorder(status=1, output=("ERROR: No matching distribution found for us-absent-pkg==1.0",))
    with pytest.raises(DependencyError) as raised:
        ensure_dependencies(lambda q: True, print, dependencies=[ABSENT], run_pip=run)
    assert raised.value.problem.startswith("pip could not install us-absent-pkg==1.0 (exit status 1")
    assert "no internet" not in raised.value.problem and "--no-deps" in raised.value.hint


# ------------------------------------------------------------------------------------- Slicer's real API
def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def _parameters(node: ast.FunctionDef) -> list[str]:
    return [a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]]


@pytest.mark.skipif(not UTIL.is_file(), reason="no slicer-api copy")
def test_slicer_pip_runner_matches_slicer_util():
    """slicer_pip calls slicer.util.executePythonModule("pip", args, blocking=True, logCallback=log)."""
    params = _parameters(_functions(UTIL)["executePythonModule"])
    assert params[:2] == ["module", "args"] and {"blocking", "logCallback"} <= set(params)
    # blocking mode raises CalledProcessError on failure (logProcessOutput), which slicer_pip turns into a status
    assert "CalledProcessError" in ast.get_source_segment(UTIL.read_text(), _functions(UTIL)["logProcessOutput"])


@pytest.mark.skipif(not PYTORCH_UTILS.is_file(), reason="no PyTorch extension copy")
def test_torch_install_matches_the_pytorch_extension(monkeypatch):
    install = _functions(PYTORCH_UTILS)["installTorch"]
    assert {"askConfirmation", "torchVersionRequirement"} <= set(_parameters(install))
    calls = []

    class FakeLogic:  # stands for PyTorchUtils.PyTorchUtilsLogic, which needs Slicer's Qt
        def installTorch(self, **kwargs):
            calls.append(kwargs)
            return "torch"

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeLogic))
    assert deps.install_torch_with_pytorch_utils() == "torch"
    assert calls == [{"askConfirmation": False, "torchVersionRequirement": TORCH_REQUIREMENT}]
    assert set(calls[0]) <= set(_parameters(install))
    assert "class PyTorchUtilsLogic" in PYTORCH_UTILS.read_text(encoding="utf-8")


def test_default_runner_outside_slicer_is_this_interpreter():
    assert deps.default_pip_runner() is subprocess_pip  # slicer-core has no slicer.app


# ------------------------------------------------------------------------------------------- real pip runs
@pytest.fixture(autouse=True)
def plain_pip(monkeypatch):
    """pip as on a user's computer: no configuration files or PIP_* variables of this machine (local wheel
    folders, version caps) leak into the real pip runs."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """Write a minimal, valid pure-Python wheel (one module, METADATA with ``Requires-Dist``, RECORD)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_in_zip, text in files.items():
            zf.writestr(name_in_zip, text)
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """A folder offering ``us_tinypkg`` (needs torch>=99 and numpy), a "torch" 1.0 and 99, a "numpy" 1.0."""
    folder = tmp_path_factory.mktemp("wheels")
    _wheel(folder, "us_tinypkg", "0.1", ["torch>=99", "numpy"])
    _wheel(folder, "torch", "1.0", [])
    _wheel(folder, "torch", "99.0", [])
    _wheel(folder, "numpy", "1.0", [])
    return folder


def _venv_with_torch(root: Path, wheels: Path) -> tuple[Path, Path]:
    """A fresh virtual environment (no pip of its own) with the folder's "torch 1.0" in it: (python, site)."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert subprocess_pip(["--python", str(python), "--isolated", "install", "--no-index", "--find-links",
                           str(wheels), "torch==1.0"], print) == 0
    site = next(root.glob("lib/python*/site-packages")) if os.name != "nt" else root / "Lib" / "site-packages"
    return python, site


def _versions(site: Path) -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])}


def test_real_pip_install_never_pulls_or_replaces_torch(tmp_path, wheels, monkeypatch):
    # Control: the plain install pip would do replaces the environment's torch (so the check below means something).
    python, site = _venv_with_torch(tmp_path / "control", wheels)
    assert subprocess_pip(["--python", str(python), "--isolated", "install", "--no-index", "--find-links",
                           str(wheels), "us_tinypkg==0.1"], print) == 0
    assert _versions(site) == {"torch": "99.0", "numpy": "1.0", "us_tinypkg": "0.1"}

    python, site = _venv_with_torch(tmp_path / "env", wheels)
    own_site = Path(importlib.metadata.distribution("torch").locate_file(""))
    before = _versions(own_site)["torch"]
    lines, progress = [], []

    def run_pip(args, log):  # pip of this interpreter, installing into the fresh environment
        return subprocess_pip(["--python", str(python), "--isolated", *args], log)

    monkeypatch.syspath_prepend(str(site))  # so the final check finds what was installed there
    tiny = Dependency("us_tinypkg", "us-tinypkg==0.1", "pip")
    assert ensure_dependencies(lambda q: True, progress.append, dependencies=[tiny], run_pip=run_pip,
                               pip_options=["--no-index", "--find-links", str(wheels)], log=lines.append) is True, lines
    assert _versions(site) == {"torch": "1.0", "us_tinypkg": "0.1"}, "torch neither pulled nor replaced"
    assert _versions(own_site)["torch"] == before, "this interpreter's torch is untouched"
    assert progress[-1] == "All dependencies are installed"
    assert any("us_tinypkg" in line or "us-tinypkg" in line for line in lines), "pip's output reaches the log"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: connections are refused


def _offline_options(target: Path) -> list[str]:
    return ["--isolated", "--target", str(target), "--index-url", f"http://127.0.0.1:{_closed_port()}/simple",
            "--retries", "1", "--timeout", "2"]


def test_offline_is_reported_with_what_to_install_by_hand(tmp_path):
    lines = []
    with pytest.raises(DependencyError) as raised:
        ensure_dependencies(lambda q: True, print, dependencies=[ABSENT], run_pip=subprocess_pip,
                            pip_options=_offline_options(tmp_path / "t"), log=lines.append)
    assert raised.value.problem == "no internet connection: install these packages by hand: us-absent-pkg==1.0", lines
    assert "pip download --no-deps -d wheels us-absent-pkg==1.0" in raised.value.hint
    assert "'--no-deps', '--no-index', '--find-links'" in raised.value.hint
    assert any("Connection refused" in line or "NewConnectionError" in line for line in lines)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_offline_torch_install_is_reported_too(tmp_path):
    def install_torch(requirement):  # what PyTorchUtils raises when light-the-torch cannot reach the index
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install",
                                                f"torch{requirement}"])

    with pytest.raises(DependencyError) as raised:
        ensure_dependencies(lambda q: True, print, install_torch=install_torch, dependencies=[ABSENT_TORCH],
                            run_pip=subprocess_pip, pip_options=_offline_options(tmp_path / "t"))
    assert raised.value.problem == f"no internet connection: install these packages by hand: torch{TORCH_REQUIREMENT}"
    assert "PyTorch extension" in raised.value.hint


def test_torch_install_failure_online_is_not_called_offline(tmp_path, wheels):
    def install_torch(requirement):
        raise RuntimeError("CUDA driver too old")

    with pytest.raises(DependencyError, match="could not install torch.*CUDA driver too old"):
        ensure_dependencies(lambda q: True, print, install_torch=install_torch, dependencies=[ABSENT_TORCH],
                            run_pip=subprocess_pip,
                            pip_options=["--isolated", "--no-index", "--find-links", str(wheels)])


def test_the_module_compiles_without_slicer_or_torch():
    """dependencies.py is imported by the module at start-up, before torch exists: it imports neither."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.modules['torch'] = None; "
            "sys.modules['monai'] = None; sys.modules['PyTorchUtils'] = None; "
            "import UniversalSegLib.slicer_logic.dependencies as d; print(d.TORCH_REQUIREMENT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == TORCH_REQUIREMENT
