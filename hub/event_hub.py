"""``EventHub``: one Redis subscription per partition per process, fanned out to in-process feeds.

Every job change is published by its Lua script on its partition's events channel (a shard
channel, SPUBLISH): a header line ``["<id>","<owner>"]``, then the whole record (a JSON array
``[field, value, ...]``). The hub subscribes a partition's channel when the process first
follows something in it, then holds it for the life of the process (:mod:`hub.subscriptions`:
one connection on one Redis or Sentinel, one per partition on Cluster); a process that
follows nothing (one that only creates jobs) receives no events. It routes each message by
its header to the feeds that follow that job or owner, decodes it once if any does, and
offers the resulting :class:`~broker.models.Job` to them (:mod:`hub.feeds`), which keep the
newest state and wake their readers. Following a job or an owner is then a dict operation.

Opening a feed returns once Redis confirmed the partition's subscription: a caller that
then reads the job hash sees every later change on its feed (the SSE contract's "subscribe
first, then read"). After a reconnect, once Redis confirmed the channels again, the hub
re-reads the hash of each job followed in those partitions and offers that snapshot, and
tells owner feeds to resynchronise: nothing that happened while it was away goes unseen.
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
from broker.keys import partition_of
from broker.models import Job, job_encoder, job_from_fields, without_worker
from broker.store import JobStore
from broker.topology import parse_redis_url
from hub.feeds import Feed, FeedClosed, JobFeed, OwnerFeed, Resync
from hub.subscriptions import LOST, ShardSubscriptions, Subscription

__all__ = ["EventHub", "EventsUnavailable", "FeedClosed", "HubStats", "JobFeed", "OwnerFeed", "Resync"]

log = logging.getLogger("jobstream.events")

_decode_header = msgspec.json.Decoder(tuple[str, str]).decode
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
    """Every partition's events channel, held once per process, shared by all job and owner feeds.

    ``start()`` in the app's lifespan, ``stop()`` on the way out; in between, open feeds with
    :meth:`listen_job` / :meth:`listen_owner` (context managers) or :meth:`open_job` /
    :meth:`open_owner` (the caller calls ``feed.close()``). The connections go to
    ``redis_url`` (by default the store's settings').

    Opening a feed waits up to ``subscribe_timeout`` for Redis to confirm the subscription
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
        self._channels = [self.keys.events(p) for p in range(self.keys.partitions)]
        self._subs = ShardSubscriptions(
            parse_redis_url(redis_url or store.settings.redis_url),
            store.redis,
            self._channels,
            self._on_message,
            self._resync,
            client_name=client_name or f"jobstream-events:{os.getpid()}",
            connect_timeout=connect_timeout,
            keepalive_seconds=keepalive_seconds,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            lazy=True,
        )
        self._job_feeds: dict[str, set[JobFeed]] = {}
        self._owner_feeds: dict[str | None, set[OwnerFeed]] = {}  # None: feeds of every owner
        self._running = False
        self._last_payload: bytes | None = None
        self._last_job: Job | None = None
        self._json: OrderedDict[tuple[str, int, bool], bytes] = OrderedDict()
        self._events = 0
        self._decode_errors = 0

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the subscriptions; returns after each made its first connection attempt.

        If Redis is unreachable they keep trying in the background (logged), and feeds
        opened meanwhile wait up to ``subscribe_timeout`` for it.
        """
        if self._running:
            return
        self._running = True
        await self._subs.start()

    async def stop(self) -> None:
        """End every feed (iterators finish), close the connections. Idempotent."""
        if not self._running:
            return
        self._running = False
        await self._subs.stop()
        feeds: list[Feed[Any]] = [f for group in self._job_feeds.values() for f in group]
        feeds += [f for group in self._owner_feeds.values() for f in group]
        self._job_feeds.clear()
        self._owner_feeds.clear()
        for feed in feeds:
            feed.end()

    def json(self, job: Job, *, hide_worker: bool = False) -> bytes:
        """The job as JSON (an SSE ``data:`` line), encoded once per state for all its feeds;
        with ``hide_worker``, without its ``worker`` (what a caller who is no admin gets).

        A version names one state of one job, so ``(id, version, hide_worker)`` is a safe cache
        key; the cache keeps the last ``_JSON_CACHE`` encodings.
        """
        key = (job.id, job.version, hide_worker)
        body = self._json.get(key)
        if body is None:
            body = self._json[key] = job_encoder.encode(without_worker(job) if hide_worker else job)
            if len(self._json) > _JSON_CACHE:
                self._json.popitem(last=False)
        return body

    @property
    def connected(self) -> bool:
        """Whether no subscription the hub holds has lost its connection (readiness: while it
        reconnects a web process serves no events)."""
        return self._subs.up

    def stats(self) -> HubStats:
        """Counters for metrics."""
        return HubStats(
            connected=self.connected,
            channels=len(self._channels),
            listeners=sum(map(len, self._job_feeds.values())) + sum(map(len, self._owner_feeds.values())),
            events_received=self._events,
            decode_errors=self._decode_errors,
            reconnects=self._subs.reconnects,
        )

    # -- feeds -----------------------------------------------------------------------------

    async def open_job(self, job_id: str) -> JobFeed:
        """Follow one job; returns once Redis confirmed its partition's subscription. Close it after."""
        feed = JobFeed(self.store, self._detach, job_id)
        self._job_feeds.setdefault(job_id, set()).add(feed)
        await self._confirmed(feed, [self._subs.of_channel[self.keys.events(partition_of(job_id))]])
        return feed

    async def open_owner(self, owner: str | None) -> OwnerFeed:
        """Follow all of one owner's jobs (None: every owner's, an admin's feed), in every
        partition; returns once Redis confirmed. Close it after."""
        feed = OwnerFeed(self.store, self._detach, owner, **self._owner_limits)
        self._owner_feeds.setdefault(owner, set()).add(feed)
        await self._confirmed(feed, self._subs.subscriptions)
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
    async def listen_owner(self, owner: str | None) -> AsyncIterator[OwnerFeed]:
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

    async def _confirmed(self, feed: Feed[Any], subscriptions: list[Subscription]) -> None:
        """Wait until Redis has confirmed ``subscriptions`` (at once when it has); a feed left
        waiting too long is taken off again and the caller gets :class:`EventsUnavailable`."""
        if not self._running:
            self._detach(feed)
            raise FeedClosed("the event hub is not running")
        timeout = self._subscribe_timeout if self.connected else self._offline_timeout
        self._subs.need(subscriptions)
        waiting = [s for s in subscriptions if not s.confirmed.is_set()]
        if waiting:
            try:
                async with asyncio.timeout(timeout):
                    for subscription in waiting:
                        await subscription.confirmed.wait()
            except TimeoutError:
                self._detach(feed)
                raise EventsUnavailable(
                    f"Redis did not confirm the events subscription within {timeout:g}s"
                ) from None
            except BaseException:
                self._detach(feed)
                raise
        if not self._running:
            self._detach(feed)
            raise FeedClosed("the event hub stopped")

    def _detach(self, feed: Feed[Any]) -> None:
        """Synchronous, so it is safe in cancelled tasks and ``finally`` blocks."""
        if isinstance(feed, JobFeed):
            _discard(self._job_feeds, feed.job_id, feed)
        elif isinstance(feed, OwnerFeed):
            _discard(self._owner_feeds, feed.owner, feed)

    # -- from the readers ------------------------------------------------------------------

    def _on_message(self, _channel: str, data: bytes) -> None:
        self._events += 1
        header, _, record = data.partition(b"\n")
        try:
            job_id, owner = _decode_header(header)
        except msgspec.DecodeError as exc:
            self._decode_errors += 1
            log.error("event hub: undecodable event dropped: %s", exc)
            return
        job_feeds, owner_feeds = self._job_feeds.get(job_id), self._owner_feeds.get(owner)
        every_owner = self._owner_feeds.get(None)
        if not job_feeds and not owner_feeds and not every_owner:
            return  # nobody here follows it: not decoded at all
        job = self._decode(record)
        if job is None:
            return
        for feed in (*(job_feeds or ()), *(owner_feeds or ()), *(every_owner or ())):
            feed.offer(job)

    def _decode(self, data: bytes) -> Job | None:
        """Decode a published record (the last one is kept: a job's state goes to many feeds)."""
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

    async def _resync(self, channels: list[str]) -> None:
        """After a reconnect Redis confirmed ``channels``: offer fresh snapshots of the jobs
        followed in their partitions, and tell owner feeds to resynchronise."""
        partitions = {self.keys.partition_of_key(channel) for channel in channels}
        followed = [job_id for job_id in self._job_feeds if partition_of(job_id) in partitions]
        records = await self._read_hashes(followed) if followed else []
        for job_id, fields in zip(followed, records, strict=True):
            if fields:
                job = job_from_fields(fields)
                for feed in list(self._job_feeds.get(job_id, ())):
                    feed.offer(job)
        for feeds in list(self._owner_feeds.values()):
            for owner_feed in list(feeds):
                owner_feed.flag_resync("reconnect")

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
                await asyncio.sleep(self._subs.subscriptions[0].backoff(failures))


def _discard(feeds: dict[Any, set[Any]], key: str | None, feed: Feed[Any]) -> None:
    group = feeds.get(key)
    if group is not None:
        group.discard(feed)
        if not group:
            del feeds[key]
