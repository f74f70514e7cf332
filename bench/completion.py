"""Waiting for a batch of jobs to complete: when the first and the last completion came.

Every throughput scenario observes completion the same way (polling a count every 10 ms),
for jobstream and every peer alike, so their start-up and steady rates compare.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass
class Completion:
    """When the first and the last completion of a batch were observed (``time.time()``)."""

    spawned: float
    first_seen: float
    done_at_first: int
    finished: float
    n: int

    @property
    def steady_rate(self) -> float:
        """Jobs/s from the first observed completion to the last: worker start-up excluded."""
        span = self.finished - self.first_seen
        return (self.n - self.done_at_first) / span if span > 0 else float("inf")

    @property
    def wall_rate(self) -> float:
        """Jobs/s from spawning the workers to the last completion: start-up included."""
        return self.n / (self.finished - self.spawned)

    @property
    def startup(self) -> float:
        """Seconds from spawning the workers to the first observed completion."""
        return self.first_seen - self.spawned


async def watch_completion(
    completed: Callable[[], Awaitable[int]],
    n: int,
    spawned: float,
    timeout: float,
    alive: Callable[[], str | None] = lambda: None,
    interval: float = 0.01,
) -> Completion:
    """Poll ``completed()`` every ``interval`` s until it reaches ``n``; bounded by ``timeout``.

    ``alive()`` returns a reason to give up early (a worker died), or None.
    """
    deadline = time.monotonic() + timeout
    first_seen, done_at_first = 0.0, 0
    while True:
        done = await completed()
        now = time.time()
        if done and not first_seen:
            first_seen, done_at_first = now, done
        if done >= n:
            return Completion(spawned, first_seen, done_at_first, now, n)
        problem = alive()
        if problem:
            raise RuntimeError(f"{problem} ({done}/{n} done)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s with {done}/{n} done")
        await asyncio.sleep(interval)


def dead_process(procs: Sequence[subprocess.Popen[bytes]]) -> Callable[[], str | None]:
    """An ``alive`` check for :func:`watch_completion`: names a process that exited."""

    def check() -> str | None:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return f"process {proc.pid} ({' '.join(map(str, proc.args))[:80]}) exited with {code}"
        return None

    return check
