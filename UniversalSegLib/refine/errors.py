"""Refinement errors beyond the engine's (:mod:`UniversalSegLib.errors`)."""

from __future__ import annotations

from ..errors import UniversalSegError


class MissingDependencyError(UniversalSegError):
    """An optional package (LiteMedSAM's weights, sam2, onnxruntime) that a refiner needs is not installed."""
