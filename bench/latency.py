"""``latency``: one job at a time on an idle system, as an SSE client sees it.

One web process (``web.app:app`` under uvicorn), one worker (``python -m workers``), this
scenario's own Redis; the clients are raw asyncio protocols in the bench process
(:mod:`bench.sse_client`).

- **enqueue -> SUCCESS**: a client already follows its owner feed (``GET /events``, as a
  dashboard or a client that submits many jobs would: no connection to open per job,
  so the fastest path a client has). Time from writing ``POST /jobs {"type":
  "demo.noop"}`` (on a kept-alive connection) to the bytes of that job's ``SUCCESS``
  event arriving on the feed; one clock (this process). The ``POST`` answer's own time
  is reported beside it.
- **progress -> SSE**: one client on ``GET /jobs/{id}/events`` of a ``test.steps`` job
  that stamps each progress message with the ``time.time()`` just before its progress
  call, ``interval`` apart (the 1-client case of ``bench.sse_latency``); same machine, one clock.
- **Redis floor**: ``redis-benchmark -c 1 -P 1`` (PING and a small SET) against the same
  Redis: the round trip every hop above pays at least once.

The first 10% of each series is warm-up and not counted.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from bench import profiling
from bench.common import (
    OWNER,
    Options,
    Report,
    bench_redis,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop,
    worker_argv,
)
from bench.cpu_time import tree_cpu_seconds
from bench.http import Server, profile_notes, uvicorn
from bench.sse_client import JOB_ID, STATUS, close_all, open_streams, pcts, port_of, profile_summary
from bench.sse_latency import latency_run
from devtools.embedded_redis import EmbeddedRedis

PREFIX = "lat:"
TASK_MODULES = "workers.tasks,tests.support.worker_tasks"
NOOP_BODY = b'{"type":"demo.noop","input":{}}'
PAUSES = {"back to back": 0.0, "5 ms idle before each": 0.005}
"""Enqueue series: jobs one at a time, the next sent as soon as the last was seen (as
``redis-benchmark -c 1`` does), and with every process idle for 5 ms before each job."""
TARGETS = {"enqueue_p50_ms": 2.0, "enqueue_p99_ms": 10.0, "progress_p50_ms": 2.0}

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class HttpConnection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, one request at a time; answers are read by length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._answer: asyncio.Future[tuple[bytes, float]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def request(self, raw: bytes) -> asyncio.Future[tuple[bytes, float]]:
        """Write ``raw``; the future gets (the body, ``time.time()`` when it was complete)."""
        assert self.transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._answer

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(self._buffer, 0, head_end) if head_end >= 0 else None
        if length is None or len(self._buffer) < head_end + 4 + int(length.group(1)):
            return
        end = head_end + 4 + int(length.group(1))
        body, self._buffer = self._buffer[head_end + 4 : end], self._buffer[end:]
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((body, now))
        self._answer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Successes:
    """A sink for the owner feed: when each job's ``SUCCESS`` event arrived, and the event."""

    def __init__(self) -> None:
        self.arrived: dict[bytes, tuple[float, bytes]] = {}
        self._waiting: dict[bytes, asyncio.Future[tuple[float, bytes]]] = {}

    def __call__(self, event: bytes, now: float) -> None:
        status = STATUS.search(event)
        job_id = JOB_ID.search(event)
        if status is None or job_id is None or status.group(1) != b"SUCCESS":
            return
        key = job_id.group(1)
        self.arrived[key] = (now, event)
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((now, event))

    async def wait(self, job_id: bytes, timeout: float) -> tuple[float, bytes]:
        if job_id in self.arrived:
            return self.arrived.pop(job_id)
        waiter = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiting.pop(job_id, None)
            self.arrived.pop(job_id, None)


STAGES = ["POST -> created", "created -> started", "started -> completed", "completed -> SSE client"]


def stages(t0: float, arrived: float, event: bytes) -> list[float]:
    """Where one sample's time went (ms), from the job's own times (Redis clock, whole ms)."""
    data = json.loads(event[event.index(b"data: ") + 6 :])
    created, started, completed = (
        datetime.fromisoformat(data[name]).timestamp()
        for name in ("created_at", "started_at", "completed_at")
    )
    return [1000 * (b - a) for a, b in itertools.pairwise([t0, created, started, completed, arrived])]


