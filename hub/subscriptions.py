"""The event hub's one pub/sub connection: subscriptions, their confirmations, reconnects.

:class:`Subscriptions` keeps one SUBSCRIBE per channel however many listeners it has
(:meth:`~Subscriptions.join` / :meth:`~Subscriptions.leave`), and says when Redis has
confirmed it (``Channel.confirmed``), which is what the SSE contract's "subscribe first,
then read" waits on. Two tasks share the connection: the *writer* sends every SUBSCRIBE,
UNSUBSCRIBE and PING, in order; the *reader* reads replies and messages, hands each
message to ``on_message``, and owns the connection's life: when it drops, it reconnects
with jittered, bounded backoff and resubscribes every channel; once Redis has confirmed
them all it calls ``on_resubscribed``, so the hub can re-read what changed meanwhile.

The connection comes from a one-connection pool built from the Redis URL with redis-py's
retries and health checks off: its own retry would silently reconnect and resubscribe,
and the hub would never learn that it must re-read the jobs it follows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Generic, Literal, TypeVar

from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.topology import Topology, pubsub_pool

log = logging.getLogger("jobstream.events")

LOST = (RedisError, OSError)
"""What a dropped or unreachable Redis raises (redis-py wraps most socket errors)."""

ChannelKind = Literal["job", "owner"]
L = TypeVar("L")


class Channel(Generic[L]):
    """One channel: its listeners, and whether Redis confirmed it on the current connection.

    A channel whose last listener left is forgotten at once; a listener that comes later
    gets a new :class:`Channel` of the same name, with its own confirmation.
    """

    __slots__ = ("confirmed", "key", "kind", "listeners", "name", "sent_on")

    def __init__(self, name: str, kind: ChannelKind, key: str) -> None:
        self.name = name
        self.kind = kind
        self.key = key  # the job id or owner it is the channel of
        self.listeners: set[L] = set()
        self.confirmed = asyncio.Event()
        self.sent_on = 0  # the connection (numbered from 1) SUBSCRIBE was sent on; 0: none


def one_connection_pool(
    topology: Topology, client_name: str, connect_timeout: float, node: tuple[str, int] | None = None
) -> ConnectionPool:
    """A pool of one connection to ``url`` whose errors reach the hub (no retry, no health check).

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


