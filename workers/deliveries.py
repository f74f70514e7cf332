"""What a worker reads from its queue streams, and which entries it holds meanwhile.

:class:`Deliveries` reads new entries with XREADGROUP and, every lease/3, reclaims entries
idle for a whole lease (their worker died) with XAUTOCLAIM, which is atomic, so no lock
can outlive a killed holder. An entry delivered more than ``max_deliveries`` times goes
to the dead stream instead. ``inflight`` is what this worker holds: the lease loop
(:mod:`workers.leases`) renews exactly those. It also moves due delayed messages (delayed
jobs, retry backoff) onto their streams. See docs/ARCHITECTURE.md, "Faults".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import msgspec
from taskiq import AckableMessage

from broker.connection import REDIS_FAULTS, RedisWatch, backoff
from broker.message import decode_message
from broker.registry import TaskRegistry
from broker.settings import Settings
from broker.store import GROUP, Delivery, JobStore
from broker.topology import RedisClient, slot_command
from workers.frames import make_batch, make_frame

log = logging.getLogger("jobstream.broker")
Entry = tuple[str, str, bytes]
"""A stream entry read: its stream, its id and its Taskiq message."""
_PROMOTE_EVERY_SECONDS = 0.25


class Deliveries:
    """Reads, reclaims and dead-letters the entries of one worker's queues; tracks those it holds."""

    def __init__(
        self,
        settings: Settings,
        registry: TaskRegistry,
        queues: Sequence[str],
        store: JobStore,
        consumer_name: str,
        watch: RedisWatch,
        limit: int,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.keys = settings.keys
        self.queues = tuple(queues)
        partitions = range(self.keys.partitions)
        # One XREADGROUP reads a partition's queues (they share its slot); several partitions
        # are read at once (see _read_partitions).
        self._groups = [{self.keys.queue(q, p): ">" for q in self.queues} for p in partitions]
        self.streams = [stream for group in self._groups for stream in group]
        self._reads: dict[int, tuple[asyncio.Task[list[Entry]], int]] = {}
        self._next_partition = 0
        self.store = store
        self.consumer_name = consumer_name
        self.watch = watch
        self._redis: RedisClient = store.redis
        self.inflight: dict[str, set[str]] = {stream: set() for stream in self.streams}
        self.limit = max(1, limit)
        self._room = asyncio.Event()
        lease_ms = int(settings.lease_seconds * 1000)
        self.block = min(1000, lease_ms)
        # A read takes at most as many entries as the worker runs at once, so a worker for
        # slow jobs (concurrency 1) never holds entries that an idle one could run.
        self.count = max(1, min(50, self.limit))

    async def listen(self, redis: RedisClient, batches: bool) -> AsyncGenerator[bytes | AckableMessage, None]:
        """New entries from this worker's streams, and entries reclaimed from dead workers.

        ``redis`` is a client of its own (a read blocks its connection for up to a second).
        Each delivery is a frame (:mod:`workers.frames`) in an ``AckableMessage`` whose ack
        releases the entry; with ``batches`` (``JobReceiver``), everything one read returned
        comes as one batch of frames instead, and a read waits until fewer than ``limit``
        entries are held and takes no more than the room left, so the worker never holds
        more entries than it runs at once.
        """
        try:
            async for entries in self._entries(redis, batches):
                if batches and entries:
                    yield make_batch([self.hold(*entry) for entry in entries])
                elif not batches:
                    for entry in entries:
                        yield self.acked(*entry)
        finally:
            for task, _count in self._reads.values():
                task.cancel()
            self._reads.clear()

    async def _entries(self, redis: RedisClient, batches: bool) -> AsyncGenerator[list[Entry], None]:
        """What each read, or reclaim (every lease/3), returned; Redis faults waited out."""
        reclaim_every = self.settings.lease_seconds / 3
        next_reclaim = 0.0
        failures = 0
        while True:
            _honour_cancel()
            room = await self._wait_for_room() if batches else self.count
            began = time.monotonic()
            try:
                if began >= next_reclaim:
                    next_reclaim = began + reclaim_every
                    entries = await self._reclaim()
                else:
                    entries = await self._read_partitions(redis, room)
            except REDIS_FAULTS as err:
                self.watch.failed("reading the queues", err, began)
                failures += 1
                await asyncio.sleep(backoff(failures))
                continue
            failures = 0
            self.watch.answered()
            yield entries

    def hold(self, stream: str, entry_id: str, payload: bytes) -> bytes:
        """Hold an entry (its lease is renewed from now on) and frame it for the receiver."""
        self.inflight[stream].add(entry_id)
        return make_frame(stream, entry_id, payload)

    def acked(self, stream: str, entry_id: str, payload: bytes) -> AckableMessage:
        """Hold an entry, framed for Taskiq's own receiver: its ack releases the entry.

        Taskiq's receiver acks once it is done with the message: the final-state script
        already acked a finished job; an entry nobody ran (unknown task, unreadable) stops
        being renewed and is redelivered later, until max_deliveries sends it to the dead stream.
        """
        frame = self.hold(stream, entry_id, payload)
        release = functools.partial(self.release, stream, entry_id)
        return AckableMessage.model_construct(data=frame, ack=release)

    def release(self, stream: str, entry_id: str) -> None:
        """Stop renewing an entry's lease: its job ended here, or it is not to run here."""
        self.inflight.get(stream, set()).discard(entry_id)
        self._room.set()

    @property
    def held(self) -> int:
        """How many entries this worker holds."""
        return sum(len(ids) for ids in self.inflight.values())

    async def _wait_for_room(self) -> int:
        """Wait until fewer than ``limit`` entries are held; how many more may be read."""
        while self.held >= self.limit:
            self._room.clear()
            await self._room.wait()
        return self.limit - self.held

    async def _read_partitions(self, redis: RedisClient, room: int) -> list[Entry]:
        """New entries, at most ``room``: from the one partition, or from several.

        With no read outstanding, the partitions are swept first, each read without blocking,
        starting one further round each time, until the room is filled: under a backlog one
        read takes a full count, as on one partition. Only when they are all empty does each
        partition get a blocking read of its own. Each partition has at most one read
        outstanding, and the entries they asked for never add up to more than ``room``, so
        the worker still never holds more than it runs. When there is less room than
        partitions, the blocking reads go round the partitions, each blocking for its share of
        ``block``, so a job in any partition waits about ``block`` at most.
        """
        if len(self._groups) == 1:
            return await self._read(redis, self._groups[0], min(room, self.count), self.block)
        if not self._reads and (swept := await self._sweep(redis, min(room, self.count))):
            return swept
        self._start_reads(redis, room)
        reads = [task for task, _count in self._reads.values()]
        await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
        entries: list[Entry] = []
        failure: BaseException | None = None
        for partition, (task, _count) in list(self._reads.items()):
            if task.done():
                del self._reads[partition]
                if task.exception() is None:
                    entries += task.result()
                else:
                    failure = task.exception()
        if failure is not None and not entries:
            raise failure
        return entries

    async def _sweep(self, redis: RedisClient, want: int) -> list[Entry]:
        """Up to ``want`` entries from the partitions in turn, none of the reads blocking."""
        partitions = len(self._groups)
        entries: list[Entry] = []
        for partition in [(self._next_partition + n) % partitions for n in range(partitions)]:
            entries += await self._read(redis, self._groups[partition], want - len(entries), None)
            if len(entries) >= want:
                self._next_partition = (partition + 1) % partitions
                break
        else:
            self._next_partition = (self._next_partition + 1) % partitions
        return entries

    def _start_reads(self, redis: RedisClient, room: int) -> None:
        partitions = len(self._groups)
        free = room - sum(count for _task, count in self._reads.values())
        idle = [
            p
            for p in ((self._next_partition + n) % partitions for n in range(partitions))
            if p not in self._reads
        ]
        if free <= 0 or not idle:
            return
        each = max(1, min(self.count, free // len(idle)))
        block = self.block if free >= len(idle) else max(10, self.block * free // partitions)
        for partition in idle[:free]:
            count = min(each, free)
            task = asyncio.ensure_future(self._read(redis, self._groups[partition], count, block))
            self._reads[partition] = (task, count)
            free -= count
            self._next_partition = (partition + 1) % partitions
            if free <= 0:
                break

    async def _read(
        self, redis: RedisClient, read: Any, count: int, block: int | None
    ) -> list[Entry]:
        """New entries of ``read``'s streams: at most ``count``, waiting up to ``block`` ms
        (None: not at all)."""
        streams = list(read)
        command: tuple[str | int, ...] = ("XREADGROUP", "GROUP", GROUP, self.consumer_name, "COUNT", count)
        if block is not None:
            command += ("BLOCK", block)
        fetched: Any = await slot_command(redis, streams[0], *command, "STREAMS", *streams, *read.values())
        return [
            (stream.decode(), entry_id.decode(), fields[b"data"])
            for stream, entries in fetched or ()
            for entry_id, fields in entries
        ]

    async def _reclaim(self) -> list[Entry]:
        """Entries idle for a lease (their worker died), now this worker's; over-delivered ones
        go to the dead stream instead."""
        scripts = self.store.scripts
        lease_ms = int(self.settings.lease_seconds * 1000)
        reclaimed: list[Entry] = []
        for stream in self.streams:
            claimed = await scripts.reclaim(
                stream=stream, group=GROUP, consumer=self.consumer_name, min_idle_ms=lease_ms, count=100
            )
            for entry_id, fields, deliveries in claimed:
                if entry_id in self.inflight[stream]:
                    continue  # ours already (the loop stalled past a lease): keep it
                payload = fields.get(b"data", b"")
                if deliveries > self.settings.max_deliveries:
                    await self._dead_letter(stream, entry_id, payload, deliveries)
                    continue
                log.info("reclaimed %s %s (delivery %s)", stream, entry_id, deliveries)
                reclaimed.append((stream, entry_id, payload))
        return reclaimed

    async def _dead_letter(self, stream: str, entry_id: str, payload: bytes, deliveries: int) -> None:
        store = self.store
        try:
            message = decode_message(payload)
            job_id, dispatch, task = message.task_id, message.labels.dispatch, message.task_name
        except msgspec.DecodeError:
            job_id, dispatch, task = "", 0, ""
        owner: Any = await self._redis.hget(self.keys.job(job_id), "owner") or b""
        spec_retention = self.registry.retention(task, store.settings.retention_seconds)
        await store.dead_letter(
            Delivery(job_id, stream, entry_id, dispatch),
            self.consumer_name,
            payload,
            deliveries,
            owner.decode(),
            spec_retention,
        )
        log.warning("dead-lettered %s %s after %d deliveries (job %s)", stream, entry_id, deliveries, job_id)

    async def promote_due(self) -> None:
        """Move due delayed messages (delayed jobs, retry backoff) onto their streams, forever."""
        scripts = self.store.scripts
        failures = 0
        while True:
            wait = _PROMOTE_EVERY_SECONDS
            began = time.monotonic()
            try:
                promoted = await asyncio.gather(
                    *(
                        scripts.promote_due(queue=queue, partition=partition, limit=100)
                        for queue in self.queues
                        for partition in range(self.keys.partitions)
                    )
                )
                for due in promoted:
                    if due.next_due_ms is not None:
                        wait = min(wait, due.next_due_ms / 1000)
            except REDIS_FAULTS as err:
                self.watch.failed("promoting delayed jobs", err, began)
                failures += 1
                wait = backoff(failures)
            else:
                self.watch.answered()
                failures = 0
            await asyncio.sleep(max(wait, 0.01))


def _honour_cancel() -> None:
    """Raise if this task is being cancelled.

    Taskiq cancels the read to stop; on Python 3.11 redis-py's timeouts (asyncio.wait_for)
    can swallow that cancel, which left the worker idling forever on SIGTERM now and then.
    """
    this_task = asyncio.current_task()
    if this_task is not None and this_task.cancelling():
        raise asyncio.CancelledError
