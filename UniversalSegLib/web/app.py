"""One browser session: its own MRML scene and views (trame-slicer), the Slicer panel's logic, jobs polled.

Everything that changes the scene goes through :class:`~UniversalSegLib.slicer_logic.SlicerSegmentationLogic`
(segment, refine, undo of a run) or trame-slicer's segment editor (paint, erase and their undo/redo). Jobs run in
the logic's worker process; :meth:`WebSession.poll` reads them from the server's event loop every 200 ms, never in
a request handler. Started by the front server (:mod:`UniversalSegLib.web.sessions`) as::

    python -m UniversalSegLib.web.app --port 8081 --data DIR --upload-limit 1G --idle-timeout 120
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..catalog import Catalog
from ..errors import InputError, UniversalSegError
from ..inference import SegmentationResult
from ..slicer_logic import (
    RefinementRequest,
    SegmentationRequest,
    SlicerSegmentationLogic,
    guess_modality,
    image_from_volume_node,
    segment_arrays,
    volume_node_from_image,
)
from ..slicer_logic.nodes import segment_tag
from ..slicer_logic.segments import TASK_TAG
from ..slicer_logic.widget_glue import (
    REFINE_BACKENDS,
    apply_finished,
    modality_hint,
    progress,
    undo_text,
)
from ..volume import read_image
from . import state as page

POLL_SECONDS = 0.2


class WebSession:
    """The scene, views and controls of one browser session (one process each)."""

    def __init__(self, server, data_dir: str | None = None, upload_limit: int = page.DEFAULT_UPLOAD_LIMIT,
                 idle_timeout: float = 120.0, segment: str | None = None, worker_paths: tuple = ()) -> None:
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentationAppLogic
        from trame_slicer.app.ui import SegmentationAppUI
        from trame_slicer.core import SlicerApp

        from .layout import build_panel

        self.server, self.state, self.ctrl = server, server.state, server.controller
        self.data_dir, self.upload_limit, self.idle_timeout = data_dir, upload_limit, idle_timeout
        self.out_dir = Path(tempfile.mkdtemp(prefix="universalseg-web-"))
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self.viewer = SegmentationAppLogic(server, self.slicer_app)
        self.ui = SegmentationAppUI(server, self.viewer.layout_manager)
        self.catalog = Catalog.load()
        self._segment, self._worker_paths = segment, worker_paths
        self.logic = self._new_logic()
        self.volume = None
        self.source: Path | None = None  # the file or DICOM folder the volume was read from
        self.job = None
        self.clients = 0
        self._last_client = time.monotonic()
        self._segments_dirty = False
        self._reset_3d = 0
        self._defaults()
        build_panel(self)
        self.viewer.set_ui(self.ui)
        self.editor.segmentation_modified.connect(self._mark_segments)
        self.state.change("modality", "show_weak")(self._on_tasks_key)
        self.state.change("opacity")(self._on_opacity)
        self.state.change("show_3d")(self._on_show_3d)
        self.state.change("brush_size")(self._on_brush)
        self.state.change("active_segment")(self._on_active_segment)
        self.ctrl.on_server_bind.add(self._bind_routes)
        self.ctrl.on_server_ready.add(self._start_polling)
        self.ctrl.on_client_connected.add(self._client_connected)
        self.ctrl.on_client_exited.add(self._client_exited)

    # ------------------------------------------------------------------------------------------ set-up
    def _new_logic(self) -> SlicerSegmentationLogic:
        return SlicerSegmentationLogic(self.slicer_app.scene, catalog=self.catalog, segment=self._segment,
                                       worker_paths=self._worker_paths)

    @property
    def editor(self):
        return self.slicer_app.segmentation_editor

    def _defaults(self) -> None:
        s = self.state
        s.trame__title = "UniversalSeg"
        s.data_files = page.list_data_files(self.data_dir)
        s.data_file = s.data_files[0] if s.data_files else ""
        s.upload_limit = self.upload_limit
        s.upload_limit_text = page.human_size(self.upload_limit)
        s.upload_message = ""
        s.volume_name = ""
        s.modalities = page.modality_items(self.catalog)
        s.modality = s.modalities[0]["id"]
        s.modality_hint = ""
        s.show_weak = False
        s.tasks_selected = []
        s.running = False
        s.progress = 0
        s.progress_text = ""
        s.status = "Open an image to start."
        s.error = ""
        s.segments = []
        s.active_segment = ""
        s.opacity = 0.6
        s.show_3d = True
        s.brush_size = 5.0
        s.effect = "none"
        s.can_undo = False
        s.can_redo = False
        s.save_formats = [{"id": k, "title": t} for k, t, _ in page.SAVE_FORMATS]
        s.save_format = "nifti"
        s.download_url = ""
        s.download_name = ""
        s.refine_backends = list(REFINE_BACKENDS)
        s.refine_backend = REFINE_BACKENDS[0]
        # trame-slicer's own drawer: show ours first
        self.show_panel()
        self._on_tasks_key()

    def show_panel(self) -> None:
        from .layout import ACTIVE_TOOL, DRAWER_VISIBLE, PANEL

        self.state[DRAWER_VISIBLE], self.state[ACTIVE_TOOL] = True, PANEL

    def _bind_routes(self, wslink_server) -> None:
        from .upload import add_routes

        add_routes(wslink_server.app, self)

    def _start_polling(self, **_) -> None:
        asyncio.get_event_loop().create_task(self._poll_loop())

    def _client_connected(self, *_) -> None:
        self.clients += 1

    def _client_exited(self, *_) -> None:
        self.clients = max(0, self.clients - 1)
        self._last_client = time.monotonic()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.poll()
            except Exception as err:  # noqa: BLE001 - keep serving; the page shows what failed
                if self.job is not None:
                    self.job.cancel()
                    self.job = None
                with self.state:
                    self.state.running = False
                    self.state.status, self.state.error = "Failed", f"{type(err).__name__}: {err}"
            if (self.idle_timeout > 0 and not self.clients and self.job is None
                    and time.monotonic() - self._last_client > self.idle_timeout):
                self.close()
                await self.server.stop()
                return

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None
        shutil.rmtree(self.out_dir, ignore_errors=True)

    # -------------------------------------------------------------------------------------- the image
    def open_data_file(self) -> None:
        """Open the chosen file of ``--data``."""
        try:
            self.load_path(page.resolve_data_file(self.data_dir, self.state.data_file), self.state.data_file)
        except UniversalSegError as err:
            self._fail(err)

    def load_path(self, path: Path, name: str) -> str:
        """Read ``path`` as the CLI does (:func:`~UniversalSegLib.volume.read_image`) and show it (or raise)."""
        try:
            image, _info = read_image(path)
        except UniversalSegError as err:  # the CLI's message, naming the upload rather than its temporary copy
            raise type(err)(err.problem.replace(str(path), name), err.hint) from None
        except Exception as err:  # noqa: BLE001 - SimpleITK's RuntimeError on a file it cannot read
            raise InputError(f"'{name}' could not be read as an image ({str(err).strip().splitlines()[-1][:200]})",
                             "upload a NIfTI (.nii, .nii.gz), NRRD or MHA file, or open one of the server's files"
                             ) from None
        if image.GetDimension() != 3:
            raise InputError(f"'{name}' is a {image.GetDimension()}D image", "open a 3D volume")
        self._clear_scene()
        scene = self.slicer_app.scene
        stem = page.safe_stem(Path(name.rstrip("/")).name)
        volume = volume_node_from_image(image, stem, scene)
        volume.CreateDefaultDisplayNodes()
        self.volume, self.source = volume, path
        self.slicer_app.display_manager.show_volume(volume, do_reset_views=True)
        self.viewer._load_files_logic.volume_loaded(volume)  # trame-slicer: segment editor, volume properties
        self.show_panel()  # trame-slicer opened its own segment editor
        guess = guess_modality(volume, self.catalog)
        with self.state:
            self.state.volume_name = name
            self.state.modality = guess.modality
            self.state.modality_hint = modality_hint(guess)
            self.state.status = f"Opened '{name}' ({' x '.join(str(n) for n in image.GetSize())} voxels)."
            self.state.error = ""
            self.state.download_url = ""
        self._on_tasks_key()
        self._refresh_segments()
        return self.state.status

    def _clear_scene(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.editor.deactivate_effect()
        self.slicer_app.scene.Clear()
        self.logic = self._new_logic()
        self.volume = None

    # -------------------------------------------------------------------------------------- the tasks
    def _on_tasks_key(self, **_) -> None:
        tree = page.task_items(self.state.modality, self.state.tasks_selected or [], bool(self.state.show_weak),
                               self.catalog)
        self.state.task_items = tree["items"]
        self.state.tasks_selected = tree["chosen"]
        self.state.tasks_warning = tree["warning"]

    # -------------------------------------------------------------------------------------- the jobs
    @property
    def segmentation_node(self):
        return self.editor.active_segmentation_node

    def segment(self) -> None:
        """Start segmenting (validation errors are shown, the scene is untouched)."""
        if self.job is not None:
            return
        if self.volume is None:
            return self._fail(InputError("no image is open", "open a file from the list or upload one"))
        request = SegmentationRequest(self.volume, tasks=list(self.state.tasks_selected or []),
                                      modality=self.state.modality, device="auto",
                                      segmentation=self.segmentation_node, replace_existing=True)
        try:
            self.job = self.logic.start(request)
        except UniversalSegError as err:
            return self._fail(err)
        self._running("Segmenting")

    def refine(self) -> None:
        """Refine every segment with automatic boxes from its own voxels (or the ROIs a previous refine left)."""
        if self.job is not None:
            return
        node = self.segmentation_node
        ids = [s["id"] for s in self.state.segments or [] if s["voxels"]]
        if self.volume is None or node is None or not ids:
            return self._fail(InputError("there is no segment to refine", "press Segment first"))
        request = RefinementRequest(self.volume, node, ids, modality=self.state.modality,
                                    backend=self.state.refine_backend)
        try:
            self.job = self.logic.start_refinement(request)
        except UniversalSegError as err:
            return self._fail(err)
        self._running("Refining")

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _running(self, what: str) -> None:
        self.editor.deactivate_effect()
        with self.state:
            self.state.running, self.state.progress = True, 0
            self.state.progress_text, self.state.error, self.state.effect = f"{what}: starting", "", "none"
            self.state.status = f"{what}..."

    def poll(self) -> None:
        """One tick of the server loop: the job's progress, its result once finished; the segment list."""
        if self.job is not None:
            status = self.job.poll()
            with self.state:
                if not status.finished:
                    self.state.progress, self.state.progress_text = progress(status)
                else:
                    job, self.job = self.job, None
                    outcome = apply_finished(self.logic, job, status)
                    self.state.running, self.state.progress = False, 100 if outcome.error is None else 0
                    self.state.progress_text = status.text
                    self.state.status = outcome.text
                    self.state.error = str(outcome.error) if outcome.error is not None else ""
                    if outcome.segmentation is not None:
                        self._activate(outcome.segmentation)
        if self._segments_dirty:
            self._refresh_segments()
        if self._reset_3d:
            self._reset_3d -= 1
            if not self._reset_3d:
                self._reset_3d_view()

    def _activate(self, node) -> None:
        """Make ``node`` the editor's segmentation (after a run, an undo): the edit history starts again."""
        if node is None or self.volume is None:
            self.editor.clear()
            if self.volume is not None:
                self.viewer._segment_editor_logic.on_volume_changed(self.volume)
        else:
            self.editor.set_active_segmentation(node, self.volume)
        self._on_opacity()
        self._refresh_segments()
        self._on_show_3d()
        self._reset_3d = 3  # ticks: the surfaces' actors exist by then

    def _reset_3d_view(self) -> None:
        from trame_slicer.views import ThreeDView

        for view in self.slicer_app.view_manager.get_views():
            if isinstance(view, ThreeDView):
                view.reset_view()
                view.schedule_render()

    # ------------------------------------------------------------------------------- editing, undo
    def set_effect(self, effect: str) -> None:
        from trame_slicer.segmentation import (
            SegmentationEffectErase,
            SegmentationEffectNoTool,
            SegmentationEffectPaint,
        )

        kinds = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase, "none": SegmentationEffectNoTool}
        if self.segmentation_node is None or not self.state.segments:
            effect = "none"
        if effect != "none" and self.state.active_segment:
            self.editor.set_active_segment_id(self.state.active_segment)
        tool = self.editor.set_active_effect_type(kinds[effect])
        if effect != "none" and tool is not None:
            self._set_brush(tool)
        self.state.effect = effect

    def _set_brush(self, tool) -> None:
        try:
            tool.set_brush_diameter(float(self.state.brush_size))
        except (AttributeError, TypeError):  # older trame-slicer: the parameter node of the effect
            pass

    def undo(self) -> None:
        """Undo the last stroke (trame-slicer's edit history), else the last run (the logic's undo stack)."""
        stack = self.editor.undo_stack
        if stack is not None and stack.can_undo():
            stack.undo()
            self.state.status = "Undone: the last paint or erase stroke."
        else:
            node_id = self.segmentation_node.GetID() if self.segmentation_node is not None else None
            self.state.status = undo_text(self.logic.undo())
            self._activate(self.slicer_app.scene.GetNodeByID(node_id) if node_id else None)
        self._refresh_segments()

    def redo(self) -> None:
        stack = self.editor.undo_stack
        if stack is not None and stack.can_redo():
            stack.redo()
            self.state.status = "Redone: the stroke."
        self._refresh_segments()

    def _mark_segments(self, *_) -> None:
        self._segments_dirty = True

    def _refresh_segments(self) -> None:
        self._segments_dirty = False
        node, rows = self.segmentation_node, list[dict]()
        if node is not None and self.volume is not None:
            segmentation = node.GetSegmentation()
            ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
            labels = segment_arrays(node, ids, self.volume) if ids else np.zeros(0)
            counts = np.bincount(labels.ravel(), minlength=len(ids) + 1) if ids else []
            for value, segment_id in enumerate(ids, start=1):
                segment = segmentation.GetSegment(segment_id)
                rgb = segment.GetColor()
                rows.append({"id": segment_id, "name": segment.GetName(), "voxels": int(counts[value]),
                             "color": "#" + "".join(f"{round(255 * c):02x}" for c in rgb),
                             "visible": bool(self.editor.get_segment_visibility(segment_id))})
        stack = self.editor.undo_stack
        with self.state:
            self.state.segments = rows
            if rows and self.state.active_segment not in [r["id"] for r in rows]:
                self.state.active_segment = rows[0]["id"]
            self.state.can_undo = bool(stack is not None and stack.can_undo()) or self.logic.can_undo
            self.state.can_redo = bool(stack is not None and stack.can_redo())

    def toggle_visibility(self, segment_id: str) -> None:
        self.editor.set_segment_visibility(segment_id, not self.editor.get_segment_visibility(segment_id))
        self._refresh_segments()

    def _on_opacity(self, **_) -> None:
        """The slice views' fill opacity (the 3D surfaces stay opaque, over a hidden volume rendering)."""
        node = self.segmentation_node
        display = node.GetDisplayNode() if node is not None else None
        if display is not None:
            display.SetOpacity2DFill(float(self.state.opacity))
            display.SetOpacity3D(1.0)

    def _on_active_segment(self, **_) -> None:
        if self.segmentation_node is not None and self.state.active_segment:
            if self.editor.get_active_segment_id() != self.state.active_segment:
                self.editor.set_active_segment_id(self.state.active_segment)

    def _on_show_3d(self, **_) -> None:
        if self.segmentation_node is not None:
            shown = bool(self.state.show_3d)
            self.editor.set_surface_representation_enabled(shown)
            self.editor.active_segmentation.set_surface_representation_enabled(shown)
        if self.volume is not None:  # the volume rendering hides the surfaces inside it: one or the other
            rendering = self.slicer_app.volume_rendering.get_vr_display_node(self.volume)
            if rendering is not None:
                rendering.SetVisibility(not (self.state.show_3d and self.state.segments))

    def _on_brush(self, **_) -> None:
        tool = self.editor.active_effect
        if tool is not None and self.state.effect != "none":
            self._set_brush(tool)

    # ------------------------------------------------------------------------------------- save
    def save(self) -> None:
        """Write the segments of catalog structures in the chosen format; the page gets a download link."""
        try:
            path = self.write(self.state.save_format)
        except UniversalSegError as err:
            return self._fail(err)
        with self.state:
            self.state.download_name = path.name
            self.state.download_url = f"download/{path.name}"
            self.state.status = f"Saved {path.name}: download it below."

    def write(self, fmt: str) -> Path:
        node = self.segmentation_node
        if node is None or self.volume is None:
            raise InputError("there is nothing to save", "open an image and press Segment")
        segmentation = node.GetSegmentation()
        ids, tasks = [], []
        known = {t.id for t in self.catalog.tasks}
        for i in range(segmentation.GetNumberOfSegments()):
            task_id = segment_tag(segmentation.GetNthSegment(i), TASK_TAG)
            if task_id and task_id in known:
                ids.append(segmentation.GetNthSegmentID(i))
                tasks.append(self.catalog.task(task_id))
        if not ids:
            raise InputError("no segment of a catalog structure to save", "press Segment first")
        reference = image_from_volume_node(self.volume)
        labels = sitk.GetImageFromArray(segment_arrays(node, ids, self.volume).astype(np.uint8))
        labels.CopyInformation(reference)
        result = SegmentationResult(labels=labels, tasks=tasks, modality=self.catalog.modality(self.state.modality),
                                    model="")
        stem = page.safe_stem(Path(str(self.state.volume_name).rstrip("/")).name) + "_seg"
        path = self.out_dir / (stem + page.save_suffix(fmt))
        for old in self.out_dir.iterdir():
            old.unlink()
        if fmt == "dicom-seg":
            if self.source is None or not self.source.is_dir():
                raise InputError("DICOM SEG needs a DICOM series as input (it references its slices)",
                                 "open a DICOM folder from the server's list, or save as NIfTI or .seg.nrrd")
            from ..dicom_out import write_dicom

            write_dicom(result, self.source, path, "dicom-seg")
        else:
            from ..writers import write_result

            write_result(result, path, source=str(self.state.volume_name), overwrite=True)
        return path

    def _fail(self, err: UniversalSegError) -> None:
        with self.state:
            self.state.status = f"Failed: {err.problem}"
            self.state.error = str(err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m UniversalSegLib.web.app", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data")
    parser.add_argument("--upload-limit", default=str(page.DEFAULT_UPLOAD_LIMIT))
    parser.add_argument("--idle-timeout", type=float, default=120.0)
    parser.add_argument("--engine", help="module:function the worker calls (tests)")
    args = parser.parse_args(argv)
    from trame.app import get_server

    server = get_server("universalseg", client_type="vue3")
    session = WebSession(server, data_dir=args.data, upload_limit=page.parse_size(args.upload_limit),
                         idle_timeout=args.idle_timeout, segment=args.engine)
    try:
        server.start(port=args.port, host=args.host, open_browser=False, show_connection_info=False,
                     disable_logging=True, exec_mode="main")
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