class Subscriptions(Generic[L]):
    """One pub/sub connection, its channels, and the two tasks that drive it."""

    def __init__(
        self,
        pool: ConnectionPool,
        on_message: Callable[[Channel[L], bytes], None],
        on_resubscribed: Callable[[list[Channel[L]]], Awaitable[None]],
        *,
        keepalive_seconds: float,
        backoff_base: float,
        backoff_cap: float,
    ) -> None:
        self._pool = pool
        self._pubsub = PubSub(pool)
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._keepalive = keepalive_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self.channels: dict[str, Channel[L]] = {}
        self._joining: list[Channel[L]] = []  # for the writer: SUBSCRIBE these...
        self._leaving: list[Channel[L]] = []  # ...UNSUBSCRIBE these...
        self._ping_due = False  # ...and PING
        self._work = asyncio.Event()
        # Replies Redis owes per channel name on this connection: it answers in order, so the
        # reply that brings the count to zero is the one to the last command sent.
        self._unanswered: dict[str, int] = {}
        self._connection = 0  # numbers the connections, so a SUBSCRIBE is sent once on each
        self.live = asyncio.Event()  # connected, and every channel's SUBSCRIBE was sent
        self.first_attempt = asyncio.Event()
        self.reconnects = 0
        self._resync: asyncio.Task[None] | None = None

    # -- bookkeeping ------------------------------------------------------------------------

    def join(self, name: str, kind: ChannelKind, key: str, listener: L) -> Channel[L]:
        """Add ``listener`` to channel ``name`` (subscribing it if it is new). Never blocks."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, kind, key)
            self._joining.append(channel)
            self._work.set()
        channel.listeners.add(listener)
        return channel

    def leave(self, channel: Channel[L], listener: L) -> None:
        """Take ``listener`` off ``channel`` (UNSUBSCRIBE once it has none). Never blocks."""
        channel.listeners.discard(listener)
        if not channel.listeners and self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
            self._leaving.append(channel)
            self._work.set()

    # -- life cycle -------------------------------------------------------------------------

    def tasks(self) -> list[asyncio.Task[None]]:
        """Start the reader and the writer."""
        return [
            asyncio.create_task(self._read_forever(), name="jobstream-events-reader"),
            asyncio.create_task(self._write_forever(), name="jobstream-events-writer"),
        ]

    async def close(self) -> None:
        """After the tasks are cancelled: close the connection, wake anyone still waiting."""
        self.live.clear()
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        with suppress(*LOST):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with suppress(*LOST):
            await self._pool.aclose()
        for channel in self.channels.values():
            channel.confirmed.set()  # listeners still being added wake and see the hub stopped
        self.channels.clear()

    # -- the writer: every command on the connection goes through one task, in order ------

    async def _write_forever(self) -> None:
        while True:
            await self._work.wait()
            while not self.live.is_set():  # wait() can return after a new loss cleared it
                await self.live.wait()
            self._work.clear()
            leaving, self._leaving = self._leaving, []
            joining, self._joining = self._joining, []
            ping, self._ping_due = self._ping_due, False
            try:
                await self._send(leaving, joining, ping=ping)
            except LOST as exc:  # the reader sees the same loss and reconnects
                log.debug("event hub: write failed: %s", exc)
            except Exception:  # a bug must not silence every feed of the process
                log.exception("event hub: write failed")

    async def _send(self, leaving: list[Channel[L]], joining: list[Channel[L]], *, ping: bool) -> None:
        """UNSUBSCRIBE what was subscribed on this connection and has no listener left, then
        SUBSCRIBE what has listeners and was not sent on this connection (one command each)."""
        now = self._connection
        gone = [c for c in leaving if c.sent_on == now and self.channels.get(c.name) is not c]
        new = [c for c in joining if c.sent_on != now and self.channels.get(c.name) is c]
        for channel in gone:
            self._expect_reply(channel.name)
            channel.sent_on = 0
        for channel in new:
            self._expect_reply(channel.name)
            channel.sent_on = now
        if gone:
            await self._pubsub.unsubscribe(*[c.name for c in gone])
        if new:
            await self._pubsub.subscribe(*[c.name for c in new])
        if ping:
            await self._pubsub.ping()

    def _expect_reply(self, name: str) -> None:
        self._unanswered[name] = self._unanswered.get(name, 0) + 1

    # -- the reader: connect, read, reconnect ----------------------------------------------

    async def _read_forever(self) -> None:
        failures = 0
        connected_before = False
        while True:
            try:
                batch = await self._connect()
            except LOST as exc:
                self.first_attempt.set()
                failures += 1
                delay = self.backoff(failures)
                log.warning("event hub: cannot reach Redis (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            self.first_attempt.set()
            if connected_before:
                self._reconnected(batch)
            connected_before = True
            started = asyncio.get_running_loop().time()
            try:
                await self._read()
            except LOST as exc:
                log.warning("event hub: pub/sub connection lost (%s); reconnecting", exc)
            except Exception:  # a bug must not silence every feed of the process
                log.exception("event hub: reader failed; reconnecting")
            self.live.clear()
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > self._backoff_cap else failures + 1
            await asyncio.sleep(self.backoff(failures))

    def _reconnected(self, batch: list[Channel[L]]) -> None:
        self.reconnects += 1
        log.warning(
            "event hub: reconnected (reconnect #%d), resubscribed %d channel(s)", self.reconnects, len(batch)
        )
        self._resync = asyncio.create_task(self._resync_once_confirmed(batch))

    async def _resync_once_confirmed(self, batch: list[Channel[L]]) -> None:
        for channel in batch:
            await channel.confirmed.wait()  # this task is cancelled by the next reconnect
        await self._on_resubscribed(batch)

    def backoff(self, failures: int) -> float:
        """Equal jitter: half the capped exponential delay, plus up to as much again at random."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    async def _connect(self) -> list[Channel[L]]:
        """A fresh connection with every current channel subscribed (sent, not yet confirmed)."""
        self.live.clear()
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        self._connection += 1
        for channel in self.channels.values():
            channel.confirmed.clear()
        await self._pubsub.aclose()  # type: ignore[no-untyped-call] # forgets the old socket
        await self._pubsub.connect()  # type: ignore[no-untyped-call]
        self._unanswered.clear()  # answers owed on the old socket never come
        batch = list(self.channels.values())
        if batch:
            for channel in batch:
                self._expect_reply(channel.name)
                channel.sent_on = self._connection
            await self._pubsub.subscribe(*[c.name for c in batch])
        self.live.set()
        return batch

    async def _read(self) -> None:
        """Dispatch messages until the connection fails; PING when idle to notice a dead peer."""
        ping_unanswered = False
        while True:
            connection = self._pubsub.connection
            if connection is None or not connection.is_connected:
                raise ConnectionError("pub/sub connection closed")
            message = await self._pubsub.get_message(timeout=self._keepalive)
            if message is None:
                if ping_unanswered:
                    raise TimeoutError(f"no answer to PING within {self._keepalive:g}s")
                ping_unanswered = True
                self._ping_due = True
                self._work.set()
                continue
            ping_unanswered = False
            kind = message["type"]
            if kind != "pong":
                self._dispatch(kind, message["channel"].decode(), message["data"])

    def _dispatch(self, kind: str, name: str, data: bytes) -> None:
        if kind == "message":
            channel = self.channels.get(name)
            if channel is not None:
                self._on_message(channel, data)
            return
        owed = self._unanswered.get(name, 0) - 1  # a subscribe or unsubscribe reply
        if owed > 0:
            self._unanswered[name] = owed
            return
        self._unanswered.pop(name, None)
        channel = self.channels.get(name)
        if channel is not None and channel.sent_on == self._connection:
            channel.confirmed.set()
