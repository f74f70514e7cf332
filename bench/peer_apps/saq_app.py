"""SAQ: a noop function; ``python -m saq bench.peer_apps.saq_app.settings --quiet`` runs it.

Settings: SAQ's defaults (BLMOVE dequeue, job ttl 600 s: the finished job, i.e. the
completion, is kept in Redis; upkeep timers), except ``concurrency`` =
``BENCH_CONCURRENCY`` (the bench runs 100, jobstream's default, and SAQ's own default,
10). ``--quiet``: no per-job INFO logging.
"""

from __future__ import annotations

from typing import Any

from saq import Queue

from bench.peer_apps import CONCURRENCY, REDIS_URL


async def noop(ctx: dict[str, Any]) -> None:
    """Does nothing."""


queue = Queue.from_url(REDIS_URL)

settings = {
    "queue": queue,
    "functions": [noop],
    "concurrency": CONCURRENCY,
}
