"""``EventHub``: one Redis pub/sub connection per process, fanned out to in-process feeds.

Every job change is published by its Lua script as the whole record (a JSON array
``[field, value, ...]``) on the job's channel and on its owner's channel. The hub holds
one subscription per channel however many feeds follow it (:mod:`hub.subscriptions`),
decodes each message once, and offers the resulting :class:`~broker.models.Job` to every
feed on that channel (:mod:`hub.feeds`), which keeps the newest state and wakes its reader.

Opening a feed returns once Redis confirmed the SUBSCRIBE: a caller that then reads the job
hash sees every later change on its feed (the SSE contract's "subscribe first, then read").
After a reconnect, once Redis confirmed every channel again, the hub re-reads each followed
job's hash and offers that snapshot, and tells owner feeds to resynchronise: nothing that
happened while it was away goes unseen.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from broker.errors import JobNotFound, JobstreamError
from broker.models import Job, job_encoder, job_from_fields
from broker.store import JobStore
from broker.topology import parse_redis_url
from hub.feeds import Feed, FeedClosed, JobFeed, OwnerFeed, Resync
from hub.subscriptions import LOST, Channel, ChannelKind, Subscriptions, one_connection_pool

__all__ = ["EventHub", "EventsUnavailable", "FeedClosed", "HubStats", "JobFeed", "OwnerFeed", "Resync"]

log = logging.getLogger("jobstream.events")

_decode_pairs = msgspec.json.Decoder(list[str]).decode
_JSON_CACHE = 1024


class EventsUnavailable(JobstreamError):
    """Redis did not confirm a subscription in time (it is down or unreachable)."""


class HubStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for ``/metrics``."""

    connected: bool
    channels: int
    listeners: int
    events_received: int
    decode_errors: int
    reconnects: int


class EventHub:
    """One pub/sub connection per process, shared by every job and owner feed.

    ``start()`` in the app's lifespan, ``stop()`` on the way out; in between, open feeds with
    :meth:`listen_job` / :meth:`listen_owner` (context managers) or :meth:`open_job` /
    :meth:`open_owner` (the caller calls ``feed.close()``). The connection goes to
    ``redis_url`` (by default the store's settings').

    Opening a feed waits up to ``subscribe_timeout`` for Redis to confirm the SUBSCRIBE
    while the hub is connected, but only ``offline_timeout`` while it is not (Redis is
    away and the hub is reconnecting): a caller learns of an outage in well under a second,
    instead of hanging. Reconnect attempts back off up to ``backoff_cap`` seconds, so the
    hub is live again about that soon after Redis is.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        redis_url: str | None = None,
        subscribe_timeout: float = 10.0,
        offline_timeout: float = 0.5,
        connect_timeout: float = 2.0,
        keepalive_seconds: float = 30.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        owner_max_pending: int = 1000,
        owner_max_tracked: int = 10_000,
        client_name: str | None = None,
    ) -> None:
        self.store = store
        self.keys = store.keys
        self._subscribe_timeout = subscribe_timeout
        self._offline_timeout = min(offline_timeout, subscribe_timeout)
        self._owner_limits = {"max_pending": owner_max_pending, "max_tracked": owner_max_tracked}
        pool = one_connection_pool(
            parse_redis_url(redis_url or store.settings.redis_url),
            client_name or f"jobstream-events:{os.getpid()}",
            connect_timeout,
        )
        self._subs: Subscriptions[Feed[Any]] = Subscriptions(
            pool,
            self._on_message,
            self._resync,
            keepalive_seconds=keepalive_seconds,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._feeds: dict[Feed[Any], Channel[Feed[Any]]] = {}
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._last_payload: bytes | None = None
        self._last_job: Job | None = None
        self._json: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._events = 0
        self._decode_errors = 0

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection; returns after the first connection attempt.

        If Redis is unreachable it keeps trying in the background (logged), and feeds
        opened meanwhile wait up to ``subscribe_timeout`` for it.
        """
        if self._running:
            return
        self._running = True
        self._tasks = self._subs.tasks()
        await self._subs.first_attempt.wait()

    async def stop(self) -> None:
        """End every feed (iterators finish), close the connection. Idempotent."""
        if not self._running:
            return
        self._running = False
        pending = set(self._tasks)
        while pending:  # again if a library swallowed the cancellation
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks = []
        await self._subs.close()
        for feed in list(self._feeds):
            feed.end()

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
        return self._subs.live.is_set()

    def stats(self) -> HubStats:
        """Counters for metrics."""
        return HubStats(
            connected=self.connected,
            channels=len(self._subs.channels),
            listeners=len(self._feeds),
            events_received=self._events,
            decode_errors=self._decode_errors,
            reconnects=self._subs.reconnects,
        )

    # -- feeds -----------------------------------------------------------------------------

    async def open_job(self, job_id: str) -> JobFeed:
        """Follow one job; returns once Redis confirmed the subscription. Close it after."""
        feed = JobFeed(self.store, self._detach, job_id)
        await self._attach(feed, self.keys.job_channel(job_id), "job", job_id)
        return feed

    async def open_owner(self, owner: str) -> OwnerFeed:
        """Follow all of one owner's jobs; returns once Redis confirmed. Close it after."""
        feed = OwnerFeed(self.store, self._detach, owner, **self._owner_limits)
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

    async def _attach(self, feed: Feed[Any], name: str, kind: ChannelKind, key: str) -> None:
        if not self._running:
            raise FeedClosed("the event hub is not running")
        channel = self._feeds[feed] = self._subs.join(name, kind, key, feed)
        timeout = self._subscribe_timeout if self.connected else self._offline_timeout
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

    def _detach(self, feed: Feed[Any]) -> None:
        """Synchronous, so it is safe in cancelled tasks and ``finally`` blocks."""
        channel = self._feeds.pop(feed, None)
        if channel is not None:
            self._subs.leave(channel, feed)

    # -- from the reader -------------------------------------------------------------------

    def _on_message(self, channel: Channel[Feed[Any]], data: bytes) -> None:
        self._events += 1
        if not channel.listeners:
            return
        job = self._decode(data)
        if job is None:
            return
        for feed in channel.listeners:
            feed.offer(job)

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

    async def _resync(self, batch: list[Channel[Feed[Any]]]) -> None:
        """After a reconnect Redis confirmed: offer fresh snapshots of followed jobs, and tell
        owner feeds to resynchronise."""
        followed = [c for c in batch if c.kind == "job"]
        records = await self._read_hashes([c.key for c in followed]) if followed else []
        for channel, fields in zip(followed, records, strict=True):
            if fields:
                job = job_from_fields(fields)
                for feed in list(channel.listeners):
                    feed.offer(job)
        for channel in batch:
            for feed in list(channel.listeners):
                if isinstance(feed, OwnerFeed):
                    feed.flag_resync("reconnect")

    async def _read_hashes(self, job_ids: list[str]) -> list[dict[bytes, bytes]]:
        """HGETALL each job in one round trip; retried with backoff while Redis is away."""
        failures = 0
        while True:
            try:
                async with self.store.redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.hgetall(self.keys.job(job_id))
                    records: list[dict[bytes, bytes]] = await pipe.execute()
                return records
            except LOST as exc:
                failures += 1
                log.warning("event hub: re-reading followed jobs failed (%s); retrying", exc)
                await asyncio.sleep(self._subs.backoff(failures))
