"""Training of Hermes models on partially labelled datasets (``universalseg train CONFIG.yaml``).

Modules: :mod:`.config` (YAML -> TrainConfig), :mod:`.data` (dataset.json, checks, splits, cache),
:mod:`.augment` (patches), :mod:`.sampler` (mixed batches, task rows, partial labels), :mod:`.losses`,
:mod:`.optim` (LAMB, schedule, EMA), :mod:`.trainer` (the loop and baseline mode; its parts
:mod:`.distributed`, :mod:`.run_data`, :mod:`.checkpointing`, :mod:`.validation`, :mod:`.runlog`,
:mod:`.train_cli`), :mod:`.evaluate`, :mod:`.export` and :mod:`.finetune` (the refiner's decoder).
Run-time code (segmenting, refining, the Slicer module) never imports this package (Testing/test_layering.py).
Importing this package is cheap; torch and MONAI load with the modules that need them.

>>> from UniversalSegLib.training import load_config, train  # doctest: +SKIP
>>> best = train(load_config("configs/smoke.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "load_config", "main_train", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "load_config"):
        from UniversalSegLib.training import config

        return getattr(config, name)
    if name in ("train", "main_train"):
        from UniversalSegLib.training import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
