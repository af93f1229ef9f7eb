"""Errors a user can act on.

Every failure caused by input (a file, a task name, a checkpoint, an output path) is raised as a
:class:`UniversalSegError` whose message names the problem and says what to do. The CLI prints it
and exits with status 2; the Slicer logic shows it in a message box.

>>> err = InputError("image.nii.gz is 2D (256 x 256)", "give a 3D volume")
>>> str(err)
'image.nii.gz is 2D (256 x 256). What to do: give a 3D volume.'
"""

from __future__ import annotations


class UniversalSegError(Exception):
    """Base class: ``problem`` says what is wrong, ``hint`` what the user can do about it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}. What to do: {hint}." if hint else f"{problem}.")


class InputError(UniversalSegError):
    """An image file or array that cannot be segmented as given."""


class CatalogError(UniversalSegError):
    """An unknown task, group or modality, or a task that does not apply to the modality."""


class CheckpointError(UniversalSegError):
    """A model checkpoint that cannot be read or does not fit the network or the catalog."""


class OutputError(UniversalSegError):
    """An output path that cannot be written."""


class CancelledError(UniversalSegError):
    """The user cancelled a running job; nothing was written."""
