"""Which Slicer the module supports, checked before anything that needs Python 3.10 is imported.

This file and ``UniversalSeg.py`` must parse and run on Slicer 5.8's Python 3.9 (``vermin -t=3.9-`` in CI,
``Testing/test_slicer_versions.py``): an older Slicer then shows one message with the minimum version instead
of a traceback. The engine (``UniversalSegLib``) and the panel sections need Python 3.10 or newer.

    >>> unsupported((3, 12, 10))  # Slicer 5.10 and 5.12 bundle Python 3.12
    >>> print(unsupported((3, 9, 10)))  # doctest: +NORMALIZE_WHITESPACE
    UniversalSeg needs 3D Slicer 5.10 or newer (tested with 5.10 and 5.12). This Slicer runs Python 3.9.10
    (Slicer 5.8 or older). Install a current Slicer from https://download.slicer.org, then UniversalSeg from its
    Extensions Manager.
"""

#: The oldest Slicer release the module supports, and the releases it is tested with.
MIN_SLICER = "5.10"
TESTED_SLICER = ("5.10", "5.12")
#: The oldest Python the engine runs on (Slicer 5.8 bundles 3.9.10; 5.10 and 5.12 bundle 3.12.10).
MIN_PYTHON = (3, 10)
DOWNLOAD = "https://download.slicer.org"


def supported_text():
    """The one line about supported versions (module help text, README, .s4ext description).

    >>> supported_text()
    'Requires 3D Slicer 5.10 or newer (tested with 5.10 and 5.12; Python 3.10+).'
    """
    return "Requires 3D Slicer {} or newer (tested with {}; Python {}.{}+).".format(
        MIN_SLICER, " and ".join(TESTED_SLICER), *MIN_PYTHON)


def unsupported(version_info):
    """``None`` when this Python can run UniversalSeg, else the message the panel shows instead of the module.

    ``version_info``: ``sys.version_info`` (or a tuple like it).
    """
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return None
    python = ".".join(str(part) for part in version_info[:3])
    return ("UniversalSeg needs 3D Slicer {} or newer (tested with {}). This Slicer runs Python {} (Slicer 5.8 or "
            "older). Install a current Slicer from {}, then UniversalSeg from its Extensions Manager.").format(
                MIN_SLICER, " and ".join(TESTED_SLICER), python, DOWNLOAD)
