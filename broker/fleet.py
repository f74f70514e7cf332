"""What operators look at: queue depths, in-flight and dead entries, live workers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from broker.keys import Keys
from broker.store import GROUP
from broker.topology import RedisClient


class QueueStats(msgspec.Struct):
    """One queue: entries waiting for a worker, held by workers, delayed, and dead."""

    name: str
    waiting: int
    in_flight: int
    delayed: int
    dead: int


class WorkerInfo(msgspec.Struct):
    """A live worker, from its heartbeat record (it expires a few leases after the worker)."""

    consumer: str
    host: str
    pid: int
    queues: list[str]
    running: list[str]
    seen_at_ms: int
    counters: dict[str, int]


async def queue_stats(redis: RedisClient, keys: Keys, queues: Iterable[str]) -> list[QueueStats]:
    """Depth figures of each queue, summed over its partitions, in one pipelined round trip."""
    names = sorted(queues)
    partitions = range(keys.partitions)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for p in partitions:
                pipe.xlen(keys.queue(name, p))
                pipe.xpending(keys.queue(name, p), GROUP)
                pipe.zcard(keys.delayed(name, p))
                pipe.xlen(keys.dead(name, p))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    stats = []
    per_queue = 4 * keys.partitions
    for i, name in enumerate(names):
        counts = [_count(r) for r in replies[per_queue * i : per_queue * (i + 1)]]
        length, pending, delayed, dead = (sum(counts[k::4]) for k in range(4))
        stats.append(QueueStats(name, max(0, length - pending), pending, delayed, dead))
    return stats


def _count(reply: Any) -> int:
    if isinstance(reply, dict):  # XPENDING summary
        return int(reply.get("pending", 0))
    return reply if isinstance(reply, int) else 0  # a missing group or stream counts 0


_COUNTERS = ("started", "succeeded", "failed", "retried", "cancelled", "lost")


async def live_workers(redis: RedisClient, keys: Keys) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired (SCAN, never KEYS)."""
    found = [key async for key in redis.scan_iter(match=keys.worker_pattern, count=500)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.hgetall(key)
        records: list[dict[bytes, bytes]] = await pipe.execute()
    workers = [_worker(record) for record in records if record.get(b"consumer")]
    return sorted(workers, key=lambda w: w.consumer)


def _worker(record: dict[bytes, bytes]) -> WorkerInfo:
    text = {k.decode(): v.decode() for k, v in record.items()}
    return WorkerInfo(
        consumer=text["consumer"],
        host=text.get("host", ""),
        pid=int(text.get("pid", 0)),
        queues=[q for q in text.get("queues", "").split(",") if q],
        running=[j for j in text.get("running", "").split(",") if j],
        seen_at_ms=int(text.get("seen_at", 0)),
        counters={name: int(text.get(name, 0)) for name in _COUNTERS},
    )
