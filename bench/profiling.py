"""py-spy around a process the bench started: record, then rank functions by own time.

py-spy is not a project dependency (``pip install py-spy``). A recording writes a flame
graph (``.svg``) or collapsed stacks (``.txt``, py-spy's ``raw`` format), which
:func:`own_time` and :func:`own_by_package` turn into tables. With uvloop the event loop
itself is C code, so its time (epoll, socket reads, callback dispatch) shows as the own
time of the Python frame that runs the loop (``start_listen`` in a Taskiq worker,
``Server.run``/``asyncio.run`` in uvicorn).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.common import stop


def py_spy_path() -> str | None:
    """The py-spy binary (PATH, then beside this Python), or None."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def start(pid: int, out: Path, duration: float | None = None) -> subprocess.Popen[bytes]:
    """Sample ``pid`` at 200 Hz until it exits (or for ``duration`` s) into ``out``.

    ``out`` ending in ``.txt``: collapsed stacks; otherwise an SVG flame graph. py-spy's
    own messages go to ``out`` with the suffix ``.log``.
    """
    py_spy = py_spy_path()
    if py_spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--format",
        fmt,
        "-o",
        str(out),
        "--nonblocking",
    ]
    if duration is not None:
        argv += ["--duration", str(max(1, round(duration)))]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def finish(profiler: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait for py-spy to write its output (it does when the target exits or its duration
    ends); SIGINT, its Ctrl-C, if it lingers."""
    try:
        profiler.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(profiler, signal.SIGINT, timeout=timeout)


def _stacks(collapsed: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            stacks.append((stack.split(";"), int(count_text)))
    return stacks


def own_time(collapsed: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """Top functions by own (leaf) samples: (function, own %, inclusive %)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(collapsed):
        names = [_frame_name(f) for f in frames]
        total += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return []
    return [(name, 100 * c / total, 100 * inclusive[name] / total) for name, c in own.most_common(top)]


def own_by_package(collapsed: Path) -> list[tuple[str, float]]:
    """Own samples grouped by the package of the leaf frame (redis, asyncio, taskiq, broker, ...)."""
    by: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(collapsed):
        total += count
        by[_package(frames[-1])] += count
    return [(name, 100 * c / total) for name, c in by.most_common()] if total else []


def _where(frame: str) -> str:
    return frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]


def _package(frame: str) -> str:
    """py-spy names files relative to sys.path: the first part is the package (or module)."""
    where = _where(frame)
    if where.startswith("<"):
        return where
    return Path(where).parts[0].removesuffix(".py")


def _frame_name(frame: str) -> str:
    """``fn (package/module.py:123)`` -> ``fn (package/module.py)``: one entry per function."""
    return f"{frame.partition(' (')[0]} ({_where(frame)})"
