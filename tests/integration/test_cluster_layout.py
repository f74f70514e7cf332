"""Redis Cluster by design: each partition's keys in one slot, the partitions over every primary.

On the session's three-primary cluster (``tests/support/redis_cluster.py``); the session
also fails if any node ever answered CROSSSLOT (``tests/conftest.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from broker.keys import partition_of
from broker.store import JobStore
from broker.topology import parse_redis_url
from tests.support.keyspace import index_size, queue_length

pytestmark = pytest.mark.topologies("cluster")


async def test_jobs_spread_over_every_primary_and_each_partition_stays_in_its_slot(
    store: JobStore, redis: Any, redis_url: str
) -> None:
    assert parse_redis_url(redis_url).cluster and store.keys.partitions == 16
    ids = [
        (await store.create(task="demo.noop", input_json=b"{}", owner=f"o{n % 4}", queue="default"))[0].id
        for n in range(96)
    ]
    assert len({partition_of(i) for i in ids}) > 8  # random placement: most partitions used
    cluster: RedisCluster = redis
    by_node: dict[str, int] = {}
    for node in cluster.get_primaries():
        found = [k async for k in _scan(cluster, node, f"{store.keys.prefix}*")]
        by_node[node.name] = len(found)
        for key in found:  # a key lives on the node that serves its slot: its partition's
            if not key.startswith(f"{store.keys.prefix}{{p".encode()):
                continue  # outside the partitions (the meta key of ensure_groups, heartbeats)
            partition = store.keys.partition_of_key(key)
            assert key_slot(key) == key_slot(store.keys.events(partition).encode())
    assert len(by_node) == 3 and all(by_node.values()), by_node
    assert await queue_length(store) == 96
    assert sum([await index_size(store, f"o{n}") for n in range(4)]) == 96


async def _scan(cluster: RedisCluster, node: Any, pattern: str) -> Any:
    """The keys of one node (redis-py's cluster SCAN answers a cursor per node asked)."""
    cursor = 0
    while True:
        cursors, keys = await cluster.scan(cursor, match=pattern, count=500, target_nodes=node)
        for key in keys:
            yield key
        cursor = int(cursors[node.name])
        if cursor == 0:
            return
