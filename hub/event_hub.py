"""``EventHub``: one Redis pub/sub connection per process, fanned out to in-process feeds.

Every job change is published by its Lua script as the whole record (a JSON array
``[field, value, ...]``) on the job's channel and on its owner's channel. The hub holds
one subscription per channel however many feeds follow it (reference counted), decodes
each message once, and offers the resulting :class:`~broker.models.Job` to every feed on
that channel. A feed keeps only the latest state per job plus a wake-up event, so a slow
reader costs a bounded amount of memory and never holds up the others.

Subscribing is confirmed by Redis before ``open_*``/``listen_*`` return: a caller that
then reads the job hash sees every later change on its feed (the SSE contract's "subscribe
first, then read"). When the connection drops the hub reconnects with jittered, bounded
backoff, resubscribes every channel, and once Redis confirms, re-reads each followed
job's hash and offers that snapshot, and tells owner feeds to resynchronise: nothing that
happened while it was away goes unseen. Versions never go backwards on a feed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.errors import JobNotFound, JobstreamError
from broker.keys import Keys
from broker.models import Job, job_encoder, job_from_fields
from broker.store import JobStore

log = logging.getLogger("jobstream.events")

ChannelKind = Literal["job", "owner"]
ResyncReason = Literal["reconnect", "overflow"]

_LOST = (RedisError, OSError)
"""What a dropped or unreachable Redis raises (redis-py wraps most socket errors)."""

T = TypeVar("T")
_decode_pairs = msgspec.json.Decoder(list[str]).decode
_JSON_CACHE = 1024


class FeedClosed(JobstreamError):
    """The feed has nothing more to give: the hub stopped, or the job reached a terminal state."""


class EventsUnavailable(JobstreamError):
    """Redis did not confirm a subscription in time (it is down or unreachable)."""


@dataclass(frozen=True, slots=True)
class Resync:
    """Told to an owner feed when it may have missed changes: resend the owner's jobs.

    ``reconnect``: the pub/sub connection dropped and came back. ``overflow``: the reader
    fell so far behind that its backlog of distinct jobs hit the cap and was dropped.
    """

    reason: ResyncReason


class HubStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for ``/metrics``."""

    connected: bool
    channels: int
    listeners: int
    events_received: int
    decode_errors: int
    reconnects: int


class _Channel:
    """One subscribed channel: its feeds, and whether Redis confirmed it on this connection."""

    __slots__ = ("confirmed", "key", "kind", "listeners", "name", "sent_gen")

    def __init__(self, name: str, kind: ChannelKind, key: str) -> None:
        self.name = name
        self.kind = kind
        self.key = key
        self.listeners: set[_Feed[Any]] = set()
        self.confirmed = asyncio.Event()
        self.sent_gen = -1  # the connection generation SUBSCRIBE was last sent on


