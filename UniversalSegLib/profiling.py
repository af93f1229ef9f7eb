"""Per-stage seconds and memory of one ``segment`` run (``universalseg segment --profile OUT.json``).

A :class:`Profile` is created by the caller and handed down (CLI -> API ->
:class:`~UniversalSegLib.inference.Segmenter`); there is no global state, so two runs in one process (the
Slicer module, a batch) never mix their figures. It is torch-free and uses only the standard library
(``resource`` and ``/proc``, no psutil).

Stages are *exclusive*: time spent in a nested stage is not counted again in the enclosing one, so the stage
seconds plus ``other`` (time inside no stage) add up to the wall time of the profiled span. Every stage
keeps the process's peak RSS seen when it ended (``ru_maxrss`` only grows, so it is the high-water mark so far).

>>> profile = Profile()
>>> with profile.stage("read"):
...     pass
>>> profile.window(0.25, windows=2)
>>> sorted(profile.to_dict()["stages"])
['read']
>>> profile.to_dict()["network_calls"][0]["windows"]
2
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

#: The stages ``segment`` records, in the order they happen (a run may skip some, e.g. ``mirror`` with --no-mirror).
STAGES = ("import", "setup", "read", "load_model", "resample", "normalise", "sliding_window", "network", "mirror",
          "mirror_network", "vote", "resample_back", "keep_largest", "write")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``; 0.0 where unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def rss_mb() -> float | None:
    """Current resident memory in MiB from ``/proc/self/statm`` (Linux), else ``None``."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def seconds_since_process_start() -> float | None:
    """Seconds since the OS started this process (Linux ``/proc``, 10 ms resolution), else ``None``."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 (starttime), in ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Profile:
    """Collects exclusive stage times, per-call network times and peak memory; see the module doc.

    ``start``: the :func:`time.perf_counter` value the profiled span begins at (default: now).
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.calls: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self._stack: list[list[Any]] = []  # [name, entered at, seconds of nested stages]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (accumulated over repeats), minus the stages nested in it."""
        entry: list[Any] = [name, time.perf_counter(), 0.0]
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - entry[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + total - entry[2]
            if self._stack:
                self._stack[-1][2] += total
            self.peak[name] = peak_rss_mb()

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` already measured elsewhere (e.g. the imports before the profile existed) as ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.peak[name] = peak_rss_mb()

    def window(self, seconds: float, windows: int, mirror: bool = False) -> None:
        """Record one network call on ``windows`` windows (the caller also times it as a stage)."""
        self.calls.append({"seconds": round(seconds, 6), "windows": int(windows), "mirror": bool(mirror)})

    def to_dict(self, wall: float | None = None) -> dict[str, Any]:
        """The JSON-ready report; ``wall`` defaults to the time since ``start``."""
        wall = time.perf_counter() - self.start if wall is None else wall
        ordered = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
        staged = sum(self.seconds.values())
        plain = [c["seconds"] for c in self.calls if not c["mirror"]]
        mirrored = [c["seconds"] for c in self.calls if c["mirror"]]
        return {
            "wall_seconds": round(wall, 4),
            "stages": {s: {"seconds": round(self.seconds[s], 4), "peak_rss_mb": round(self.peak.get(s, 0.0), 1)}
                       for s in ordered},
            "other_seconds": round(max(wall - staged, 0.0), 4),
            "network_calls": self.calls,
            "network_seconds_per_call": plain,
            "mirror_network_seconds_per_call": mirrored,
            # CPU seconds of the whole process (user + system, all threads): less sensitive to a busy machine
            "cpu_seconds": round(sum(os.times()[:2]), 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_mb_at_end": None if (now := rss_mb()) is None else round(now, 1),
            **self.info,
        }
