"""SAQ: a noop function; ``python -m saq bench.peer_apps.saq_app.settings --quiet`` runs it.

Settings: SAQ's defaults (BLMOVE dequeue, job ttl 600 s: the finished job, i.e. the
completion, is kept in Redis; upkeep timers), except ``concurrency`` =
``BENCH_CONCURRENCY`` (the bench runs 100, jobstream's default, and SAQ's own default,
10), and a Redis pool of 2 x concurrency + 10 connections: SAQ holds one blocked BLMOVE
per concurrency slot, and redis-py 8 caps a pool at 100 connections by default, which at
concurrency 100 starves the upkeep tasks ("Too many connections") and strands a job.
``--quiet``: no per-job INFO logging.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue

from bench.peer_apps import CONCURRENCY, REDIS_URL


async def noop(ctx: dict[str, Any]) -> None:
    """Does nothing."""


queue = RedisQueue(Redis.from_url(REDIS_URL, max_connections=2 * CONCURRENCY + 10))

settings = {
    "queue": queue,
    "functions": [noop],
    "concurrency": CONCURRENCY,
}