async def enqueue_to_success(
    server: Server,
    samples: int,
    worker: subprocess.Popen[bytes],
    pause: float,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """``samples`` noop jobs one at a time, ``pause`` s apart: POST -> its SUCCESS on an open owner feed.

    Also the CPU time the web and the worker process spent per job (from /proc);
    ``profile_to``: py-spy records the web process (after the warm-up) into that file.
    """
    port = port_of(server)
    successes = Successes()
    feed = await open_streams(port, ["/events"], successes)
    _, http = await asyncio.get_running_loop().create_connection(HttpConnection, "127.0.0.1", port)
    post = _noop_post(port)
    warmup = max(1, samples // 10)
    to_success: list[float] = []
    to_answer: list[float] = []
    breakdown: list[list[float]] = []
    profiler = None
    try:
        for i in range(warmup + samples):
            timeout = 60 if i == 0 else 10  # the first job waits for the worker to start
            t0, answered, done, event = await _post_and_wait(http, post, successes, worker, timeout)
            if i == warmup - 1:
                cpu = (server.cpu_seconds(), tree_cpu_seconds(worker.pid))
                profiler = profiling.start(server.proc.pid, profile_to) if profile_to else None
            if i >= warmup:
                to_success.append((done - t0) * 1000)
                to_answer.append((answered - t0) * 1000)
                breakdown.append(stages(t0, done, event))
            await asyncio.sleep(pause)
        web_cpu, worker_cpu = server.cpu_seconds() - cpu[0], tree_cpu_seconds(worker.pid) - cpu[1]
        if profiler is not None:
            stop(profiler, signal.SIGINT, timeout=30)  # py-spy writes its output on Ctrl-C
    finally:
        http.close()
        close_all(feed)
    return {
        "pause_s": pause,
        "samples": len(to_success),
        "warmup": warmup,
        **pcts(to_success),
        "post": pcts(to_answer),
        "stages_mean_ms": {name: statistics.fmean(b[i] for b in breakdown) for i, name in enumerate(STAGES)},
        "web_cpu_us_per_job": 1e6 * web_cpu / samples,
        "profile": profile_summary(profile_to) if profile_to else None,
        "worker_cpu_us_per_job": 1e6 * worker_cpu / samples,
    }


def _noop_post(port: int) -> bytes:
    """The raw ``POST /jobs`` request of one noop job."""
    head = (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(NOOP_BODY)}\r\n\r\n"
    )
    return head.encode() + NOOP_BODY


async def _post_and_wait(
    http: HttpConnection, post: bytes, successes: Successes, worker: subprocess.Popen[bytes], timeout: float
) -> tuple[float, float, float, bytes]:
    """Send one job and wait for its SUCCESS event: (sent, answered, succeeded, the event)."""
    t0 = time.time()
    body, answered = await asyncio.wait_for(http.request(post), 10)
    found = JOB_ID.search(body)
    if found is None:
        raise RuntimeError(f"POST /jobs answered {body[:300]!r}")
    if worker.poll() is not None:
        raise RuntimeError(f"the worker exited with {worker.returncode}")
    done, event = await successes.wait(found.group(1), timeout)
    return t0, answered, done, event


def redis_floor(server: EmbeddedRedis, requests: int) -> list[dict[str, Any]]:
    """``redis-benchmark -c 1 -P 1 -t ping,set`` against the bench Redis: p50/p99/max ms."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return [{"test": "redis-benchmark is not installed"}]
    argv = [binary, "-h", "127.0.0.1", "-p", str(server.port), "-c", "1", "-P", "1",
            "-n", str(requests), "-t", "ping,set", "--csv"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    rows = list(csv.DictReader(done.stdout.splitlines()))
    return [
        {
            "test": row["test"],
            "rps": float(row["rps"]),
            "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"]),
            "max_ms": float(row["max_latency_ms"]),
        }
        for row in rows
    ]


def run(options: Options) -> Report:
    """The ``latency`` scenario (see the module docstring)."""
    return asyncio.run(_run(options))


async def _run(options: Options) -> Report:
    samples = options.pick(50, 1000, options.n)
    interval = options.pick(5, 5) / 1000
    with bench_redis() as redis, tempfile.TemporaryDirectory(prefix="jobstream-bench-latency-") as tmp:
        log = Path(tmp) / "processes.log"
        extra = {
            "JOBSTREAM_TASK_MODULES": TASK_MODULES,
            "JOBSTREAM_SSE_KEEPALIVE_SECONDS": "600",
            "JOBSTREAM_LOCAL_USER": OWNER,
        }
        env = jobstream_env(redis.url, PREFIX, extra)
        floor = redis_floor(redis, options.pick(500, 20000))
        with uvicorn("web.app:app", env, log, "/healthz") as web:
            # progress -> SSE: its own job and worker (bench.sse_latency's 1-client case); warm-up 10%
            progress = await latency_run(web, env, log, 1, samples + max(1, samples // 9), interval)
            worker = spawn(worker_argv(), env, log)
            try:
                enqueue = {}
                for name, pause in PAUSES.items():
                    profile_to = (
                        options.out / "web-latency-profile.txt" if options.profile and not pause else None
                    )
                    enqueue[name] = await enqueue_to_success(web, samples, worker, pause, profile_to)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n{log_tail(log)}") from exc
            finally:
                stop(worker)
        version = redis_version(redis.url)
    return report(enqueue, progress, floor, version, interval)


def _ms(d: dict[str, Any]) -> list[str]:
    return [f"{d['p50_ms']:.3f}", f"{d['p99_ms']:.3f}", f"{d['max_ms']:.2f}"]


def _latency_rows(
    enqueue: dict[str, dict[str, Any]], progress: dict[str, Any], floor: list[dict[str, Any]]
) -> tuple[list[list[str]], dict[str, bool]]:
    """The table's rows, and which targets each series met."""
    rows = []
    met = {}
    for name, series in enqueue.items():
        n = f"{series['samples']:,}"
        rows.append([f"enqueue -> SUCCESS on GET /events, {name}", *_ms(series), n, "p50 < 2, p99 < 10"])
        rows.append(["  of which POST /jobs answered", *_ms(series["post"]), n, ""])
        met[f"enqueue p50, {name}"] = series["p50_ms"] < TARGETS["enqueue_p50_ms"]
        met[f"enqueue p99, {name}"] = series["p99_ms"] < TARGETS["enqueue_p99_ms"]
    rows.append(
        ["progress call -> GET /jobs/{id}/events", *_ms(progress), f"{progress['deliveries']:,}", "p50 < 2"]
    )
    met["progress p50"] = progress["p50_ms"] < TARGETS["progress_p50_ms"]
    rows += [[f"Redis round trip ({f['test']}, floor)", *_ms(f), "", ""] for f in floor if "p50_ms" in f]
    return rows, met


def _latency_notes(
    enqueue: dict[str, dict[str, Any]], version: str, interval: float, met: dict[str, bool]
) -> list[str]:
    """How each path was timed, CPU and stages per job, the targets met, and any profile."""
    notes = [
        "one uvicorn process (uvloop, httptools, no access log), one worker (python -m workers), "
        f"Redis {version}; clients are raw asyncio protocols in the bench process; all on loopback",
        "enqueue: time.time() before writing POST /jobs on a kept-alive connection -> SUCCESS event bytes "
        "on an owner feed (GET /events) opened before; jobs one at a time; the first 10% are warm-up",
    ]
    for name, series in enqueue.items():
        notes.append(
            f"  {name}: CPU per job: web {series['web_cpu_us_per_job']:.0f} us, worker "
            f"{series['worker_cpu_us_per_job']:.0f} us; mean ms by stage (the job's own times, whole ms, "
            "so the first stage reads ~0.5 low and the last ~0.5 high): "
            + ", ".join(f"{k} {v:.2f}" for k, v in series["stages_mean_ms"].items())
        )
    notes += [
        "progress: time.time() in the task just before ctx.progress() -> event bytes at one client of "
        f"GET /jobs/{{id}}/events; updates {interval * 1000:.0f} ms apart; the first 10% are warm-up",
        "floor: redis-benchmark -c 1 -P 1 (one client, no pipelining, back to back) against the same Redis",
        "targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()),
    ]
    for name, series in enqueue.items():
        if series["profile"]:
            notes += profile_notes(f"web, enqueue -> SUCCESS {name}", series["profile"])
    return notes


def report(
    enqueue: dict[str, dict[str, Any]],
    progress: dict[str, Any],
    floor: list[dict[str, Any]],
    version: str,
    interval: float,
) -> Report:
    rows, met = _latency_rows(enqueue, progress, floor)
    title = "Latency, one job at a time: enqueue -> SUCCESS and progress -> SSE client"

    def chart(path: Path) -> None:
        from bench.common import bar_chart

        labels = [*(f"enqueue->SUCCESS\n{name}" for name in enqueue), "progress->SSE", "Redis RTT"]
        values = [*(series["p50_ms"] for series in enqueue.values()), progress["p50_ms"],
                  floor[0].get("p50_ms", 0.0)]  # fmt: skip
        bar_chart(path, "One job at a time: p50 latency", labels, values, "ms")

    notes = _latency_notes(enqueue, version, interval, met)
    return Report(
        scenario="latency",
        title=title,
        columns=["path", "p50 ms", "p99 ms", "max ms", "samples", "target ms"],
        rows=rows,
        data={
            "enqueue": enqueue,
            "progress": progress,
            "redis_floor": floor,
            "redis": version,
            "targets_ms": TARGETS,
            "met": met,
            "interval_s": interval,
        },
        notes=notes,
        chart=chart,
    )
