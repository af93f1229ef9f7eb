"""Engines and refiners the job tests inject into the worker process (``"job_fakes:..."``, Testing on its path).

Each runs in the worker, so state does not outlive one job.
"""

from __future__ import annotations

import os
import time

import numpy as np

from UniversalSegLib import api
from UniversalSegLib.refine.refiner import Refiner

_calls = {"n": 0}


def out_of_memory_once(image, **kwargs):
    """The real engine, except that the first call raises like torch does when memory runs out."""
    _calls["n"] += 1
    if _calls["n"] == 1:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return api.segment(image, **kwargs)


def out_of_memory_always(image, **kwargs):
    """Always out of memory (the fall-back must give up with a message)."""
    raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate ... out of memory")


def slow(image, progress=None, **kwargs):
    """Reports inference progress slowly and never finishes on its own (cancel tests)."""
    progress("load", 0.0)
    for step in range(10_000):
        progress("infer", step / 10_000)
        time.sleep(0.05)
    raise AssertionError("slow engine was not cancelled")


def crash(image, **kwargs):
    """The process dies without saying why (a segfault in a library, say)."""
    os.write(2, b"Fatal Python error: simulated crash\n")
    os._exit(3)


class BoxRefiner(Refiner):
    """Fills each prompt box minus a one-voxel rim in i and j, one slice at a time (``delay`` s per slice)."""

    name = "box"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def refine(self, image, objects, kind="MR", task=None, axis=None):
        import SimpleITK as sitk

        shape = sitk.GetArrayViewFromImage(image).shape
        masks = []
        for prompts in objects:
            (i0, j0, k0), (i1, j1, k1) = prompts.box.lo, prompts.box.hi
            mask = np.zeros(shape, bool)
            for k in range(k0, k1 + 1):
                self._next_slice()
                time.sleep(self.delay)
                mask[k, j0 + 1:j1, i0 + 1:i1] = True
            masks.append(mask)
        return masks

    def refine_slices(self, slices, objects, space):  # pragma: no cover - refine() is overridden
        raise NotImplementedError


def box_refiner(request: dict) -> BoxRefiner:
    return BoxRefiner()


def slow_box_refiner(request: dict) -> BoxRefiner:
    return BoxRefiner(delay=0.5)
