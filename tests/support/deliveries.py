"""Acting as a worker in process: read the next entry of a queue as a ``Delivery``."""

from __future__ import annotations

from typing import Any

from broker.message import decode_message
from broker.store import GROUP, Delivery, JobStore


async def take(store: JobStore, consumer: str = "c1", queue: str = "default") -> Delivery:
    """Read the next entry of ``queue`` as a worker would (XREADGROUP), as a ``Delivery``:
    from the first partition that has one."""
    for partition in range(store.keys.partitions):
        stream = store.keys.queue(queue, partition)
        reply: Any = await store.redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=1)
        if reply:
            entry_id, fields = reply[0][1][0]
            message = decode_message(fields[b"data"])
            return Delivery(message.task_id, stream, entry_id.decode(), message.labels.dispatch)
    raise AssertionError(f"no entry waits in queue {queue}")
