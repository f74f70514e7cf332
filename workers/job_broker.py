"""``JobBroker``: taskiq-redis's ``RedisStreamBroker`` made safe for long jobs.

What it changes, and why (see docs/ARCHITECTURE.md, "Faults"):
- leases: entries this worker holds are renewed every lease/3, so a live worker's long
  job is never reclaimed; idle entries are reclaimed after one lease with XAUTOCLAIM
  (atomic, so no lock that could outlive a killed holder);
- the group is created from id 0 before anything reads, by every role;
- entries are acknowledged and deleted by the same script that writes the final state;
- entries delivered more than ``max_deliveries`` times go to the dead stream;
- running jobs can be cancelled (a pub/sub channel), and on shutdown the entries still
  held are handed back at once for other workers to reclaim;
- Redis faults are waited out, not passed on: the pool retries each command through a
  blip, every loop keeps trying with backoff (one warning when Redis goes, one when it is
  back), and no job is failed or abandoned for it (see ``JobExecutor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import AckableMessage
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.message import BrokerMessage, TaskiqMessage
from taskiq_redis import RedisStreamBroker

from broker.connection import (
    REDIS_FAULTS,
    STARTUP_PATIENCE_SECONDS,
    RedisWatch,
    backoff,
    resilient_options,
    until_redis_answers,
)
from broker.keys import Keys
from broker.message import decode_message
from broker.queues import ensure_groups
from broker.registry import TaskRegistry
from broker.settings import Settings
from broker.store import GROUP, Delivery, JobStore
from workers.executor import JobExecutor

log = logging.getLogger("jobstream.broker")
_SEP = b"\x00"
_SHUTDOWN_WRITES_SECONDS = 5.0
"""How long shutdown waits for the lease loop's last writes (hand-back, heartbeat delete)."""
_HEARTBEAT_FIELDS_TTL_LEASES = 3


class JobFormatter(TaskiqFormatter):
    """Reads the framed deliveries ``JobBroker.listen`` yields into Taskiq messages.

    The frame carries the stream and entry id beside the job id, so the task entry
    point knows exactly which delivery it runs, with no shared lookup table.
    """

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        """Encode a message for ``kick`` (plain Taskiq use of the broker)."""
        return BrokerMessage(
            task_id=message.task_id,
            task_name=message.task_name,
            message=msgspec.json.encode(message.model_dump()),
            labels=message.labels,
        )

    def loads(self, message: bytes) -> TaskiqMessage:
        """Parse ``stream NUL entry NUL payload`` into a message for the job entry point."""
        stream, entry, payload = message.split(_SEP, 2)
        parsed = decode_message(payload)
        return TaskiqMessage.model_construct(
            task_id=parsed.task_id,
            task_name=parsed.task_name,
            labels={},
            labels_types=None,
            args=[parsed.task_id, stream.decode(), entry.decode(), parsed.labels.dispatch],
            kwargs={},
        )


