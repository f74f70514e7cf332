"""Shard-channel subscriptions that outlive their connections: connect, confirm, reconnect.

Every change of a job is published (SPUBLISH) on its partition's events channel, and every
cancel request on its partition's cancels channel (:mod:`broker.keys`). A reader of those
(the event hub, a worker's cancel listener) holds them all, always, through
:class:`ShardSubscriptions`: one :class:`Subscription` (one pub/sub connection) for all
partitions on one Redis or Sentinel, one per partition on Cluster, where each partition's
channel lives on the node that serves its slot.

A :class:`Subscription` owns its connection's life: it SSUBSCRIBEs its channels, says when
Redis has confirmed them all (``confirmed``: from then on every message published on them
reaches ``on_message``, which is what the SSE contract's "subscribe first, then read"
rests on), PINGs when idle to notice a dead peer, and when the connection drops (or Redis
takes the channels away, as Cluster does when their slot moves) it reconnects with
jittered, bounded backoff (on Cluster, to the node that serves the slot now), then calls
``on_resubscribed`` so its reader can re-read what changed meanwhile.

The connection comes from a one-connection pool with redis-py's retries and health checks
off: its own retry would silently reconnect and resubscribe, and the reader would never
learn that it must re-read what it follows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.topology import (
    FOLLOW_PRIMARY_SECONDS,
    FollowingSentinelPool,
    RedisClient,
    Topology,
    pubsub_pool,
)

log = logging.getLogger("jobstream.events")

LOST = (RedisError, OSError)
"""What a dropped or unreachable Redis raises (redis-py wraps most socket errors)."""

OnMessage = Callable[[str, bytes], None]
OnResubscribed = Callable[[list[str]], Coroutine[Any, Any, None]]
PoolFactory = Callable[[], Awaitable[ConnectionPool]]


class Subscription:
    """One pub/sub connection holding a fixed set of shard channels, reconnected when it drops."""

    def __init__(
        self,
        channels: list[str],
        pools: PoolFactory,
        on_message: OnMessage,
        on_resubscribed: OnResubscribed,
        *,
        keepalive_seconds: float,
        backoff_base: float,
        backoff_cap: float,
        role: str,
    ) -> None:
        self.channels = channels
        self._pools = pools
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._keepalive = keepalive_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._role = role
        self._pubsub: PubSub | None = None
        self._pool: ConnectionPool | None = None
        self.confirmed = asyncio.Event()  # connected, and Redis confirmed every channel
        self.was_confirmed = False  # at least once: from then on, a loss is an outage
        self.first_attempt = asyncio.Event()
        self.reconnects = 0
        self._resync: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start the reader: it connects, reads, and reconnects until cancelled."""
        return asyncio.create_task(self._read_forever(), name=f"jobstream-{self._role}-reader")

    async def close(self) -> None:
        """After the reader is cancelled: close the connection."""
        self.confirmed.clear()
        self._cancel_resync()
        await self._drop_connection()

    def backoff(self, failures: int) -> float:
        """Equal jitter: half the capped exponential delay, plus up to as much again at random."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    async def _read_forever(self) -> None:
        failures = 0
        connected_before = False
        while True:
            try:
                pubsub = await self._connect()
            except LOST as exc:
                self.first_attempt.set()
                failures += 1
                delay = self.backoff(failures)
                log.warning("%s: cannot reach Redis (%s); retrying in %.2fs", self._role, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.first_attempt.set()
            started = asyncio.get_running_loop().time()
            try:
                await self._read(pubsub, resync=connected_before)
            except LOST as exc:
                log.warning("%s: pub/sub connection lost (%s); reconnecting", self._role, exc)
            except Exception:  # a bug must not silence every reader of the process
                log.exception("%s: reader failed; reconnecting", self._role)
            connected_before = True
            self.confirmed.clear()
            self._cancel_resync()
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > self._backoff_cap else failures + 1
            await asyncio.sleep(self.backoff(failures))

    async def _connect(self) -> PubSub:
        """A fresh connection (to the node that serves the channels now) with every channel
        SSUBSCRIBEd (sent, not yet confirmed)."""
        await self._drop_connection()
        self._pool = await self._pools()
        pubsub = self._pubsub = PubSub(self._pool)
        await pubsub.connect()  # type: ignore[no-untyped-call]
        await pubsub.ssubscribe(*self.channels)
        return pubsub

    async def _drop_connection(self) -> None:
        pubsub, pool, self._pubsub, self._pool = self._pubsub, self._pool, None, None
        if pubsub is not None:
            with suppress(*LOST):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if pool is not None:
            with suppress(*LOST):
                await pool.aclose()

    async def _read(self, pubsub: PubSub, *, resync: bool) -> None:
        """Dispatch messages until the connection fails; PING when idle to notice a dead peer.

        On Sentinel, while no message comes, the reader also asks every second whether its
        node is still the primary, and leaves it when the sentinels name another: after a
        ``SENTINEL FAILOVER`` that leaves the old primary running, nothing is published there
        any more, and Sentinel reconfigures it (closing its clients) only about 10 s later.
        """
        unconfirmed = set(self.channels)
        ping_unanswered = False
        following = self._pool if isinstance(self._pool, FollowingSentinelPool) else None
        wait = self._keepalive if following is None else min(self._keepalive, FOLLOW_PRIMARY_SECONDS)
        idle = 0.0
        while True:
            connection = pubsub.connection
            if connection is None or not connection.is_connected:
                raise ConnectionError("pub/sub connection closed")
            message = await pubsub.get_message(timeout=wait)
            if message is None:
                if following is not None and not await following.serves(connection):
                    raise ConnectionError("the sentinels named another primary")
                idle += wait
                if idle < self._keepalive:
                    continue
                if ping_unanswered:
                    raise TimeoutError(f"no answer to PING within {self._keepalive:g}s")
                ping_unanswered, idle = True, 0.0
                await pubsub.ping()
                continue
            ping_unanswered, idle = False, 0.0
            self._dispatch(message, unconfirmed, resync)

    def _dispatch(self, message: dict[str, Any], unconfirmed: set[str], resync: bool) -> None:
        """One message off the connection: a published one, or a (un)subscription's answer."""
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self._on_message(channel.decode(), message["data"])
        elif kind == "ssubscribe":
            unconfirmed.discard(channel.decode())
            if not unconfirmed:
                self._confirmed(resync)
        elif kind == "sunsubscribe":  # Cluster moved the slot away: follow it
            raise ConnectionError(f"Redis dropped the subscription to {channel.decode()}")

    def _confirmed(self, resync: bool) -> None:
        self.confirmed.set()
        self.was_confirmed = True
        if resync:
            self.reconnects += 1
            log.warning("%s: reconnected (reconnect #%d)", self._role, self.reconnects)
            self._resync = asyncio.create_task(self._on_resubscribed(self.channels))

    def _cancel_resync(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None


class ShardSubscriptions:
    """The shard channels of every partition, held on as few connections as the topology
    allows: one on one Redis or Sentinel, one per channel on Cluster.

    ``lazy``: a subscription starts the first time :meth:`need` asks for it, then stays, so
    a process that never follows anything (a web process that only creates jobs) receives
    no events at all; eager ones all start with :meth:`start`.
    """

    def __init__(
        self,
        topology: Topology,
        redis: RedisClient,
        channels: list[str],
        on_message: OnMessage,
        on_resubscribed: OnResubscribed,
        *,
        client_name: str,
        connect_timeout: float,
        keepalive_seconds: float = 30.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        role: str = "event hub",
        lazy: bool = False,
    ) -> None:
        self.topology = topology
        self._lazy = lazy
        self._running = False
        self._redis = redis
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        groups = [[channel] for channel in channels] if topology.cluster else [channels]
        self.subscriptions = [
            Subscription(
                group,
                self._pool_factory(group[0]),
                on_message,
                on_resubscribed,
                keepalive_seconds=keepalive_seconds,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                role=role,
            )
            for group in groups
        ]
        self.of_channel = {channel: s for s in self.subscriptions for channel in s.channels}
        self._tasks: dict[Subscription, asyncio.Task[None]] = {}

    def _pool_factory(self, channel: str) -> PoolFactory:
        async def pool() -> ConnectionPool:
            node = await self._node_of(channel) if self.topology.cluster else None
            return one_connection_pool(self.topology, self._client_name, self._connect_timeout, node)

        return pool

    async def _node_of(self, channel: str) -> tuple[str, int]:
        """The primary serving ``channel``'s slot now. A keyed read through the cluster client
        first, so a stale slot map (MOVED after a failover or a resharding) is refreshed."""
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        await cluster.exists(channel)  # redis-py follows MOVED and updates its slot map
        node = cluster.get_node_from_key(channel)
        if node is None:
            raise ConnectionError(f"no node serves the slot of {channel} now")
        return node.host, int(node.port)

    async def start(self) -> None:
        """Start every reader (none yet when lazy); returns after each made its first
        connection attempt."""
        self._running = True
        if not self._lazy:
            self.need(self.subscriptions)
            for subscription in self.subscriptions:
                await subscription.first_attempt.wait()

    def need(self, subscriptions: list[Subscription]) -> None:
        """Start the readers of ``subscriptions`` that are not running yet. Never blocks."""
        for subscription in subscriptions:
            if self._running and subscription not in self._tasks:
                self._tasks[subscription] = subscription.start()

    async def stop(self) -> None:
        """Cancel the readers (again if a library swallowed the cancellation), close the connections."""
        self._running = False
        pending = set(self._tasks.values())
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for subscription in self._tasks:
            await subscription.close()
        self._tasks = {}

    @property
    def up(self) -> bool:
        """Whether no subscription has lost its connection: each one confirmed once is confirmed
        now (one still making its first connection, or none started yet, is no outage)."""
        return all(s.confirmed.is_set() for s in self._tasks if s.was_confirmed)

    @property
    def reconnects(self) -> int:
        """Reconnects so far, over every connection."""
        return sum(s.reconnects for s in self.subscriptions)


def one_connection_pool(
    topology: Topology, client_name: str, connect_timeout: float, node: tuple[str, int] | None = None
) -> ConnectionPool:
    """A pool of one connection whose errors reach its reader (no retry, no health check).

    No socket timeout either: reads pass their own, and on Python 3.11 the ``wait_for``
    that a write timeout goes through can swallow a task's cancellation (gh-86296). A dead
    peer is noticed by the idle PING instead.
    """
    return pubsub_pool(
        topology,
        node,
        retry=Retry(NoBackoff(), 0, supported_errors=()),
        retry_on_error=[],
        retry_on_timeout=False,
        health_check_interval=0,
        socket_timeout=None,
        socket_connect_timeout=connect_timeout,
        decode_responses=False,
        client_name=client_name,
    )
