"""``python -m UniversalSegLib.training CONFIG.yaml [...]`` (also under ``torchrun``): see :func:`main_train`.

OpenMP threads are told to sleep rather than spin while waiting (``OMP_WAIT_POLICY=PASSIVE``) unless
the environment says otherwise: on a CPU shared with other jobs, spinning threads made 2-thread
training steps about twice slower in our measurements. It must be set before torch loads.
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from UniversalSegLib.training.trainer import main_train  # noqa: E402

sys.exit(main_train())
