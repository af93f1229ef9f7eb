"""Never destroy the user's data: output checks and atomic, exclusive commits.

Every command that writes goes through two steps:

1. :func:`check_outputs` before any work: an output that is (or resolves to, through symlinks,
   ``..``, hard links or another spelling) one of the inputs is refused, two outputs that are the
   same file are refused, and an existing output is refused unless ``overwrite`` is true.
2. :func:`atomic_output` (or :func:`commit`) when writing: the content goes to a temporary file in
   the output's folder, which then becomes the output in one step. Without ``overwrite`` the
   commit is an exclusive create (``os.link``), so of two runs racing for the same output the
   second fails instead of silently replacing the first; with ``overwrite`` it is ``os.replace``.
   A write that fails midway (full disk, permissions) removes its temporary file.

>>> check_outputs(["out/seg.nii.gz", "out/seg.json"], inputs=["ct.nii.gz"], overwrite=False)  # doctest: +SKIP
>>> with atomic_output("out/seg.nii.gz", overwrite=False) as tmp:  # doctest: +SKIP
...     sitk.WriteImage(labels, str(tmp))
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError

PathLike = str | os.PathLike

_SUFFIXES = (".seg.nrrd", ".nii.gz", ".tar.gz")


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (symlinks, ``..``, hard links, case-insensitive file systems).

    >>> same_file("a/../b.txt", "b.txt")
    True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare the resolved spellings
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike] = (), overwrite: bool = False) -> None:
    """Raise :class:`~UniversalSegLib.errors.OutputError` unless every output can be written safely.

    ``inputs`` are the files the command reads (image, mask, checkpoint, reports); folders among
    them are skipped. Call this before the expensive work so that a bad path fails in a second.
    """
    inputs = [Path(p) for p in inputs if p is not None and str(p)]
    seen: list[Path] = []
    for output in (Path(p) for p in outputs if p is not None and str(p)):
        for source in inputs:
            if same_file(output, source):
                raise OutputError(f"output '{output}' is the input file '{source}'; writing it would destroy the input",
                                  "choose an output path that is not one of the inputs")
        for other in seen:
            if same_file(output, other):
                raise OutputError(f"outputs '{other}' and '{output}' are the same file",
                                  "give each output its own path")
        seen.append(output)
        if output.is_dir():
            raise OutputError(f"output path '{output}' is a folder", "give a file name such as result.nii.gz")
        parent = output.parent
        if not parent.is_dir():
            raise OutputError(f"output folder '{parent}' does not exist", "create it first or choose another path")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"output folder '{parent}' is not writable", "choose a folder you can write to")
        if (output.exists() or output.is_symlink()) and not overwrite:
            raise OutputError(f"output '{output}' already exists",
                              "pass --overwrite to replace it, or choose another path")


def _suffix(path: Path) -> str:
    lower = path.name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def temp_path(final: PathLike) -> Path:
    """A new empty temporary file beside ``final`` with the same extension (SimpleITK picks the format by it)."""
    final = Path(final)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{_suffix(final)}", dir=final.parent)
    except OSError as err:
        raise OutputError(f"cannot write in '{final.parent}' ({err.strerror})",
                          "choose a folder you can write to") from None
    os.close(fd)
    return Path(name)


def commit(tmp: PathLike, final: PathLike, overwrite: bool = False) -> Path:
    """Make the written temporary file ``tmp`` the output ``final`` in one step; ``tmp`` is gone afterwards.

    Without ``overwrite`` an existing ``final`` (also one another run created meanwhile) is never
    replaced: :class:`~UniversalSegLib.errors.OutputError` is raised and ``tmp`` removed.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain write would
        if overwrite:
            os.replace(tmp, final)
            return final
        try:
            os.link(tmp, final)  # exclusive: fails if final exists
        except FileExistsError:
            raise OutputError(f"output '{final}' already exists (another run may have written it meanwhile)",
                              "pass --overwrite to replace it, or choose another path") from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # no hard links on this file system: best-effort exclusive rename
            if final.exists() or final.is_symlink():
                raise OutputError(f"output '{final}' already exists",
                                  "pass --overwrite to replace it, or choose another path") from None
            os.replace(tmp, final)
        return final
    except OSError as err:
        raise OutputError(f"cannot write '{final}' ({err.strerror})", "check free disk space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(final: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Check ``final`` (see :func:`check_outputs`), yield a temporary path beside it, commit on success.

    >>> with atomic_output("report.json", overwrite=True) as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")

    On any exception the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    check_outputs([final], inputs, overwrite)
    tmp = temp_path(final)
    try:
        yield tmp
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{final}' ({err.strerror})", "check free disk space and permissions") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, final, overwrite)
