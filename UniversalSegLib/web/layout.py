"""The page: trame-slicer's viewer (three slice views and a 3D view) with the UniversalSeg panel in its drawer.

Form controls are plain HTML elements with ids (``us-...``) so that a person, a screen reader and the browser
tests (``Testing/test_web.py``) find them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import WebSession

PANEL = "UniversalSegPanel"
#: trame-slicer's drawer state (``ViewerLayoutState``, namespaced by its TypedState).
DRAWER_VISIBLE, ACTIVE_TOOL = "ViewerLayoutState__is_drawer_visible", "ViewerLayoutState__active_tool"

#: The upload: checked against the limit in the browser first, then streamed to ``upload`` (the server checks too).
UPLOAD_JS = r"""
document.addEventListener('change', async (event) => {
  const input = event.target;
  if (!input || input.id !== 'us-upload-input' || !input.files.length) return;
  const file = input.files[0];
  const note = document.getElementById('us-upload-client');
  const limit = Number(input.dataset.limit);
  const size = (n) => n >= 1073741824 ? (n / 1073741824).toFixed(1) + ' GB' : (n / 1048576).toFixed(1) + ' MB';
  if (file.size > limit) {
    note.textContent = "'" + file.name + "' (" + size(file.size) + ") is larger than this server's upload limit of "
      + size(limit) + ": put the file in the server's --data folder and open it from the list, "
      + "or restart the server with a larger --upload-limit.";
    input.value = '';
    return;
  }
  note.textContent = "Uploading '" + file.name + "' (" + size(file.size) + ")...";
  try {
    const reply = await fetch('upload?name=' + encodeURIComponent(file.name), {method: 'POST', body: file});
    const body = await reply.json();
    note.textContent = body.message;
  } catch (err) {
    note.textContent = 'The upload failed: ' + err;
  }
  input.value = '';
});
"""

CSS = """
.us-panel { font-size: 14px; }
.us-panel select, .us-panel input[type=file] { width: 100%; background: #333; color: #eee; padding: 4px;
  border: 1px solid #666; border-radius: 4px; margin: 2px 0; }
.us-panel h4 { margin: 12px 0 4px 0; font-weight: 600; color: #9cf; }
.us-task { display: flex; gap: 6px; align-items: center; }
.us-segment { display: flex; gap: 6px; align-items: center; margin: 2px 0; }
.us-swatch { width: 12px; height: 12px; border-radius: 2px; display: inline-block; }
.us-error { color: #f88; white-space: pre-wrap; }
.us-note { color: #bbb; font-size: 12px; }
"""


def build_panel(session: WebSession) -> None:
    """Add the UniversalSeg panel and its toolbar button to trame-slicer's segmentation app layout."""
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v3
    from trame_slicer.app.ui.control_button import ControlButton

    ui, s = session.ui, session

    def toggle_panel() -> None:
        shown = not (session.state[DRAWER_VISIBLE] and session.state[ACTIVE_TOOL] == PANEL)
        session.state[DRAWER_VISIBLE], session.state[ACTIVE_TOOL] = shown, PANEL if shown else None

    ui.layout.title.set_text("UniversalSeg")
    with ui.layout.toolbar:
        ControlButton(icon="mdi-auto-fix", name="UniversalSeg", click=toggle_panel, classes="mt-1",
                      active=(f"{ACTIVE_TOOL} === '{PANEL}'",), id="us-panel-button")

    with ui.layout.drawer:
        client.Style(CSS)
        client.Script(UPLOAD_JS)
        with html.Div(v_if=(f"{ACTIVE_TOOL} === '{PANEL}'",), classes="pa-3 us-panel",
                      style="overflow-y: auto; height: 100%;"):
            html.Div("UniversalSeg", classes="text-h6")

            html.H4("Image")
            with html.Select(id="us-data-file", v_model=("data_file",), disabled=("running",)):
                html.Option("{{ f }}", v_for="f in data_files", key="f", value=("f",))
            html.Div("No files: start the server with --data DIR, or upload one.", classes="us-note",
                     v_if=("!data_files.length",))
            v3.VBtn("Open", id="us-open", click=s.open_data_file, size="small", variant="tonal",
                    disabled=("running || !data_file",), classes="my-1")
            html.Input(type="file", id="us-upload-input", __properties=[("data_limit", "data-limit")],
                       data_limit=("upload_limit",),
                       accept=".nii,.gz,.nrrd,.nhdr,.mha,.mhd", disabled=("running",))
            html.Div("Upload up to {{ upload_limit_text }}.", classes="us-note")
            html.Div("", id="us-upload-client", classes="us-note")
            html.Div("{{ upload_message }}", id="us-upload-message", classes="us-note")
            html.Div("{{ volume_name ? 'Open: ' + volume_name : 'No image open' }}", id="us-volume")

            html.H4("Modality")
            with html.Select(id="us-modality", v_model=("modality",), disabled=("running",)):
                html.Option("{{ m.title }}", v_for="m in modalities", key="m.id", value=("m.id",))
            html.Div("{{ modality_hint }}", classes="us-note")

            html.H4("Structures")
            with html.Label(classes="us-task"):
                html.Input(type="checkbox", id="us-show-weak", v_model=("show_weak",))
                html.Span("Show weak tasks (validation Dice below 0.5)")
            with html.Div(v_for="t in task_items", key="t.id", classes="us-task", title=("t.tooltip",)):
                html.Input(type="checkbox", id=("'us-task-' + t.id",), value=("t.id",), v_model=("tasks_selected",),
                           disabled=("running",))
                html.Label("{{ t.title }}", for_=("'us-task-' + t.id",))
            html.Div("{{ tasks_warning }}", classes="us-note", id="us-tasks-warning")

            with html.Div(classes="d-flex ga-2 my-2"):
                v3.VBtn("Segment", id="us-segment", click=s.segment, color="primary",
                        disabled=("running || !volume_name || !tasks_selected.length",))
                v3.VBtn("Cancel", id="us-cancel", click=s.cancel, disabled=("!running",))
            v3.VProgressLinear(model_value=("progress",), height=8, color="primary", id="us-progress")
            html.Div("{{ progress_text }}", id="us-progress-text", classes="us-note")
            html.Div("{{ status }}", id="us-status")
            html.Div("{{ error }}", id="us-error", classes="us-error", v_show=("error",))

            html.H4("Refine")
            with html.Select(id="us-refine-backend", v_model=("refine_backend",), disabled=("running",)):
                html.Option("{{ b }}", v_for="b in refine_backends", key="b", value=("b",))
            v3.VBtn("Refine (automatic boxes)", id="us-refine", click=s.refine, size="small", variant="tonal",
                    disabled=("running || !segments.length",), classes="my-1")

            html.H4("Segments")
            with html.Div(v_for="seg in segments", key="seg.id", classes="us-segment"):
                html.Input(type="radio", name="us-active-segment", value=("seg.id",), v_model=("active_segment",))
                html.Span(classes="us-swatch", style=("{ background: seg.color }",))
                html.Span("{{ seg.name }}", classes="us-segment-name")
                html.Span("{{ seg.voxels }}", classes="us-voxels text-caption", id=("'us-voxels-' + seg.id",))
                html.Span("voxels", classes="text-caption")
                v3.VBtn(icon=("seg.visible ? 'mdi-eye' : 'mdi-eye-off'",), size="x-small", variant="text",
                        click=(s.toggle_visibility, "[seg.id]"), classes=("'us-visibility-' + seg.id",))
            html.Div("Opacity", classes="us-note")
            v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, density="compact", hide_details=True,
                       id="us-opacity")
            with html.Label(classes="us-task"):
                html.Input(type="checkbox", id="us-show-3d", v_model=("show_3d",))
                html.Span("Show in 3D")

            html.H4("Edit")
            with html.Div(classes="d-flex ga-1"):
                for effect, label in (("paint", "Paint"), ("erase", "Erase"), ("none", "No tool")):
                    v3.VBtn(label, id=f"us-{effect}", size="small",
                            variant=(f"effect === '{effect}' ? 'flat' : 'tonal'",),
                            color=(f"effect === '{effect}' ? 'primary' : undefined",),
                            click=(s.set_effect, f"['{effect}']"), disabled=("running || !segments.length",))
            html.Div("Brush diameter (% of the view)", classes="us-note")
            v3.VSlider(v_model=("brush_size",), min=1, max=30, step=1, density="compact", hide_details=True)
            with html.Div(classes="d-flex ga-1"):
                v3.VBtn("Undo", id="us-undo", click=s.undo, size="small", disabled=("running || !can_undo",))
                v3.VBtn("Redo", id="us-redo", click=s.redo, size="small", disabled=("running || !can_redo",))

            html.H4("Save")
            with html.Select(id="us-save-format", v_model=("save_format",)):
                html.Option("{{ f.title }}", v_for="f in save_formats", key="f.id", value=("f.id",))
            v3.VBtn("Save", id="us-save", click=s.save, size="small", variant="tonal",
                    disabled=("running || !segments.length",), classes="my-1")
            html.A("Download {{ download_name }}", id="us-download", href=("download_url",),
                   download=("download_name",), v_if=("download_url",))
    ui.layout.flush_content()
