"""Feeds: what one reader of the event hub holds, coalesced to the newest state.

The hub offers every decoded change to the feeds on its channel (:meth:`Feed.offer`), from
its reader task, and that only stores the state and wakes the feed's reader: a slow
reader costs a bounded amount of memory and never holds up the others. A
:class:`JobFeed` keeps one job's newest state; an :class:`OwnerFeed` keeps per job its
newest state, oldest change first, and a :class:`Resync` when it may have missed some.
Versions never go backwards on a feed.

Each reader reads in its own task: ``await feed.next()`` (or ``async for``), or, for a
reader with more to wait for (the SSE keepalive), ``feed.take()`` and ``await
feed.changed()``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from broker.errors import JobNotFound, JobstreamError
from broker.models import Job
from broker.store import JobStore

ResyncReason = Literal["reconnect", "overflow"]
T = TypeVar("T")


class FeedClosed(JobstreamError):
    """The feed has nothing more to give: the hub stopped, or the job reached a terminal state."""


@dataclass(frozen=True, slots=True)
class Resync:
    """Told to an owner feed when it may have missed changes: resend the owner's jobs.

    ``reconnect``: the pub/sub connection dropped and came back. ``overflow``: the reader
    fell so far behind that its backlog of distinct jobs hit the cap and was dropped.
    """

    reason: ResyncReason


class Feed(ABC, Generic[T]):
    """What job and owner feeds share: handing out states, waking the reader, closing.

    ``leave`` is the hub's: it takes the feed off its channel (UNSUBSCRIBE once no feed is left).
    """

    __slots__ = ("_closed", "_leave", "_waiter", "store")

    def __init__(self, store: JobStore, leave: Callable[[Feed[T]], None]) -> None:
        self.store = store
        self._leave = leave
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @abstractmethod
    def offer(self, job: Job) -> None:
        """Take a new state of a followed job (the hub calls it; each feed keeps what it needs)."""

    @abstractmethod
    def take(self) -> T | None:
        """What is there to hand out now (marked handed out), or None; never waits."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once nothing more will ever come (ended or closed, and nothing left to take)."""

    async def changed(self) -> None:
        """Wait until :meth:`take` may have something, the feed ended, or :meth:`wake` was called."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Make a pending :meth:`changed` return (e.g. to send a keepalive). Never blocks."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float | None = None) -> T | None:
        """The next item; None if none came within ``timeout`` seconds (None: wait until one does).

        Raises :class:`FeedClosed` once it is :attr:`done`.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = self.take()
                    if item is not None:
                        return item
                    if self.done:
                        raise FeedClosed(f"{self!r} is closed")
                    await self.changed()
        except TimeoutError:
            return None

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item = await self.next()
        except FeedClosed:
            raise StopAsyncIteration from None
        assert item is not None  # no timeout: next() waits until it has one
        return item

    def end(self) -> None:
        """The hub stopped (or the feed was closed): the reader's next call raises FeedClosed."""
        self._closed = True
        self.wake()

    def close(self) -> None:
        """Leave the channel. Idempotent, synchronous: safe in cancelled tasks and ``finally``."""
        self._leave(self)
        self.end()


class JobFeed(Feed[Job]):
    """The changes of one job, newest state only: reading slowly skips states, never reorders.

    Iterating yields each new state and stops after the terminal one (or when the hub stops).
    """

    __slots__ = ("_ended", "_latest", "_seen", "job_id")

    def __init__(self, store: JobStore, leave: Callable[[Feed[Job]], None], job_id: str) -> None:
        super().__init__(store, leave)
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
            job = await self.store.get(self.job_id, owner)
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

    def offer(self, job: Job) -> None:
        """Keep ``job`` if it is newer than anything seen or held (versions never go backwards)."""
        latest = self._latest
        if job.version <= self._seen or (latest is not None and job.version <= latest.version):
            return
        self._latest = job
        self.wake()


class OwnerFeed(Feed[Job | Resync]):
    """The changes of all one owner's jobs (``owner=None``: every owner's, for an admin): per
    job its newest state, oldest change first.

    The backlog holds at most ``max_pending`` distinct jobs; past that it is dropped and the
    reader gets a :class:`Resync` instead, as it does after a reconnect. Iterating yields
    ``Job | Resync`` until the hub stops.
    """

    __slots__ = ("_max_pending", "_max_tracked", "_pending", "_resync", "_seen", "owner")

    def __init__(
        self,
        store: JobStore,
        leave: Callable[[Feed[Job | Resync]], None],
        owner: str | None,
        *,
        max_pending: int,
        max_tracked: int,
    ) -> None:
        super().__init__(store, leave)
        self.owner = owner
        self._pending: OrderedDict[str, Job] = OrderedDict()
        self._seen: OrderedDict[str, int] = OrderedDict()  # job id -> version, LRU-bounded
        self._resync: ResyncReason | None = None
        self._max_pending = max_pending
        self._max_tracked = max_tracked

    def __repr__(self) -> str:
        return f"feed of owner {self.owner}" if self.owner is not None else "feed of every owner"

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
        """The owner's (or everyone's) ``limit`` newest jobs, marked seen: what to send on
        connect or Resync."""
        page = await self.store.list(self.owner, limit=limit)
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

    def flag_resync(self, reason: ResyncReason) -> None:
        """The reader may have missed changes: hand out a :class:`Resync` next."""
        self._resync = reason
        self.wake()

    def offer(self, job: Job) -> None:
        """Queue ``job``'s newest state (in place if the job is already queued), or overflow."""
        if job.version <= self._seen.get(job.id, 0):
            return
        queued = self._pending.get(job.id)
        if queued is not None:
            if job.version > queued.version:
                self._pending[job.id] = job  # replaces in place: keeps its turn
            return
        if len(self._pending) >= self._max_pending:
            self._pending.clear()
            self.flag_resync("overflow")
        self._pending[job.id] = job
        self.wake()
