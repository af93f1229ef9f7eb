"""The sections of the UniversalSeg module panel, one file and one ``Resources/UI/<Name>.ui`` each.

``versions`` (imported first, Python 3.9-safe like this file) checks the Slicer/Python version; the rest need
Python 3.10+ and are imported only once that check passed. Each section loads its own ``.ui``, connects its own
widgets and takes the values it shows from ``UniversalSegLib.slicer_logic.widget_glue`` (tested without Qt):

- ``inputs``: input volume, modality, model, device and the structures the model offers (``Inputs.ui``);
- ``roi``: the optional region to segment in (``Roi.ui``);
- ``run``: output segmentation, Segment / Cancel / Undo, progress and status (``Run.ui``);
- ``refine``: refining segments with box and point prompts (``Refine.ui``);
- ``dependencies``: what is installed, and the Install button (``Dependencies.ui``).

A new section is a new file here plus its ``.ui`` (both listed in ``UniversalSeg/CMakeLists.txt``), built in
``UniversalSegWidget.setup``. ``parameters`` holds the parameter node all sections bind to.
"""
