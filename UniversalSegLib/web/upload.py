"""The session's HTTP routes beside trame's websocket: ``POST upload`` (size-limited) and ``GET download/NAME``.

An upload is streamed to a temporary file and read with the CLI's reader; anything else (too large, not an
image, unreadable) is answered with a JSON ``message`` the page shows, and the session keeps serving.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UniversalSegError
from . import state as page

if TYPE_CHECKING:
    from .app import WebSession

CHUNK = 1 << 20


def add_routes(app, session: WebSession) -> None:
    """Register the routes on trame's aiohttp application (before its static routes)."""
    from aiohttp import web

    def reply(message: str, status: int = 200, ok: bool = False):
        with session.state:
            session.state.upload_message = message
        return web.json_response({"ok": ok, "message": message}, status=status)

    async def upload(request):
        name = Path(request.query.get("name", "upload")).name or "upload"
        limit = session.upload_limit
        if request.content_length is not None and request.content_length > limit:
            return reply(page.too_large_message(name, request.content_length, limit), 413)
        if not page.is_image_name(name):
            await request.release()
            return reply(f"'{name}' is not an image this server reads: upload a NIfTI (.nii, .nii.gz), NRRD "
                         "(.nrrd, .nhdr) or MetaImage (.mha, .mhd) file.", 400)
        if session.job is not None:
            await request.release()
            return reply("A segmentation is running: cancel it or wait before opening another image.", 409)
        folder = Path(tempfile.mkdtemp(prefix="universalseg-upload-"))
        try:
            path, size = folder / name, 0
            with open(path, "wb") as out:
                async for chunk in request.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        return reply(page.too_large_message(name, None, limit), 413)
                    out.write(chunk)
            try:
                message = session.load_path(path, name)
            except UniversalSegError as err:
                return reply(f"Could not open the upload: {err}", 400)
            return reply(message, ok=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def download(request):
        name = Path(request.match_info["name"]).name
        path = session.out_dir / name
        if not path.is_file():
            raise web.HTTPNotFound(text="nothing saved under that name: press Save again")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.router.add_post("/upload", upload)
    app.router.add_get("/download/{name}", download)