class _Feed(ABC, Generic[T]):
    """What job and owner feeds share: handing out states, waking the reader, closing, the hub link.

    Two ways to read a feed. Pull: ``await feed.next()`` (or ``async for``), one task per
    reader, which sleeps on a bare future that exists only while it waits. Push:
    :meth:`on_change` registers a callback that the hub calls, synchronously, whenever
    :meth:`take` may have something new or the feed ended; then no task wakes per change,
    which is what 10,000 SSE streams on one job need (see ``web.live.sse``).
    """

    __slots__ = ("_channel", "_closed", "_hub", "_notify", "_waiter")

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._channel: _Channel | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._notify: Callable[[], None] | None = None
        self._closed = False

    @abstractmethod
    def _offer(self, job: Job) -> None:
        """Take a new state of a followed job (each feed keeps only what it needs)."""

    @abstractmethod
    def take(self) -> T | None:
        """What is there to hand out now (marked handed out), or None; never waits."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once nothing more will ever come (ended or closed, and nothing left to take)."""

    def on_change(self, callback: Callable[[], None] | None) -> None:
        """Push mode: the hub calls ``callback()`` when :meth:`take` may have something or the
        feed ended (it must not raise); ``None`` goes back to waking :meth:`next`."""
        self._notify = callback

    async def next(self, timeout: float | None = None) -> T | None:
        """The next item; None if none came within ``timeout`` seconds (None: wait until one does).

        Raises :class:`FeedClosed` once it is :attr:`done`.
        """
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            item = self.take()
            if item is not None:
                return item
            if self.done:
                raise FeedClosed(f"{self!r} is closed")
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                return None
            await self._wait(deadline)

    def __aiter__(self) -> _Feed[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item = await self.next()
        except FeedClosed:
            raise StopAsyncIteration from None
        assert item is not None  # no timeout: next() waits until it has one
        return item

    def _end(self) -> None:
        """The hub stopped: tell the reader, whose next call then raises FeedClosed."""
        self._closed = True
        self._changed()

    def close(self) -> None:
        """Leave the channel (UNSUBSCRIBE if this was its last feed). Idempotent, never blocks."""
        self._hub._detach(self)
        self._end()

    def _changed(self) -> None:
        if self._notify is not None:
            self._notify()
        elif self._waiter is not None:
            _resolve(self._waiter)

    async def _wait(self, deadline: float | None) -> None:
        """Sleep until offered something, closed, or ``deadline`` (loop time) passed."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class JobFeed(_Feed[Job]):
    """The changes of one job, newest state only: reading slowly skips states, never reorders.

    Iterating yields each new state and stops after the terminal one (or when the hub stops).
    """

    __slots__ = ("_ended", "_latest", "_seen", "job_id")

    def __init__(self, hub: EventHub, job_id: str) -> None:
        super().__init__(hub)
        self.job_id = job_id
        self._latest: Job | None = None
        self._seen = 0
        self._ended = False

    def __repr__(self) -> str:
        return f"feed of job {self.job_id}"

    @property
    def done(self) -> bool:
        """True once the terminal state was handed out, or the hub stopped and nothing is left."""
        return self._ended or (self._closed and self._latest is None)

    def mark_seen(self, version: int) -> None:
        """The caller already has ``version`` (e.g. ``Last-Event-ID``): hand out only newer."""
        if version > self._seen:
            self._seen = version
            if self._latest is not None and self._latest.version <= version:
                self._latest = None

    async def snapshot(self, owner: str | None = None) -> Job | None:
        """Read the job's hash now and mark its version seen; None if missing or not ``owner``'s.

        Call it once, right after opening the feed: every change after it arrives on the feed.
        """
        try:
            job = await self._hub.store.get(self.job_id, owner)
        except JobNotFound:
            return None
        self.mark_seen(job.version)
        if job.terminal:
            self._ended = True
        return job

    def take(self) -> Job | None:
        """The newest state not handed out yet, if any."""
        job = self._latest
        if job is not None:
            self._latest = None
            self._seen = job.version
            if job.terminal:
                self._ended = True
        return job

    def _offer(self, job: Job) -> None:
        latest = self._latest
        if job.version <= self._seen or (latest is not None and job.version <= latest.version):
            return  # a duplicate or an older state: versions never go backwards
        self._latest = job
        self._changed()


class OwnerFeed(_Feed[Job | Resync]):
    """The changes of all one owner's jobs: per job its newest state, oldest change first.

    The backlog holds at most ``max_pending`` distinct jobs; past that it is dropped and the
    reader gets a :class:`Resync` instead, as it does after a reconnect. Iterating yields
    ``Job | Resync`` until the hub stops.
    """

    __slots__ = ("_max_pending", "_max_tracked", "_pending", "_resync", "_seen", "owner")

    def __init__(self, hub: EventHub, owner: str, max_pending: int, max_tracked: int) -> None:
        super().__init__(hub)
        self.owner = owner
        self._pending: OrderedDict[str, Job] = OrderedDict()
        self._seen: OrderedDict[str, int] = OrderedDict()  # job id -> version, LRU-bounded
        self._resync: ResyncReason | None = None
        self._max_pending = max_pending
        self._max_tracked = max_tracked

    def __repr__(self) -> str:
        return f"feed of owner {self.owner}"

    @property
    def done(self) -> bool:
        """True once the hub stopped and the backlog is empty."""
        return self._closed and self._resync is None and not self._pending

    def mark_seen(self, job_id: str, version: int) -> None:
        """The caller already has this version of the job: hand out only newer ones."""
        if version > self._seen.get(job_id, 0):
            self._seen[job_id] = version
            self._seen.move_to_end(job_id)
            if len(self._seen) > self._max_tracked:
                self._seen.popitem(last=False)

    async def snapshot(self, limit: int = 50) -> list[Job]:
        """The owner's ``limit`` newest jobs, marked seen: what to send on connect or Resync."""
        page = await self._hub.store.list(self.owner, limit=limit)
        for job in page.jobs:
            self.mark_seen(job.id, job.version)
        return page.jobs

    def take(self) -> Job | Resync | None:
        """A :class:`Resync` if one is due, else the oldest pending change, if any."""
        if self._resync is not None:
            reason, self._resync = self._resync, None
            return Resync(reason)
        while self._pending:
            _, job = self._pending.popitem(last=False)
            if job.version > self._seen.get(job.id, 0):  # mark_seen may have passed it since
                self.mark_seen(job.id, job.version)
                return job
        return None

    def _flag_resync(self, reason: ResyncReason) -> None:
        self._resync = reason
        self._changed()

    def _offer(self, job: Job) -> None:
        if job.version <= self._seen.get(job.id, 0):
            return
        queued = self._pending.get(job.id)
        if queued is not None:
            if job.version > queued.version:
                self._pending[job.id] = job  # replaces in place: keeps its turn
            return
        if len(self._pending) >= self._max_pending:
            self._pending.clear()
            self._flag_resync("overflow")
        self._pending[job.id] = job
        self._changed()


_Command = tuple[Literal["subscribe", "unsubscribe"], _Channel] | tuple[Literal["ping"], None]


# Keys a pool adds to its own connection kwargs (registries, handlers bound to that pool).
_POOL_OWNED = frozenset(
    {
        "himport_registry",
        "maint_notifications_pool_handler",
        "oss_cluster_maint_notifications_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
    }
)


def _private_pool(redis: Redis, client_name: str) -> ConnectionPool:
    """A one-connection pool to the same server as ``redis``, but whose errors reach the hub.

    redis-py's own retry would silently reconnect and resubscribe, and the hub would never
    learn that it must re-read the jobs it follows; so retries and health checks are off.
    No socket timeout either: reads pass their own, and on Python 3.11 the ``wait_for``
    that a write timeout goes through can swallow a task's cancellation (gh-86296). A
    dead peer is noticed by the idle PING instead.
    """
    source = redis.connection_pool
    kwargs = {k: v for k, v in source.connection_kwargs.items() if k not in _POOL_OWNED}
    kwargs.update(
        retry=Retry(NoBackoff(), 0, supported_errors=()),
        retry_on_error=[],
        retry_on_timeout=False,
        health_check_interval=0,
        socket_timeout=None,
        decode_responses=False,
        client_name=client_name,
    )
    return ConnectionPool(connection_class=source.connection_class, max_connections=1, **kwargs)


class EventHub:
    """One pub/sub connection per process, shared by every job and owner feed.

    ``start()`` in the app's lifespan, ``stop()`` on the way out; in between, open feeds with
    :meth:`listen_job` / :meth:`listen_owner` (context managers) or :meth:`open_job` /
    :meth:`open_owner` (the caller calls ``feed.close()``).

    Opening a feed waits up to ``subscribe_timeout`` for Redis to confirm the SUBSCRIBE
    while the hub is connected, but only ``offline_timeout`` while it is not (Redis is
    away and the hub is reconnecting): a caller learns of an outage in well under a second,
    instead of hanging. Reconnect attempts back off up to ``backoff_cap`` seconds, so the
    hub is live again about that soon after Redis is.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        store: JobStore,
        *,
        subscribe_timeout: float = 10.0,
        offline_timeout: float = 0.5,
        keepalive_seconds: float = 30.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        owner_max_pending: int = 1000,
        owner_max_tracked: int = 10_000,
        client_name: str = "jobstream-events",
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self._subscribe_timeout = subscribe_timeout
        self._offline_timeout = min(offline_timeout, subscribe_timeout)
        self._keepalive = keepalive_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._owner_max_pending = owner_max_pending
        self._owner_max_tracked = owner_max_tracked
        self._pool = _private_pool(redis, client_name)
        self._pubsub = PubSub(self._pool)
        self._channels: dict[str, _Channel] = {}
        # Per channel, what each SUBSCRIBE (the channel) or UNSUBSCRIBE (None) sent on this
        # connection awaits: Redis confirms them in order, so the head is the next answer.
        self._inflight: dict[str, deque[_Channel | None]] = {}
        self._commands: asyncio.Queue[_Command] = asyncio.Queue()
        self._live = asyncio.Event()  # connected, and every channel's SUBSCRIBE was sent
        self._gen = 0  # bumped on every (re)connect
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._last_payload: bytes | None = None
        self._last_job: Job | None = None
        self._json: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._listeners = 0
        self._events = 0
        self._decode_errors = 0
        self._reconnects = 0

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader and writer; returns after the first connection attempt.

        If Redis is unreachable it keeps trying in the background (logged), and feeds
        opened meanwhile wait up to ``subscribe_timeout`` for it.
        """
        if self._running:
            return
        self._running = True
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="jobstream-events-reader"),
            asyncio.create_task(self._write_forever(), name="jobstream-events-writer"),
        ]
        await self._first_attempt.wait()

    async def stop(self) -> None:
        """End every feed (iterators finish), close the connection. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._live.clear()
        pending = {*self._tasks, *([self._resync_task] if self._resync_task else [])}
        while pending:  # again if a library swallowed the cancellation; the loops also check
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks, self._resync_task = [], None
        with suppress(*_LOST):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with suppress(*_LOST):
            await self._pool.aclose()
        for channel in self._channels.values():
            channel.confirmed.set()  # feeds still being opened wake and see the hub stopped
            for feed in channel.listeners:
                feed._end()
        self._channels.clear()
        self._inflight.clear()

    def json(self, job: Job) -> bytes:
        """The job as JSON (an SSE ``data:`` line), encoded once per state for all its feeds.

        A version names one state of one job, so ``(id, version)`` is a safe cache key; the
        cache keeps the last ``_JSON_CACHE`` states.
        """
        key = (job.id, job.version)
        body = self._json.get(key)
        if body is None:
            body = self._json[key] = job_encoder.encode(job)
            if len(self._json) > _JSON_CACHE:
                self._json.popitem(last=False)
        return body

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (readiness: a web process without it serves no events)."""
        return self._live.is_set()

    def stats(self) -> HubStats:
        """Counters for metrics."""
        return HubStats(
            connected=self._live.is_set(),
            channels=len(self._channels),
            listeners=self._listeners,
            events_received=self._events,
            decode_errors=self._decode_errors,
            reconnects=self._reconnects,
        )

    # -- feeds -----------------------------------------------------------------------------

    async def open_job(self, job_id: str) -> JobFeed:
        """Follow one job; returns once Redis confirmed the subscription. Close it after."""
        feed = JobFeed(self, job_id)
        await self._attach(feed, self.keys.job_channel(job_id), "job", job_id)
        return feed

    async def open_owner(self, owner: str) -> OwnerFeed:
        """Follow all of one owner's jobs; returns once Redis confirmed. Close it after."""
        feed = OwnerFeed(self, owner, self._owner_max_pending, self._owner_max_tracked)
        await self._attach(feed, self.keys.owner_channel(owner), "owner", owner)
        return feed

    @asynccontextmanager
    async def listen_job(self, job_id: str) -> AsyncIterator[JobFeed]:
        """``async with hub.listen_job(id) as feed``: :meth:`open_job`, closed on exit."""
        feed = await self.open_job(job_id)
        try:
            yield feed
        finally:
            feed.close()

    @asynccontextmanager
    async def listen_owner(self, owner: str) -> AsyncIterator[OwnerFeed]:
        """``async with hub.listen_owner(owner) as feed``: :meth:`open_owner`, closed on exit."""
        feed = await self.open_owner(owner)
        try:
            yield feed
        finally:
            feed.close()

    async def wait_for_change(
        self, job_id: str, after_version: int, timeout: float, *, owner: str | None = None
    ) -> Job | None:
        """Long polling: the job once its version exceeds ``after_version``, else None.

        Returns at once if the hash is already newer; None after ``timeout`` seconds, or at
        once if the job is terminal at or before ``after_version`` (it will never change).
        Raises :class:`JobNotFound` if the job does not exist (or is not ``owner``'s).
        """
        async with self.listen_job(job_id) as feed:
            job = await feed.snapshot(owner)
            if job is None:
                raise JobNotFound(job_id)
            if job.version > after_version:
                return job
            if job.terminal:
                return None
            feed.mark_seen(after_version)
            try:
                return await feed.next(timeout)
            except FeedClosed:
                return None

    # -- reference counting ----------------------------------------------------------------

    async def _attach(self, feed: _Feed[Any], name: str, kind: ChannelKind, key: str) -> None:
        if not self._running:
            raise FeedClosed("the event hub is not running")
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(name, kind, key)
            self._commands.put_nowait(("subscribe", channel))
        channel.listeners.add(feed)
        feed._channel = channel
        self._listeners += 1
        timeout = self._subscribe_timeout if self._live.is_set() else self._offline_timeout
        try:
            async with asyncio.timeout(timeout):
                await channel.confirmed.wait()
        except TimeoutError:
            self._detach(feed)
            raise EventsUnavailable(f"Redis did not confirm SUBSCRIBE {name} within {timeout:g}s") from None
        except BaseException:
            self._detach(feed)
            raise
        if not self._running:
            self._detach(feed)
            raise FeedClosed("the event hub stopped")

    def _detach(self, feed: _Feed[Any]) -> None:
        """Synchronous, so it is safe in cancelled tasks and ``finally`` blocks."""
        channel, feed._channel = feed._channel, None
        if channel is None:
            return
        channel.listeners.discard(feed)
        self._listeners -= 1
        if not channel.listeners and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            self._commands.put_nowait(("unsubscribe", channel))

    # -- the writer: every command on the connection goes through one task, in order ------

    async def _write_forever(self) -> None:
        while self._running:
            batch = [await self._commands.get()]
            while not self._commands.empty():
                batch.append(self._commands.get_nowait())
            for verb, channels in _runs(batch):
                while not self._live.is_set():  # wait() can return after a new loss cleared it
                    await self._live.wait()
                try:
                    await self._send(verb, channels)
                except _LOST as exc:  # the reader sees the same loss and reconnects
                    log.debug("event hub: %s failed: %s", verb, exc)
                except Exception:  # a bug must not silence every feed of the process
                    log.exception("event hub: %s failed", verb)

    async def _send(self, verb: str, channels: list[_Channel]) -> None:
        gen = self._gen
        if verb == "ping":
            await self._pubsub.ping()
            return
        if verb == "subscribe":
            todo = [c for c in channels if self._channels.get(c.name) is c and c.sent_gen != gen]
        else:  # only what was subscribed on this connection and has no feed left
            todo = [c for c in channels if c.sent_gen == gen and self._channels.get(c.name) is not c]
        if not todo:
            return
        for channel in todo:
            self._expect(channel, subscribing=verb == "subscribe")
        names = [c.name for c in todo]
        if verb == "subscribe":
            await self._pubsub.subscribe(*names)
        else:
            await self._pubsub.unsubscribe(*names)

    def _expect(self, channel: _Channel, *, subscribing: bool) -> None:
        self._inflight.setdefault(channel.name, deque()).append(channel if subscribing else None)
        channel.sent_gen = self._gen if subscribing else -1

    # -- the reader: connect, read, reconnect ----------------------------------------------

    async def _read_forever(self) -> None:
        failures = 0
        connected_before = False
        while self._running:
            try:
                batch = await self._connect()
            except _LOST as exc:
                self._first_attempt.set()
                failures += 1
                delay = self._backoff(failures)
                log.warning("event hub: cannot reach Redis (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            self._first_attempt.set()
            if connected_before:
                self._reconnects += 1
                log.warning(
                    "event hub: reconnected (reconnect #%d), resubscribed %d channel(s)",
                    self._reconnects,
                    len(batch),
                )
                self._resync_task = asyncio.create_task(self._resync(batch))
            connected_before = True
            started = asyncio.get_running_loop().time()
            try:
                await self._read()
            except _LOST as exc:
                log.warning("event hub: pub/sub connection lost (%s); reconnecting", exc)
            except Exception:  # a bug must not silence every feed of the process
                log.exception("event hub: reader failed; reconnecting")
            self._live.clear()
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > self._backoff_cap else failures + 1
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        """Equal jitter: half the capped exponential delay, plus up to as much again at random."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    async def _connect(self) -> list[_Channel]:
        """A fresh connection with every current channel subscribed (sent, not yet confirmed)."""
        self._live.clear()
        if self._resync_task is not None:
            self._resync_task.cancel()
            self._resync_task = None
        self._gen += 1
        for channel in self._channels.values():
            channel.confirmed.clear()
        await self._pubsub.aclose()  # type: ignore[no-untyped-call] # forgets the old socket
        await self._pubsub.connect()  # type: ignore[no-untyped-call]
        self._inflight.clear()  # answers owed on the old socket never come
        batch = list(self._channels.values())
        if batch:
            for channel in batch:
                self._expect(channel, subscribing=True)
            await self._pubsub.subscribe(*[c.name for c in batch])
        self._live.set()
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
                self._commands.put_nowait(("ping", None))
                continue
            ping_unanswered = False
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "pong":
            return
        raw_name = message["channel"]
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        if kind == "message":
            self._on_event(name, message["data"])
        elif kind == "subscribe":
            waiting = self._pop_inflight(name)
            if waiting is not None and waiting.sent_gen == self._gen:
                waiting.confirmed.set()
        elif kind == "unsubscribe":
            self._pop_inflight(name)

    def _pop_inflight(self, name: str) -> _Channel | None:
        queue = self._inflight.get(name)
        if not queue:
            return None
        head = queue.popleft()
        if not queue:
            del self._inflight[name]
        return head

    def _on_event(self, name: str, data: bytes) -> None:
        self._events += 1
        channel = self._channels.get(name)
        if channel is None or not channel.listeners:
            return
        job = self._decode(data)
        if job is None:
            return
        for feed in channel.listeners:
            feed._offer(job)

    def _decode(self, data: bytes) -> Job | None:
        """Decode a published record, once: the job and owner channels carry the same bytes."""
        if data == self._last_payload:
            return self._last_job
        try:
            flat = _decode_pairs(data)
            pairs = iter(flat)
            job = job_from_fields(dict(zip(pairs, pairs, strict=True)))
        except (msgspec.DecodeError, ValueError, KeyError) as exc:
            self._decode_errors += 1
            log.error("event hub: undecodable event dropped: %s", exc)
            return None
        self._last_payload, self._last_job = data, job
        return job

    # -- after a reconnect -----------------------------------------------------------------

    async def _resync(self, batch: list[_Channel]) -> None:
        """Once Redis confirmed the resubscription, offer fresh snapshots of followed jobs."""
        for channel in batch:
            await channel.confirmed.wait()  # this task is cancelled by the next reconnect
        followed = [c for c in batch if c.kind == "job"]
        records = await self._read_hashes([c.key for c in followed]) if followed else []
        for channel, fields in zip(followed, records, strict=True):
            if fields:
                job = job_from_fields(fields)
                for feed in list(channel.listeners):
                    feed._offer(job)
        for channel in batch:
            for feed in list(channel.listeners):
                if isinstance(feed, OwnerFeed):
                    feed._flag_resync("reconnect")

    async def _read_hashes(self, job_ids: list[str]) -> list[dict[bytes, bytes]]:
        """HGETALL each job in one round trip; retried with backoff while Redis is away."""
        failures = 0
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.hgetall(self.keys.job(job_id))
                    records: list[dict[bytes, bytes]] = await pipe.execute()
                return records
            except _LOST as exc:
                failures += 1
                log.warning("event hub: re-reading followed jobs failed (%s); retrying", exc)
                await asyncio.sleep(self._backoff(failures))


def _runs(batch: list[_Command]) -> list[tuple[str, list[_Channel]]]:
    """Group consecutive commands of one verb, so 500 new channels cost one SUBSCRIBE."""
    runs: list[tuple[str, list[_Channel]]] = []
    for verb, channel in batch:
        if not runs or runs[-1][0] != verb or verb == "ping":
            runs.append((verb, []))
        if channel is not None:
            runs[-1][1].append(channel)
    return runs
