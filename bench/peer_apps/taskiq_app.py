"""Plain taskiq-redis: ``RedisStreamBroker`` with its defaults and a noop task.

``python -m taskiq worker bench.peer_apps.taskiq_app:broker --workers 1 --log-level WARNING
--max-async-tasks N`` runs it. Settings: the stream broker's defaults (group created at
``$`` at start-up, xread_count 100, xread_block 2 s, ack when the result is saved) with
taskiq-redis's ``RedisAsyncResultBackend`` (results kept 3600 s, like arq's), so that the
completion is recorded in Redis as for the others; ``--max-async-tasks`` =
``BENCH_CONCURRENCY`` (100, also taskiq's default). WARNING log level: taskiq logs each
task at INFO.
"""

from __future__ import annotations

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from bench.peer_apps import REDIS_URL

broker = RedisStreamBroker(url=REDIS_URL).with_result_backend(
    RedisAsyncResultBackend(redis_url=REDIS_URL, result_ex_time=3600)
)


@broker.task(task_name="noop")
async def noop() -> None:
    """Does nothing."""
