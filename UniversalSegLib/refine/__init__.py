"""Refinement: a promptable model (LiteMedSAM by default, MedSAM2 optionally) sharpens coarse masks or user boxes.

Light to import; the model code loads when first used. Start here:

* :func:`~.pipeline.refine_labelmap` - a coarse label map + image -> refined label map and the derived 3D boxes
  (what the CLI and the Slicer logic call);
* :class:`~.refiner.LiteMedSAMRefiner`, :class:`~.medsam2.MedSAM2Refiner` - the backends behind
  :class:`~.refiner.Refiner`;
* :mod:`~.prompts` - boxes, points and the prompts derived from a coarse mask (box per piece and slice with the
  validated margin, optionally the coarse mask as dense prompt); :mod:`~.propagate` - following an
  object slice by slice without leaking;
* :mod:`~.decision` - which tasks are refined by default (from ``evaluate --refine`` reports, into the model's
  policy block);
* :mod:`UniversalSegLib.training.finetune` - how ``weights/litemedsam_finetuned.pt`` was trained (training code:
  nothing here imports it).

>>> from UniversalSegLib.refine import Box3D, Prompts
>>> Prompts(box=Box3D.parse("1,2,3,9,9,9")).follows()
True
"""

from .prompts import Box3D, Point, Prompts

__all__ = ["Box3D", "Point", "Prompts"]
