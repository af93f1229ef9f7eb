"""Where training data, splits and caches live: from arguments, else one environment variable each.

Library code never guesses a data folder from its own location. The defaults are the working
directory's, so a checkout run from its root behaves as before:

* ``UNIVERSALSEG_DATA``   the folder holding the datasets (default ``../shared/data``);
* ``UNIVERSALSEG_SPLITS`` the folder of the split files (default ``splits``);
* ``UNIVERSALSEG_CACHE``  caches and work folders such as fine-tuning candidates (default ``cache``).

    >>> import os
    >>> os.environ["UNIVERSALSEG_DATA"] = "/data/med"
    >>> str(data_root())
    '/data/med'
    >>> str(data_root("/elsewhere"))
    '/elsewhere'
    >>> del os.environ["UNIVERSALSEG_DATA"]
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV, SPLITS_ENV, CACHE_ENV = "UNIVERSALSEG_DATA", "UNIVERSALSEG_SPLITS", "UNIVERSALSEG_CACHE"


def _pick(given: str | Path | None, env: str, default: str) -> Path:
    return Path(given if given is not None else os.environ.get(env) or default)


def data_root(given: str | Path | None = None) -> Path:
    """The datasets folder: ``given``, else ``$UNIVERSALSEG_DATA``, else ``../shared/data``."""
    return _pick(given, DATA_ENV, "../shared/data")


def splits_root(given: str | Path | None = None) -> Path:
    """The split files' folder: ``given``, else ``$UNIVERSALSEG_SPLITS``, else ``splits``."""
    return _pick(given, SPLITS_ENV, "splits")


def cache_root(given: str | Path | None = None) -> Path:
    """Caches and work folders: ``given``, else ``$UNIVERSALSEG_CACHE``, else ``cache``."""
    return _pick(given, CACHE_ENV, "cache")
