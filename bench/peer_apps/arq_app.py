"""arq: a noop function; ``python -m bench.peer_apps.arq_app`` runs one worker process.

Settings: arq's defaults (poll_delay 0.5 s, queue_read_limit max(5 * max_jobs, 100),
keep_result 3600 s: the result, i.e. the completion, is recorded in Redis), except
``max_jobs`` = ``BENCH_CONCURRENCY`` (the bench runs 100, jobstream's default, and arq's
own default, 10). ``log_results`` off and arq's logger at WARNING: arq logs two lines per
job at INFO by default, which jobstream does not.
"""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.peer_apps import CONCURRENCY, REDIS_URL


async def noop(ctx: dict[str, Any]) -> None:
    """Does nothing."""


class WorkerSettings:
    """arq worker settings (the documented way to configure a worker)."""

    functions = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = CONCURRENCY
    log_results = False


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
