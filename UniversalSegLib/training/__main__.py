"""``python -m UniversalSegLib.training CONFIG.yaml [...]`` (also under ``torchrun``): see :func:`main_train`."""

import sys

from UniversalSegLib.training.trainer import main_train

sys.exit(main_train())
