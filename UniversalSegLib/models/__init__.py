"""Hermes network, its configuration presets, and checkpoint I/O.

>>> from UniversalSegLib.models import HermesNet, preset
>>> net = HermesNet(preset("small", num_tasks=7, num_modalities=6))
>>> net.null_task
7
"""

from UniversalSegLib.models.checkpoints import LoadedModel, load_checkpoint, save_checkpoint
from UniversalSegLib.models.config import PRESETS, HermesConfig, preset
from UniversalSegLib.models.hermes import HermesNet, HermesOutput

__all__ = [
    "PRESETS",
    "HermesConfig",
    "HermesNet",
    "HermesOutput",
    "LoadedModel",
    "load_checkpoint",
    "preset",
    "save_checkpoint",
]
