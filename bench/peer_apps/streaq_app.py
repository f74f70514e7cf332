"""streaq: a noop task; ``python -m bench.peer_apps.streaq_app`` runs one worker process.

Settings: streaq's defaults (stream consumer group, prefetch = concurrency, result ttl
300 s: the result, i.e. the completion, is recorded in Redis), except ``concurrency`` =
``BENCH_CONCURRENCY`` (the bench runs 100, jobstream's default, and streaq's own default,
16). Logging at WARNING: streaq logs two lines per task at INFO by default, which
jobstream does not.
"""

from __future__ import annotations

import logging

from streaq import Worker

from bench.peer_apps import CONCURRENCY, REDIS_URL

worker = Worker(redis_url=REDIS_URL, concurrency=CONCURRENCY)


@worker.task
async def noop() -> None:
    """Does nothing."""


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    worker.run_sync()
