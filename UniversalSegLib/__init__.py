"""UniversalSeg engine: universal medical image segmentation, importable without Slicer.

Heavy dependencies (torch, MONAI) load only when a model is used, so ``import UniversalSegLib``
stays fast for the Slicer module and the CLI's ``tasks`` command.

>>> from UniversalSegLib import __version__
>>> isinstance(__version__, str)
True
"""

__version__ = "0.1.0"
