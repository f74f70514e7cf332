"""Queue plumbing shared by every role: consumer groups, depths, dead letters."""

from __future__ import annotations

from collections.abc import Iterable

from redis.exceptions import ResponseError

from broker.keys import Keys
from broker.store import GROUP
from broker.topology import RedisClient


async def ensure_groups(redis: RedisClient, keys: Keys, queues: Iterable[str]) -> None:
    """Create each queue's stream and consumer group from id 0, idempotently.

    Every role calls this at start-up, so a job queued before any worker ever ran is
    still delivered (stock Taskiq creates the group at ``$`` and would skip it). A queue
    has a stream in every partition.
    """
    for queue in queues:
        for partition in range(keys.partitions):
            try:
                await redis.xgroup_create(keys.queue(queue, partition), GROUP, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
