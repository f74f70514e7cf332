"""What operators look at: queue figures and live workers, read from Redis when asked.

Nothing here lags: queue figures come from the streams themselves at the moment of the
read, and a worker rewrites its heartbeat within a fraction of a second of a job starting
or ending (:mod:`workers.leases`), not only every lease/3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from broker.keys import Keys
from broker.store import GROUP
from broker.topology import RedisClient

_decode_busy = msgspec.json.Decoder(dict[str, int]).decode


class QueueStats(msgspec.Struct):
    """One queue, summed over its partitions (the oldest waiting age: the most of any).

    ``waiting``: entries no worker has taken yet; ``in_flight``: entries held by workers;
    ``delayed``: delayed jobs and retries waiting for their time; ``dead``: dead-lettered
    entries; ``lag``: the consumer group's lag as Redis reports it (``XINFO GROUPS``, what
    KEDA's redis-streams scaler reads), or, where Redis cannot tell, the partition's
    waiting count; ``oldest_waiting_seconds``: how long the oldest waiting entry has waited
    (0 with none); ``worker_slots``: jobs the live workers consuming this queue can run at
    once (a worker of several queues counts for each); ``busy_slots``: jobs of this queue
    they run now.
    """

    name: str
    waiting: int
    in_flight: int
    delayed: int
    dead: int
    lag: int = 0
    oldest_waiting_seconds: float = 0.0
    worker_slots: int = 0
    busy_slots: int = 0


class WorkerInfo(msgspec.Struct):
    """A live worker, from its heartbeat record (it expires a few leases after the worker).

    ``slots``: jobs it runs at once; ``busy``: jobs it runs now, by queue.
    """

    consumer: str
    host: str
    pid: int
    queues: list[str]
    running: list[str]
    seen_at_ms: int
    counters: dict[str, int]
    slots: int = 0
    busy: dict[str, int] = msgspec.field(default_factory=dict)


_PER_PARTITION = 5
"""Replies read per queue and partition: XLEN, XPENDING, ZCARD delayed, XLEN dead, XINFO GROUPS."""


async def queue_stats(
    redis: RedisClient, keys: Keys, queues: Iterable[str], workers: Iterable[WorkerInfo] = ()
) -> list[QueueStats]:
    """The figures of each queue, summed over its partitions, in two pipelined round trips
    (the second reads the first waiting entry of each partition that has one)."""
    names = sorted(queues)
    partitions = range(keys.partitions)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for p in partitions:
                pipe.xlen(keys.queue(name, p))
                pipe.xpending(keys.queue(name, p), GROUP)
                pipe.zcard(keys.delayed(name, p))
                pipe.xlen(keys.dead(name, p))
                pipe.xinfo_groups(keys.queue(name, p))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    stats, heads = [], []
    for i, name in enumerate(names):
        stat = QueueStats(name, 0, 0, 0, 0)
        for p in partitions:
            at = (i * keys.partitions + p) * _PER_PARTITION
            length, pending, delayed, dead = (_count(r) for r in replies[at : at + 4])
            waiting = max(0, length - pending)
            group = _group(replies[at + 4])
            stat.waiting += waiting
            stat.in_flight += pending
            stat.delayed += delayed
            stat.dead += dead
            lag = group.get("lag")
            stat.lag += lag if isinstance(lag, int) else waiting
            if waiting:
                heads.append((stat, keys.queue(name, p), group.get("last-delivered-id") or b"0-0"))
        stats.append(stat)
    await _oldest_waiting(redis, heads)
    _add_slots(stats, workers)
    return stats


async def _oldest_waiting(redis: RedisClient, heads: list[tuple[QueueStats, str, bytes]]) -> None:
    """Set each queue's ``oldest_waiting_seconds`` from the first entry past its group's last
    delivered one (its id is the Redis time it was added) in each partition with waiting entries."""
    if not heads:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for _stat, stream, last in heads:
            pipe.xrange(stream, min=b"(" + _bytes(last), max="+", count=1)
        firsts: list[Any] = await pipe.execute(raise_on_error=False)
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    for (stat, _stream, _last), first in zip(heads, firsts, strict=True):
        if isinstance(first, list) and first:
            added_ms = int(_bytes(first[0][0]).split(b"-")[0])
            stat.oldest_waiting_seconds = max(stat.oldest_waiting_seconds, max(0, now_ms - added_ms) / 1000)


def _add_slots(stats: list[QueueStats], workers: Iterable[WorkerInfo]) -> None:
    by_name = {stat.name: stat for stat in stats}
    for worker in workers:
        for queue in worker.queues:
            stat = by_name.get(queue)
            if stat is not None:
                stat.worker_slots += worker.slots
                stat.busy_slots += worker.busy.get(queue, 0)


def _group(reply: Any) -> dict[str, Any]:
    """The ``workers`` group of an XINFO GROUPS reply ({} when the stream or group is missing)."""
    if isinstance(reply, list):
        for group in reply:
            if group.get("name") in (GROUP, GROUP.encode()):
                return dict(group)
    return {}


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _count(reply: Any) -> int:
    if isinstance(reply, dict):  # XPENDING summary
        return int(reply.get("pending", 0))
    return reply if isinstance(reply, int) else 0  # a missing group or stream counts 0


_COUNTERS = ("started", "succeeded", "failed", "retried", "cancelled", "lost")


HEARTBEAT_TTL_LEASES = 3
"""A heartbeat's TTL, in leases: every beat sets it again (``workers.leases``)."""


