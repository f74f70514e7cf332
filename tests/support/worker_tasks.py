"""Tasks only the worker tests load (``JOBSTREAM_TASK_MODULES=...,tests.support.worker_tasks``).

They count what they do in Redis, from inside the task, so a test can tell how often
and how concurrently a job's code really ran.
"""

from __future__ import annotations

import asyncio
import os
import time

import msgspec

from broker.registry import JobContext, task
from broker.settings import load_settings
from broker.topology import RedisClient, open_redis

_redis: RedisClient | None = None


def redis() -> RedisClient:
    global _redis  # noqa: PLW0603 - one client per worker process
    if _redis is None:
        _redis = open_redis(load_settings().topology)
    return _redis


class Counted(msgspec.Struct):
    key: str
    seconds: float = 0.0


class Flaky(msgspec.Struct):
    key: str
    fails: int


@task("test.counted")
async def counted(ctx: JobContext, data: Counted) -> int:
    """Counts its runs, when each started, and whether two live runs ever overlapped."""
    r = redis()
    await r.incr(f"{data.key}:runs")
    if await r.incr(f"{data.key}:running") > 1:
        await r.incr(f"{data.key}:overlap")
    await r.rpush(f"{data.key}:starts", repr(time.time()))
    try:
        await asyncio.sleep(data.seconds)
    finally:
        await r.decr(f"{data.key}:running")
    return ctx.attempt


@task("test.crash")
async def crash(ctx: JobContext, data: Counted) -> None:
    """Kills its worker process every time, as a segfaulting library would."""
    await redis().incr(f"{data.key}:runs")
    os._exit(17)


@task("test.flaky", retries=3, backoff=0.4)
async def flaky(ctx: JobContext, data: Flaky) -> int:
    """Fails its first ``fails`` attempts, recording when each attempt started."""
    await redis().rpush(f"{data.key}:starts", repr(time.time()))
    if ctx.attempt <= data.fails:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


@task("test.slow", timeout=0.5)
async def slow(ctx: JobContext, data: Counted) -> None:
    """Runs past its 0.5 s timeout."""
    await asyncio.sleep(data.seconds)
    await redis().incr(f"{data.key}:finished")


@task("test.video", queue="video")
async def video(ctx: JobContext, data: Counted) -> str:
    """Lives on the ``video`` queue: only workers started for that queue run it."""
    return "rendered"


class Steps(msgspec.Struct):
    count: int = 1000
    interval: float = 0.0
    gate: str | None = None
    stamp: bool = False


@task("test.steps")
async def steps(ctx: JobContext, data: Steps) -> int:
    """``count`` progress updates, as fast as it can (or ``interval`` apart).

    With ``gate``, each step, and the end, first pops an item from that list (the SSE tests
    push one at a time, to walk the job in lockstep with their clients). With ``stamp``,
    each step's message is the ``time.time()`` of its progress call (the SSE benchmark).
    """
    for step in range(1, data.count + 1):
        await _through_gate(data.gate, f"step {step}")
        message = repr(time.time()) if data.stamp else f"step {step} of {data.count}"
        await ctx.progress(step * 100 / data.count, message)
        if data.interval:
            await asyncio.sleep(data.interval)
    await _through_gate(data.gate, "the end")
    return data.count


async def _through_gate(gate: str | None, what: str) -> None:
    if gate is not None and await redis().blpop([gate], timeout=60) is None:
        raise TimeoutError(f"nobody opened gate {gate} for {what}")


class Logged(msgspec.Struct):
    log: str
    seconds: float = 0.0


@task("test.logged")
async def logged(ctx: JobContext, data: Logged) -> int:
    """Appends ``<job> <attempt> <pid> start|end <time>`` lines to the file ``log``.

    A file, not Redis: the fault tests crash Redis, and the record must not depend on it.
    The end line is written however the attempt stops, unless its process is killed.
    """
    _append(data.log, f"{ctx.job_id} {ctx.attempt} {os.getpid()} start {time.time()!r}\n")
    try:
        await asyncio.sleep(data.seconds)
    finally:
        _append(data.log, f"{ctx.job_id} {ctx.attempt} {os.getpid()} end {time.time()!r}\n")
    return ctx.attempt


def _append(path: str, line: str) -> None:
    """One ``write`` with O_APPEND: whole lines, whoever else appends, even if killed after."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Fenced(msgspec.Struct):
    key: str
    steps: int = 3


@task("test.fenced")
async def fenced(ctx: JobContext, data: Fenced) -> int:
    """Steps with side effects, each guarded by ``ctx.progress`` (a stale attempt stops there).

    A step counts itself in ``<key>:running`` (``<key>:overlap`` when another step was
    open) and appends its attempt number to ``<key>:effects``; between steps an attempt
    waits at its own gate, ``<key>:gate:<attempt>``, so a test can freeze it there.
    """
    r = redis()
    for step in range(1, data.steps + 1):
        await ctx.progress(100 * (step - 1) / data.steps, f"step {step}")
        if await r.incr(f"{data.key}:running") > 1:
            await r.incr(f"{data.key}:overlap")
        await r.rpush(f"{data.key}:effects", ctx.attempt)
        await r.decr(f"{data.key}:running")
        await _through_gate(f"{data.key}:gate:{ctx.attempt}", f"after step {step}")
    return ctx.attempt
