"""Queue plumbing shared by every role: consumer groups, depths, dead letters."""

from __future__ import annotations

from collections.abc import Iterable

from redis.exceptions import ResponseError

from broker.errors import JobstreamError
from broker.keys import Keys
from broker.store import GROUP
from broker.topology import RedisClient


class PartitionsLowered(JobstreamError):
    """This process has fewer partitions than jobs were made with: it would strand them."""

    def __init__(self, configured: int, used: int) -> None:
        super().__init__(
            f"JOBSTREAM_PARTITIONS is {configured}, but this Redis (prefix and all) has held jobs in "
            f"{used} partitions: set JOBSTREAM_PARTITIONS={used} in every process (fewer would "
            f"leave the jobs of partitions {configured} to {used - 1} unread)"
        )


async def ensure_groups(redis: RedisClient, keys: Keys, queues: Iterable[str]) -> None:
    """Create each queue's stream and consumer group from id 0, idempotently.

    Every role calls this at start-up, so a job queued before any worker ever ran is
    still delivered (stock Taskiq creates the group at ``$`` and would skip it). A queue
    has a stream in every partition. First it records the partition count (the highest
    any process used), and refuses to go on with fewer: :class:`PartitionsLowered`.
    """
    await redis.zadd(keys.meta, {"partitions": keys.partitions}, gt=True)  # an atomic max
    used = int(await redis.zscore(keys.meta, "partitions") or 0)
    if used > keys.partitions:
        raise PartitionsLowered(keys.partitions, used)
    for queue in queues:
        for partition in range(keys.partitions):
            try:
                await redis.xgroup_create(keys.queue(queue, partition), GROUP, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