class JobBroker(RedisStreamBroker):
    """The jobstream worker broker (``taskiq worker workers.app:broker``)."""

    def __init__(
        self,
        settings: Settings,
        registry: TaskRegistry,
        queues: Sequence[str] | None = None,
    ) -> None:
        keys = Keys(settings.prefix)
        self.settings = settings
        self.keys = keys
        self.registry = registry
        self.queues = tuple(queues or settings.queues)
        streams = [keys.queue(q) for q in self.queues]
        lease_ms = int(settings.lease_seconds * 1000)
        super().__init__(
            url=settings.redis_url,
            queue_name=streams[0],
            consumer_group_name=GROUP,
            consumer_id="0",
            idle_timeout=lease_ms,
            xread_block=min(1000, lease_ms),
            # A read takes at most as many entries as the worker runs at once, so a worker
            # for slow jobs (concurrency 1) never holds entries that an idle one could run.
            xread_count=max(1, min(50, settings.worker_concurrency)),
            additional_streams=dict.fromkeys(streams[1:], ">"),
            max_connection_pool_size=None,
            # A read that never completes must not hang the worker: after a cancelled
            # blocking XREADGROUP, redis-py could leave a connection waiting for a reply
            # that never came, and SIGTERM then idled forever (seen about 1 run in 10).
            socket_timeout=min(1000, lease_ms) / 1000 + 5,
            socket_connect_timeout=5,
            **resilient_options(),
        )
        self.formatter = JobFormatter()
        self.streams = streams
        self.inflight: dict[str, set[str]] = {stream: set() for stream in streams}
        self.ready = 0
        # Set by ``JobReceiver``: deliveries travel as bare frames, since it runs them itself.
        self.yield_frames = False
        self.executor: JobExecutor | None = None
        self._background: list[asyncio.Task[None]] = []
        self._leases: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hand_back: dict[str, set[str]] = {}
        self._redis: Redis | None = None
        self.watch = RedisWatch(log, "worker")
        for spec in registry:
            self.register_task(self._entry_point(), task_name=spec.name)

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Name this consumer, create the groups, and start leases, heartbeat and cancels."""
        await super(RedisStreamBroker, self).startup()
        if not self.is_worker_process:
            return
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Taskiq logs a line per task at INFO; at thousands of jobs a second that is a
        # sizeable share of the worker's time. Job changes are in Redis and its events.
        logging.getLogger("taskiq.receiver.receiver").setLevel(logging.WARNING)
        redis = self._redis = Redis(connection_pool=self.connection_pool)
        store = JobStore(redis, self.settings)

        async def prepare() -> None:
            await store.scripts.load_all(redis)
            await ensure_groups(redis, self.keys, self.queues)

        give_up = time.monotonic() + STARTUP_PATIENCE_SECONDS
        await until_redis_answers(self.watch, "starting up", prepare, lambda: give_up)
        self.executor = JobExecutor(store, self.registry, self.consumer_name, watch=self.watch)
        self._leases = asyncio.create_task(self._keep_leases(), name="jobstream-leases")
        self._background = [
            asyncio.create_task(self._promote_due(), name="jobstream-delayed"),
            asyncio.create_task(self._listen_cancels(), name="jobstream-cancels"),
        ]
        log.info("worker %s consuming %s", self.consumer_name, ", ".join(self.queues))
        _tune_gc()

    async def shutdown(self) -> None:
        """Stop what still runs, hand its entries back for prompt reclaim, then close.

        The lease loop itself hands the entries back and deletes the heartbeat, after its
        last beat has been answered: a beat still in flight can never land after the
        delete and show a gone worker as live until the heartbeat's TTL.
        """
        if self.executor is not None:
            self._hand_back = {stream: set(ids) for stream, ids in self.inflight.items()}
            for job_id in list(self.executor.running):
                self.executor.abandon(job_id)
        self._stopping.set()
        if self._leases is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._leases), _SHUTDOWN_WRITES_SECONDS)
            except (TimeoutError, RedisError, OSError) as err:  # the heartbeat's TTL ends it; leases lapse
                log.warning("worker %s: could not sign off from Redis (%r)", self.consumer_name, err)
            except Exception:
                log.exception("worker %s: the lease loop failed", self.consumer_name)
            self._leases.cancel()
            self._background.append(self._leases)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().shutdown()

    # -- the task entry point --------------------------------------------------------------

    def _entry_point(self) -> Callable[[str, str, str, int], Awaitable[None]]:
        """A fresh entry function per task name (Taskiq renames the function it registers)."""

        async def run_job(job_id: str, stream: str, entry_id: str, dispatch: int) -> None:
            """What Taskiq's own receiver calls for every delivery: run the job, forget the entry."""
            await self._run(Delivery(job_id, stream, entry_id, int(dispatch)))

        return run_job

    async def run_delivered(self, frame: bytes) -> None:
        """Run a delivery ``listen`` yielded, with no Taskiq message on the way (``JobReceiver``).

        Does what Taskiq's receiver does with it, minus what a job never uses: an entry
        that cannot be read, or names a task this worker lacks, is released unrun (to be
        redelivered, and dead-lettered after ``max_deliveries``).
        """
        raw_stream, raw_entry, payload = frame.split(_SEP, 2)
        stream, entry_id = raw_stream.decode(), raw_entry.decode()
        try:
            message = decode_message(payload)
        except msgspec.DecodeError as err:
            log.warning("%s %s: unreadable message (%s); not run", stream, entry_id, err)
            self._release(stream, entry_id)
            return
        if message.task_name not in self.registry:
            log.warning("%s %s: task %s is not known here; not run", stream, entry_id, message.task_name)
            self._release(stream, entry_id)
            return
        await self._run(Delivery(message.task_id, stream, entry_id, message.labels.dispatch))

    async def _run(self, delivery: Delivery) -> None:
        """Run a delivery; no exception escapes (Taskiq would drop it unlogged until shutdown)."""
        try:
            if self.executor is not None:
                await self.executor.run(delivery)
        except Exception:
            log.exception(
                "job %s (%s %s): the worker failed running it",
                delivery.job_id,
                delivery.stream,
                delivery.entry_id,
            )
        finally:
            self._release(delivery.stream, delivery.entry_id)

    # -- reading ----------------------------------------------------------------------------

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:  # type: ignore[override]
        """New entries from this worker's streams, and entries reclaimed from dead workers.

        ``ready`` counts the entries of the last read not yet yielded: the next ones this
        generator returns without waiting on Redis (``JobReceiver`` takes those directly).
        """
        redis = Redis(connection_pool=self.connection_pool)
        reclaim_every = self.settings.lease_seconds / 3
        next_reclaim = 0.0
        read: Any = dict.fromkeys(self.streams, ">")
        failures = 0
        try:
            while True:
                this_task = asyncio.current_task()
                if this_task is not None and this_task.cancelling():
                    # Taskiq cancels this read to stop; on Python 3.11 redis-py's timeouts
                    # (asyncio.wait_for) can swallow that cancel, which left the worker
                    # idling forever on SIGTERM now and then. Honour it here.
                    raise asyncio.CancelledError
                began = time.monotonic()
                try:
                    if began >= next_reclaim:
                        next_reclaim = began + reclaim_every
                        async for message in self._reclaim(redis):
                            yield message
                    fetched: Any = await redis.xreadgroup(
                        GROUP, self.consumer_name, read, count=self.count, block=self.block
                    )
                except REDIS_FAULTS as err:
                    self.watch.failed("reading the queues", err, began)
                    failures += 1
                    await asyncio.sleep(backoff(failures))
                    continue
                failures = 0
                self.watch.answered()
                batch = [
                    (stream, entry_id, fields[b"data"])
                    for stream, entries in fetched or ()
                    for entry_id, fields in entries
                ]
                self.ready = len(batch)
                for stream, entry_id, payload in batch:
                    self.ready -= 1
                    yield self._accept(stream.decode(), entry_id.decode(), payload)
        finally:
            self.ready = 0
            await redis.aclose(close_connection_pool=False)

    def _accept(self, stream: str, entry_id: str, payload: bytes) -> bytes | AckableMessage:
        self.inflight[stream].add(entry_id)
        frame = stream.encode() + _SEP + entry_id.encode() + _SEP + payload
        if self.yield_frames:
            return frame
        # Taskiq's receiver acks once it is done with the message: the final-state script
        # already acked a finished job; an entry nobody ran (unknown task, unreadable)
        # stops being renewed and is redelivered later, until max_deliveries sends it to
        # the dead stream.
        release = functools.partial(self._release, stream, entry_id)
        return AckableMessage.model_construct(data=frame, ack=release)

    def _release(self, stream: str, entry_id: str) -> None:
        """Stop renewing an entry's lease: its job ended here, or it is not to run here."""
        self.inflight.get(stream, set()).discard(entry_id)

    async def _reclaim(self, redis: Redis) -> AsyncGenerator[bytes | AckableMessage, None]:
        assert self.executor is not None
        scripts = self.executor.store.scripts
        lease_ms = int(self.settings.lease_seconds * 1000)
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
                yield self._accept(stream, entry_id, payload)

    async def _dead_letter(self, stream: str, entry_id: str, payload: bytes, deliveries: int) -> None:
        assert self.executor is not None and self._redis is not None
        store = self.executor.store
        try:
            message = decode_message(payload)
            job_id, dispatch, task = message.task_id, message.labels.dispatch, message.task_name
        except msgspec.DecodeError:
            job_id, dispatch, task = "", 0, ""
        owner: Any = await self._redis.hget(self.keys.job(job_id), "owner") or b""
        await store.dead_letter(
            Delivery(job_id, stream, entry_id, dispatch),
            self.consumer_name,
            payload,
            deliveries,
            owner.decode(),
            self.registry.retention(task, store.settings.retention_seconds),
        )
        log.warning("dead-lettered %s %s after %d deliveries (job %s)", stream, entry_id, deliveries, job_id)

    # -- background loops --------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Renew held entries and refresh the heartbeat every lease/3, until shutdown.

        While Redis fails, it tries again with backoff (never slower than lease/3), so the
        leases are renewed as soon as Redis is back and a blip shorter than the lease
        costs no job; then it writes the progress that could not be saved meanwhile.
        On shutdown it hands the held entries back and deletes the heartbeat.
        """
        assert self.executor is not None
        period = self.settings.lease_seconds / 3
        failures = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await self._renew(self.inflight, idle_ms=0)
                self.executor.leases_renewed_at = began
                await self._heartbeat()
                await self.executor.flush_progress()
            except REDIS_FAULTS as err:
                self.watch.failed("renewing leases", err, began)
                failures += 1
            else:
                self.watch.answered()
                failures = 0
            wait = min(period, backoff(failures)) if failures else period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
        await self._sign_off()

    async def _sign_off(self) -> None:
        """Hand held entries back for prompt reclaim, and delete this worker's heartbeat."""
        assert self._redis is not None
        try:
            # An idle time far past the lease: the next reclaim anywhere takes them.
            await self._renew(self._hand_back, idle_ms=int(self.settings.lease_seconds * 1000) * 10)
        finally:
            await self._redis.delete(self.keys.worker(self.consumer_name))

    async def _renew(self, entries: dict[str, set[str]], idle_ms: int) -> None:
        assert self.executor is not None and self._redis is not None
        scripts = self.executor.store.scripts
        for stream, held in list(entries.items()):
            if not held:
                continue
            lost = await scripts.renew_leases(
                stream=stream, group=GROUP, consumer=self.consumer_name, idle_ms=idle_ms, entry_ids=list(held)
            )
            for entry_id in lost:
                self._lost(stream, entry_id)

    def _lost(self, stream: str, entry_id: str) -> None:
        assert self.executor is not None
        self.inflight[stream].discard(entry_id)
        for job_id, running in list(self.executor.running.items()):
            if running.delivery.entry_id == entry_id and running.delivery.stream == stream:
                log.warning("job %s: lease lost to another worker; stopping it here", job_id)
                self.executor.abandon(job_id)

    async def _heartbeat(self) -> None:
        assert self.executor is not None and self._redis is not None
        key = self.keys.worker(self.consumer_name)
        counters: dict[str, Any] = dataclasses.asdict(self.executor.counters)
        async with self._redis.pipeline(transaction=False) as pipe:
            mapping: Any = {
                "consumer": self.consumer_name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": ",".join(self.queues),
                "running": ",".join(self.executor.running),
                "seen_at": int(time.time() * 1000),
                **counters,
            }
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, max(1, int(self.settings.lease_seconds * _HEARTBEAT_FIELDS_TTL_LEASES)))
            await pipe.execute()

    async def _promote_due(self) -> None:
        """Move due delayed messages (delayed jobs, retry backoff) onto their streams."""
        assert self.executor is not None and self._redis is not None
        scripts = self.executor.store.scripts
        failures = 0
        while True:
            wait = 0.25
            began = time.monotonic()
            try:
                for queue in self.queues:
                    promoted = await scripts.promote_due(queue=queue, limit=100)
                    if promoted.next_due_ms is not None:
                        wait = min(wait, promoted.next_due_ms / 1000)
            except REDIS_FAULTS as err:
                self.watch.failed("promoting delayed jobs", err, began)
                failures += 1
                wait = backoff(failures)
            else:
                self.watch.answered()
                failures = 0
            await asyncio.sleep(max(wait, 0.01))

    async def _listen_cancels(self) -> None:
        """Cancel requests for running jobs arrive here, by pub/sub, within milliseconds."""
        assert self.executor is not None and self._redis is not None
        failures = 0
        while True:
            began = time.monotonic()
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.cancel_channel)
                    # Cancels published while the channel was not heard are in the job records.
                    await self.executor.recheck_cancels()
                    failures = 0
                    while True:  # get_message with a timeout: never a read without one
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self.executor.cancel(message["data"].decode())
            except REDIS_FAULTS as err:
                self.watch.failed("listening for cancels", err, began)
                failures += 1
                await asyncio.sleep(backoff(failures))

    # -- sending ----------------------------------------------------------------------------

    async def kick(self, message: BrokerMessage) -> None:
        """Turn a message sent through Taskiq (the scheduler, ``task.kiq()``) into a job.

        Workers run jobs, not bare messages: every entry of a queue stream belongs to a job
        record. So instead of adding the Taskiq message to a stream as stock taskiq-redis
        does, this creates a PENDING job whose input is the message's kwargs (or its one
        positional argument), validated by the task's input type. Labels: ``owner`` (default
        ``scheduler``), ``idempotency_key`` (one job per key and owner), ``delay`` (seconds).
        Raises ``UnknownTask``, ``msgspec.ValidationError`` or ``QuotaExceeded``.
        """
        sent = _sent_decoder.decode(message.message)
        spec = self.registry.get(sent.task_name)
        input_json = _kick_input(sent)
        spec.decode_input(input_json)
        labels = message.labels
        delay = float(labels.get("delay") or 0)
        await self._kick_store.create(
            task=spec.name,
            input_json=input_json,
            owner=str(labels.get("owner") or KICK_OWNER),
            queue=spec.options.queue or self.settings.default_queue,
            idempotency_key=str(labels["idempotency_key"]) if labels.get("idempotency_key") else None,
            delay_ms=round(delay * 1000) if delay > 0 else 0,
        )

    @functools.cached_property
    def _kick_store(self) -> JobStore:
        return JobStore(Redis(connection_pool=self.connection_pool), self.settings)


def _tune_gc() -> None:
    """Keep the garbage collector from costing a worker a tenth of its time per job.

    With the default threshold a worker collected its young objects every few dozen jobs,
    each time tracing every job in flight, and a full collection traced all the objects
    of the imported libraries. Jobs leave no reference cycles behind, so collecting
    rarely costs little memory; what start-up made is frozen out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000)


KICK_OWNER = "scheduler"
"""Who owns a job created by ``JobBroker.kick`` when its message has no ``owner`` label."""


class _Sent(msgspec.Struct):
    """The part of a Taskiq message (``JobFormatter.dumps``) that ``kick`` reads."""

    task_name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


_sent_decoder = msgspec.json.Decoder(_Sent)


def _kick_input(sent: _Sent) -> bytes:
    """A kicked task's input as JSON: its kwargs, its one positional argument, or ``{}``."""
    if (sent.args and sent.kwargs) or len(sent.args) > 1:
        raise msgspec.ValidationError(
            f"{sent.task_name}: pass the input as keyword arguments or as one positional argument"
        )
    return msgspec.json.encode(sent.args[0] if sent.args else sent.kwargs)
