"""HTTP load for the web scenarios: one uvicorn process, driven by Debian's ``wrk``.

Every server (the jobstream app and the bare ceiling app) runs with the same options:
``python -m uvicorn APP --host 127.0.0.1 --port P --log-level warning --no-access-log``
(uvloop and httptools, as ``uvicorn[standard]`` picks them), one process. ``wrk`` runs
one thread (the machine has 2 cores: wrk, uvicorn and Redis share them), a warm-up run
first, then the measured run. The server's CPU time during the run (from /proc) is
reported beside req/s, so a load generator that competes for the CPU shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import profiling
from bench.common import (
    ROOT,
    Report,
    bar_chart,
    fmt_rate,
    fmt_spread,
    log_tail,
    spawn,
    stop,
    summary,
)
from bench.cpu_time import cpu_seconds
from devtools.embedded_redis import free_port

LUA = ROOT / "bench" / "wrk" / "request.lua"
UVICORN_OPTIONS = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]


@dataclass
class Server:
    """A uvicorn process serving ``base_url``."""

    proc: subprocess.Popen[bytes]
    base_url: str

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        return cpu_seconds(self.proc.pid)


def wrk_path() -> str:
    """The ``wrk`` binary, or a clear error naming the Debian package."""
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    return found


@contextmanager
def uvicorn(app: str, env: Mapping[str, str] | None, log: Path, ready_path: str) -> Iterator[Server]:
    """Start ``app`` under uvicorn on a free port; wait until ``ready_path`` answers; stop it after."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port), *UVICORN_OPTIONS]
    proc = spawn(argv, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited with {proc.returncode}\n{log_tail(log)}")
            try:
                if httpx.get(base + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app} not ready within 30 s\n{log_tail(log)}")
            time.sleep(0.1)
        yield Server(proc, base)
    finally:
        stop(proc)


def wrk(
    server: Server,
    path: str,
    seconds: float,
    connections: int = 32,
    env: Mapping[str, str] | None = None,
    warmup: float = 1.0,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Load ``path`` with wrk; returns req/s, latency, errors and the server's CPU use.

    ``profile_to``: record the server with py-spy during the run (see ``bench.profiling``).
    """
    if warmup > 0:
        _run_wrk(server.base_url + path, warmup, connections, env)
    profiler = profiling.start(server.proc.pid, profile_to, duration=seconds) if profile_to else None
    cpu_before = server.cpu_seconds()
    result = _run_wrk(server.base_url + path, seconds, connections, env)
    cpu = server.cpu_seconds() - cpu_before
    if profiler is not None:
        profiling.finish(profiler)
    duration = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / duration
    result["server_cpu"] = cpu / duration
    result["rps_per_server_cpu_s"] = result["requests"] / cpu if cpu else float("nan")
    errors = result["errors"]
    result["error_count"] = sum(errors.values())
    return result


def _run_wrk(url: str, seconds: float, connections: int, env: Mapping[str, str] | None) -> dict[str, Any]:
    argv = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(LUA), url]
    environ = {**os.environ, **(env or {})}
    done = subprocess.run(
        argv, env=environ, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            return parsed
    raise RuntimeError(f"wrk gave no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


WRK_COLUMNS = [
    "request",
    "req/s",
    "spread",
    "p50 ms",
    "p99 ms",
    "server CPU",
    "req per server CPU-s",
    "of ceiling",
]


def wrk_report(
    scenario: str,
    title: str,
    results: dict[str, list[dict[str, Any]]],
    seconds: int,
    rounds: int,
    version: str,
    extra_notes: list[str] | None = None,
) -> Report:
    """The table of a wrk scenario; its last case is the ceiling the others are compared with."""
    names = list(results)
    stats = {name: summary([r["rps"] for r in runs]) for name, runs in results.items()}
    ceiling = stats[names[-1]]["median"]
    rows = [_wrk_row(name, runs, stats[name], ceiling, rounds) for name, runs in results.items()]
    notes = [*(extra_notes or []), *_wrk_notes(results, seconds, rounds, version)]

    def chart(path: Path) -> None:
        bar_chart(path, title, names, [stats[n]["median"] for n in names], "requests/s",
                  [(stats[n]["min"], stats[n]["max"]) for n in names])  # fmt: skip

    data = {"seconds": seconds, "rounds": rounds, "redis": version, "stats": stats, "runs": results}
    return Report(scenario, title, WRK_COLUMNS, rows, data, notes, chart)


def _wrk_row(
    name: str, runs: list[dict[str, Any]], stats: dict[str, float], ceiling: float, rounds: int
) -> list[str]:
    """One case's row: the median req/s over the rounds; latency and CPU of the last round."""
    last = runs[-1]
    return [
        name,
        fmt_rate(stats["median"]),
        fmt_spread(stats) if rounds > 1 else "-",
        f"{last['latency_us']['p50'] / 1000:.2f}",
        f"{last['latency_us']['p99'] / 1000:.2f}",
        f"{100 * last['server_cpu']:.0f}%",
        fmt_rate(last["rps_per_server_cpu_s"]),
        f"{100 * stats['median'] / ceiling:.0f}%",
    ]


def _wrk_notes(
    results: dict[str, list[dict[str, Any]]], seconds: int, rounds: int, version: str
) -> list[str]:
    """How a wrk scenario was run, and its errors per case."""
    errors = {name: sum(r["error_count"] for r in runs) for name, runs in results.items()}
    return [
        f"wrk 1 thread, 32 connections, {seconds} s per run after a 1 s warm-up, {rounds} round(s) "
        "interleaved; medians. latency and CPU columns: the last round.",
        "server: python -m uvicorn APP " + " ".join(UVICORN_OPTIONS) + " --port P (one process); "
        f"JOBSTREAM_AUTH=none unless the row says otherwise; Redis {version}. wrk, uvicorn and Redis "
        "share 2 cores: 'req per server CPU-s' is what one dedicated core would serve.",
        "errors (socket + non-2xx/3xx): " + ", ".join(f"{k}: {v}" for k, v in errors.items()),
    ]


def profile_server(
    server: Server, path: str, seconds: float, env: Mapping[str, str], out: Path
) -> dict[str, Any]:
    """One more (unmeasured) wrk run with py-spy on the server; its top functions by own time."""
    if profiling.py_spy_path() is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    wrk(server, path, seconds, env=env, warmup=0.0, profile_to=out)
    if not out.exists():
        return {"error": f"py-spy wrote nothing; see {out.with_suffix('.log')}"}
    return {
        "raw": str(out),
        "top_own": profiling.own_time(out),
        "own_by_package": profiling.own_by_package(out),
    }


def profile_notes(what: str, profile: dict[str, Any]) -> list[str]:
    """Report lines for a server profile: top 10 functions by own time, own time by package."""
    if "error" in profile:
        return [f"{what} profile: {profile['error']}"]
    lines = [f"{what} profile (py-spy, own % / inclusive % of CPU samples), top 10:"]
    lines += [f"  {own:5.1f}% {incl:5.1f}%  {name}" for name, own, incl in profile["top_own"][:10]]
    lines.append(
        "  own time by package: " + ", ".join(f"{p} {v:.0f}%" for p, v in profile["own_by_package"][:8])
    )
    return lines
