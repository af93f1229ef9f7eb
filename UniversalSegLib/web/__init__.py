"""Segment from a browser: ``universalseg serve`` (trame-slicer serves the MRML scene and its views to a page).

One process per browser session (its own MRML scene), started by the front server, which also checks the token
and turns away sessions beyond ``--max-sessions`` with a page that asks to wait::

    universalseg serve --data samples            # http://127.0.0.1:8080/
    universalseg serve --host 0.0.0.0 --token S  # any other address needs --token; open /?token=S

Modules: ``state`` (what the page shows, without trame: files, task rows, sizes), ``upload`` (the upload and
download routes), ``layout`` (the page), ``app`` (one session: scene, views, the same
:class:`~UniversalSegLib.slicer_logic.SlicerSegmentationLogic` as the Slicer panel, jobs polled from the server
loop), ``sessions`` (the front: session processes, proxy, token, limit).

Needs the ``web`` extra (``pip install universalseg[web]``: trame-slicer, slicer-core, slicer-layer-dm). Importing
this package imports none of them.
"""
