"""The front server of ``universalseg serve``: one session process per browser, a proxy to it, the token, the limit.

``GET /`` starts a session (``python -m UniversalSegLib.web.app`` on a free loopback port: its own MRML scene) and
redirects to ``/s/ID/``; everything under ``/s/ID/`` (page, websocket, upload, download) is proxied to that
process. Beyond ``--max-sessions`` live sessions a new visitor gets a page saying to wait (HTTP 503, retried every
10 s). A session process ends ``--idle-timeout`` seconds after its last browser tab closed (never while a job
runs). Only loopback is served without ``--token``; with a token the first request carries ``?token=...`` and a
cookie keeps it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UniversalSegError
from ..runner import PACKAGE_ROOT
from . import state as page

COOKIE = "universalseg_token"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: served without a token.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token.

    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    UniversalSegLib.errors.UniversalSegError: binding 0.0.0.0 makes the server reachable from other machines, ...
    What to do: pass --token SECRET ...
    """
    if not is_loopback(host) and not token:
        raise UniversalSegError(f"binding {host} makes the server reachable from other machines, and it has no login",
                                "pass --token SECRET (then open http://HOST:PORT/?token=SECRET), "
                                "or keep the default --host 127.0.0.1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def busy_page(limit: int) -> str:
    """The page a visitor beyond the session limit sees."""
    return (f"<!doctype html><html><head><meta http-equiv='refresh' content='10'><title>UniversalSeg: please wait"
            f"</title></head><body style='font-family:sans-serif;background:#222;color:#eee;padding:2em'>"
            f"<h2 id='us-busy'>UniversalSeg is busy: please wait</h2><p>This server already serves {limit} "
            f"session{'s' if limit != 1 else ''}, its limit (--max-sessions). This page tries again every 10 "
            "seconds and opens a session as soon as one ends.</p></body></html>")


@dataclass
class Session:
    sid: str
    port: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Front:
    """The session table and the aiohttp application."""

    def __init__(self, data: str | None = None, max_sessions: int = 4, upload_limit: int = page.DEFAULT_UPLOAD_LIMIT,
                 idle_timeout: float = 120.0, token: str | None = None, engine: str | None = None,
                 log_dir: str | None = None) -> None:
        self.data, self.max_sessions, self.upload_limit = data, max_sessions, upload_limit
        self.idle_timeout, self.token, self.engine = idle_timeout, token, engine
        self.log_dir = Path(log_dir) if log_dir else None
        self.sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------------------------- sessions
    def live(self) -> list[Session]:
        for sid in [sid for sid, s in self.sessions.items() if not s.alive]:
            del self.sessions[sid]
        return list(self.sessions.values())

    async def start_session(self) -> Session:
        sid, port = secrets.token_urlsafe(9), free_port()
        command = [sys.executable, "-m", "UniversalSegLib.web.app", "--port", str(port),
                   "--upload-limit", str(self.upload_limit), "--idle-timeout", str(self.idle_timeout)]
        if self.data:
            command += ["--data", str(Path(self.data).resolve())]
        if self.engine:
            command += ["--engine", self.engine]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        log = open(self.log_dir / f"session-{sid}.log", "wb") if self.log_dir else subprocess.DEVNULL
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        session = Session(sid, port, process)
        self.sessions[sid] = session
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and session.alive:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return session
            except OSError:
                await asyncio.sleep(0.2)
        process.kill()
        raise UniversalSegError("the session process did not start", "see the server's log; try again")

    def close(self) -> None:
        for session in self.sessions.values():
            if session.alive:
                session.process.terminate()
        for session in self.sessions.values():
            try:
                session.process.wait(5)
            except subprocess.TimeoutExpired:
                session.process.kill()

    # ---------------------------------------------------------------------------------- HTTP
    def authorised(self, request) -> bool:
        if not self.token:
            return True
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def application(self):
        from aiohttp import ClientSession, WSMsgType, web

        front = self

        @web.middleware
        async def token_check(request, handler):
            if not front.authorised(request):
                return web.Response(status=401, text="UniversalSeg: open this server's address with ?token=...")
            response = await handler(request)
            if front.token and request.query.get("token"):
                response.set_cookie(COOKIE, front.token, httponly=True, samesite="Strict")
            return response

        async def index(request):
            async with front._lock:
                if len(front.live()) >= front.max_sessions:
                    return web.Response(status=503, text=busy_page(front.max_sessions), content_type="text/html",
                                        headers={"Retry-After": "10"})
                session = await front.start_session()
            response = web.HTTPFound(f"/s/{session.sid}/")
            if front.token and request.query.get("token"):
                response.set_cookie(COOKIE, front.token, httponly=True, samesite="Strict")
            raise response

        async def status(_request):
            return web.json_response({"sessions": len(front.live()), "max_sessions": front.max_sessions})

        async def proxy(request):
            sid, tail = request.match_info["sid"], request.match_info["tail"]
            session = front.sessions.get(sid)
            if session is None or not session.alive:
                raise web.HTTPFound("/")
            target = f"http://127.0.0.1:{session.port}/{tail}"
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await websocket(request, target.replace("http://", "ws://"))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "transfer-encoding")}
            async with ClientSession(auto_decompress=False) as client, client.request(
                    request.method, target, params=request.query, headers=headers,
                    data=request.content if request.can_read_body else None, allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")})
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response

        async def websocket(request, target):
            browser = web.WebSocketResponse(max_msg_size=0, autoping=True)
            await browser.prepare(request)
            async with ClientSession() as client, client.ws_connect(target, max_msg_size=0) as upstream:
                async def pump(source, sink):
                    async for message in source:
                        if message.type == WSMsgType.TEXT:
                            await sink.send_str(message.data)
                        elif message.type == WSMsgType.BINARY:
                            await sink.send_bytes(message.data)
                        else:
                            break
                tasks = [asyncio.ensure_future(pump(browser, upstream)), asyncio.ensure_future(pump(upstream, browser))]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
            await browser.close()
            return browser

        async def redirect_session(request):
            raise web.HTTPFound(f"/s/{request.match_info['sid']}/")

        app = web.Application(middlewares=[token_check], client_max_size=0)
        app.router.add_get("/", index)
        app.router.add_get("/status", status)
        app.router.add_get("/s/{sid}", redirect_session)
        app.router.add_route("*", "/s/{sid}/{tail:.*}", proxy)
        app.on_shutdown.append(lambda _app: asyncio.get_event_loop().run_in_executor(None, front.close))
        return app


def serve(host: str = "127.0.0.1", port: int = 8080, data: str | None = None, token: str | None = None,
          max_sessions: int = 4, upload_limit: int = page.DEFAULT_UPLOAD_LIMIT, idle_timeout: float = 120.0,
          engine: str | None = None, log_dir: str | None = None) -> int:
    """Run the front server until interrupted."""
    from aiohttp import web

    check_bind(host, token)
    front = Front(data, max_sessions, upload_limit, idle_timeout, token, engine, log_dir)
    shown = f"http://{host}:{port}/" + ("?token=..." if token else "")
    print(f"UniversalSeg serving {shown} (up to {max_sessions} sessions, uploads up to "
          f"{page.human_size(upload_limit)}{', data ' + str(data) if data else ''}); Ctrl+C stops it", flush=True)
    try:
        web.run_app(front.application(), host=host, port=port, print=None)
    finally:
        front.close()
    return 0
