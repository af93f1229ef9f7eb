"""One job runner for every face (the Slicer widget, scripts, a web server): the engine in a child process.

No thread and no Qt: :meth:`ProcessJob.poll` reads the worker's JSON lines without blocking (a pipe set
non-blocking, or a file where pipes cannot be), so it can be called from a 200 ms QTimer in Slicer's GUI
thread, which holds Python's GIL between ticks: the engine runs at full speed in its own process
whatever the GUI thread does. Subclasses say what to write into the job's temporary folder and how to read
the result back (:class:`~UniversalSegLib.slicer_logic.jobs.SegmentationJob`,
:class:`~UniversalSegLib.slicer_logic.refinement.RefinementJob`)::

    >>> job = SegmentationJob(run, catalog=catalog).start()   # doctest: +SKIP
    >>> status = job.poll()      # from a QTimer: never blocks    # doctest: +SKIP
    >>> status.state, status.text, round(status.fraction, 2)      # doctest: +SKIP
    ('running', 'Running the network (40%)', 0.48)
    >>> job.cancel()             # terminates the process, removes the folder; nothing was changed  # doctest: +SKIP

The temporary folder is removed once the job ends (success after the result was read, failure, cancel)
and by :meth:`ProcessJob.close` (scene close); a failure's status carries the engine's own
:class:`~UniversalSegLib.errors.UniversalSegError`, never a traceback (that stays on the worker's stderr,
whose last lines are quoted only when the process died without saying why).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import errors
from .errors import CancelledError, UniversalSegError

#: The folder holding the ``UniversalSegLib`` package (put on the worker's ``PYTHONPATH``).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: Seconds between terminate and kill when cancelling.
GRACE_SECONDS = 2.0
#: Pipes can be made non-blocking everywhere but on Windows before Python 3.12 (there: a file).
PIPES_NONBLOCKING = os.name != "nt" or sys.version_info >= (3, 12)


@dataclass
class JobStatus:
    """A snapshot of a job for the widget: ``state`` is running, succeeded, failed or cancelled."""

    state: str
    stage: str
    fraction: float
    text: str
    warnings: list[str]
    error: UniversalSegError | None
    elapsed: float

    @property
    def finished(self) -> bool:
        return self.state != "running"


def python_executable() -> str:
    """The Python to run the worker with: ``PythonSlicer`` inside Slicer (its ``sys.executable`` is the app)."""
    try:
        from slicer import app  # noqa: F401 - only importable inside the Slicer application
    except ImportError:
        return sys.executable
    return shutil.which("PythonSlicer") or sys.executable


def error_from_event(event: dict) -> UniversalSegError:
    """The engine's error, rebuilt from its ``error`` line (same class, problem and hint).

    >>> str(error_from_event({"type": "CheckpointError", "problem": "bad.pt is not a checkpoint", "hint": "x"}))
    'bad.pt is not a checkpoint. What to do: x.'
    """
    cls = getattr(errors, str(event.get("type")), UniversalSegError)
    if not (isinstance(cls, type) and issubclass(cls, UniversalSegError)):
        cls = UniversalSegError
    return cls(str(event.get("problem", "the engine failed")), str(event.get("hint", "")))


class ProcessJob:
    """The engine in a child process (``python -m UniversalSegLib.worker FOLDER``), polled without blocking.

    Subclasses implement :meth:`write_request` (inputs into the folder, returns the request dict),
    :meth:`read_result` (called once after the ``done`` line, folder still there) and may override
    :meth:`status_text`. ``listener(stage, fraction)`` is called from :meth:`poll` (the polling thread) for
    every progress line. ``extra_paths`` go on the worker's ``PYTHONPATH`` (where injected engines live).
    """

    #: Words for cancelled / failed messages ("segmentation", "refinement").
    what = "job"
    #: The hint of the cancel error.
    again = "run it again"

    def __init__(self, listener: Callable[[str, float], None] | None = None, warnings: Sequence[str] = (),
                 extra_paths: Sequence[str | Path] = ()) -> None:
        self._listener = listener
        self._extra_paths = [str(p) for p in extra_paths]
        self.state, self.stage, self.fraction = "running", "queued", 0.0
        self.warnings: list[str] = list(warnings)
        self.error: UniversalSegError | None = None
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.applied = False
        self._cancelling = False
        self._buffer = b""
        self._events_file: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._done = False
        self._started = time.perf_counter()
        self._ended: float | None = None

    # ------------------------------------------------------------------------------------ to implement
    def write_request(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError

    def read_result(self, folder: Path) -> None:
        raise NotImplementedError

    def on_event(self, event: dict) -> None:
        """Other events of a subclass's worker (e.g. ``device``)."""

    def status_text(self) -> str:
        return self.stage.capitalize()

    def overall_fraction(self) -> float:
        return self.fraction

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> ProcessJob:
        """Write the request into a new temporary folder and start the worker process; returns ``self``."""
        self.folder = Path(tempfile.mkdtemp(prefix="universalseg-job-"))
        try:
            request = self.write_request(self.folder)
            (self.folder / "request.json").write_text(json.dumps(request))
            env = dict(os.environ)
            paths = [str(PACKAGE_ROOT), *self._extra_paths, env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
            env["PYTHONUNBUFFERED"] = "1"
            self._stderr = open(self.folder / "stderr.txt", "wb")  # noqa: SIM115 - closed in _cleanup
            if PIPES_NONBLOCKING:
                stdout: Any = subprocess.PIPE
            else:
                stdout = self._events_file = open(self.folder / "events.jsonl", "wb")  # noqa: SIM115
            self.process = subprocess.Popen(
                [python_executable(), "-m", "UniversalSegLib.worker", str(self.folder)], stdout=stdout,
                stderr=self._stderr, stdin=subprocess.DEVNULL, env=env, cwd=str(self.folder))
            if PIPES_NONBLOCKING:
                assert self.process.stdout is not None
                os.set_blocking(self.process.stdout.fileno(), False)
            else:
                assert self._events_file is not None
                self._events_file.close()
                self._events_file = open(self.folder / "events.jsonl", "rb")  # noqa: SIM115
        except BaseException:
            self._cleanup()
            raise
        return self

    def poll(self) -> JobStatus:
        """Read what the worker said since the last call (never blocks) and return a snapshot."""
        if self.state == "running" and self.process is not None:
            self._read_events()
            code = self.process.poll()
            if code is not None and self.state == "running":
                self._read_events(final=True)
                self._conclude(code)
        return self.snapshot()

    def snapshot(self) -> JobStatus:
        """The status as last polled."""
        if self.state == "running":
            text = "Cancelling..." if self._cancelling else self.status_text()
        elif self.state == "succeeded":
            text = "Done"
        elif self.state == "cancelled":
            text = "Cancelled: nothing was changed"
        else:
            text = f"Failed: {self.error}"
        fraction = 1.0 if self.state == "succeeded" else self.overall_fraction()
        elapsed = (self._ended or time.perf_counter()) - self._started
        return JobStatus(self.state, self.stage, fraction, text, list(self.warnings), self.error, elapsed)

    def cancel(self) -> None:
        """Stop the worker now (terminate, kill after :data:`GRACE_SECONDS`) and remove the folder."""
        if self.state != "running":
            return
        self._cancelling = True
        self._stop()
        self._finish("cancelled", CancelledError(f"{self.what} cancelled", self.again))

    def close(self) -> None:
        """Cancel if running, and remove the temporary folder (scene close, or when dropping a job)."""
        self.cancel()
        self._cleanup()

    def cancelled(self) -> bool:
        return self._cancelling or self.state == "cancelled"

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> JobStatus:
        """Poll until the job ends or ``timeout`` seconds pass (scripts, tests); returns the last status."""
        end = None if timeout is None else time.perf_counter() + timeout
        status = self.poll()
        while not status.finished and (end is None or time.perf_counter() < end):
            time.sleep(interval)
            status = self.poll()
        return status

    def __del__(self) -> None:  # a dropped job must not leave a process or a folder behind
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    # --------------------------------------------------------------------------------------- internals
    def _read_events(self, final: bool = False) -> None:
        chunks = []
        if self._events_file is not None:
            chunks.append(self._events_file.read())
        elif self.process is not None and self.process.stdout is not None:
            fd = self.process.stdout.fileno()
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        self._buffer += b"".join(chunks)
        *lines, self._buffer = self._buffer.split(b"\n")
        if final and self._buffer:
            lines, self._buffer = [*lines, self._buffer], b""
        for line in lines:
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # a library printed on stdout: not ours
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "progress":
            self.stage, self.fraction = str(event["stage"]), float(event["fraction"])
            if self._listener is not None:
                self._listener(self.stage, self.fraction)
        elif kind == "warning":
            self.warnings.append(str(event["text"]))
        elif kind == "error":
            self.error = error_from_event(event)
        elif kind == "done":
            self._done = True
        else:
            self.on_event(event)

    def _conclude(self, code: int) -> None:
        if self._cancelling:
            return self._finish("cancelled", CancelledError(f"{self.what} cancelled", self.again))
        if self._done and code == 0 and self.folder is not None:
            try:
                self.read_result(self.folder)
            except UniversalSegError as err:
                return self._finish("failed", err)
            except Exception as err:  # noqa: BLE001 - a result we cannot read is a failure, not a crash
                return self._finish("failed", UniversalSegError(
                    f"the {self.what} result could not be read ({type(err).__name__}: {err})",
                    "run it again; report it if it happens again"))
            return self._finish("succeeded")
        if self.error is None:
            self.error = UniversalSegError(
                f"the {self.what} process stopped unexpectedly (exit code {code}){self._stderr_tail()}",
                "run it again; if it happens again, report it with the volume's size and spacing")
        self._finish("failed", self.error)

    def _stderr_tail(self) -> str:
        if self.folder is None:
            return ""
        try:
            lines = (self.folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
        except (OSError, TypeError):
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def _finish(self, state: str, error: UniversalSegError | None = None) -> None:
        self.state, self.error, self._ended = state, error, time.perf_counter()
        if state == "succeeded":
            self.stage, self.fraction = "done", 1.0
        self._cleanup()

    def _stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(GRACE_SECONDS)  # Popen.wait sleeps without the GIL
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _cleanup(self) -> None:
        self._stop()
        stdout = self.process.stdout if self.process is not None else None
        for handle in (self._events_file, self._stderr, stdout):
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    pass
        self._events_file = self._stderr = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