async def live_workers(
    redis: RedisClient, keys: Keys, lease_seconds: float | None = None
) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired (SCAN, never KEYS); with ``lease_seconds``,
    also none that missed two beats in a row (a worker beats every lease/3): a SIGKILLed
    worker leaves the list after about two thirds of a lease, not only once its key expires.
    The key's remaining TTL tells, so the hosts' clocks do not matter."""
    found = [key async for key in redis.scan_iter(match=keys.worker_pattern, count=500)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.hgetall(key)
            pipe.pttl(key)
        replies: list[Any] = await pipe.execute()
    fresh_ms = -1.0
    if lease_seconds is not None:  # the TTL left after two missed beats, and a second to spare
        fresh_ms = (HEARTBEAT_TTL_LEASES - 2 / 3) * lease_seconds * 1000 - 1000
    workers = [
        _worker(record)
        for record, ttl_ms in zip(replies[::2], replies[1::2], strict=True)
        if record.get(b"consumer") and (ttl_ms < 0 or ttl_ms >= fresh_ms)
    ]
    return sorted(workers, key=lambda w: w.consumer)


def _worker(record: dict[bytes, bytes]) -> WorkerInfo:
    text = {k.decode(): v.decode() for k, v in record.items()}
    try:
        busy = _decode_busy(text.get("busy") or "{}")
    except msgspec.DecodeError:
        busy = {}
    return WorkerInfo(
        consumer=text["consumer"],
        host=text.get("host", ""),
        pid=int(text.get("pid", 0)),
        queues=[q for q in text.get("queues", "").split(",") if q],
        running=[j for j in text.get("running", "").split(",") if j],
        seen_at_ms=int(text.get("seen_at", 0)),
        counters={name: int(text.get(name, 0)) for name in _COUNTERS},
        slots=int(text.get("slots", 0)),
        busy=busy,
    )


async def created_counts(redis: RedisClient, keys: Keys) -> dict[str, int]:
    """Jobs created so far, by task type, summed over the partitions' counts hashes."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(keys.partitions):
            pipe.hgetall(keys.counts(p))
        hashes: list[dict[bytes, bytes]] = await pipe.execute()
    totals: dict[str, int] = {}
    for counts in hashes:
        for field, value in counts.items():
            kind, _, task = field.decode().partition(":")
            if kind == "created":
                totals[task] = totals.get(task, 0) + int(value)
    return totals
