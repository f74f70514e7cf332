"""``JobBroker``: the jobstream worker broker, on taskiq's ``AsyncBroker``.

It owns one Redis client of ``JOBSTREAM_REDIS_URL``'s topology (one Redis, Sentinel or
Cluster: :mod:`broker.topology`; taskiq-redis's ``BaseRedisBroker`` builds a plain pool
from a ``redis://`` URL only) and brings its own reading and acknowledging, made safe for
long jobs (see docs/ARCHITECTURE.md, "Faults"):

- leases (:mod:`workers.leases`): entries this worker holds are renewed every lease/3, so
  a live worker's long job is never reclaimed; idle entries are reclaimed after one lease
  with XAUTOCLAIM (:mod:`workers.deliveries`);
- the group is created from id 0 before anything reads, by every role;
- entries are acknowledged and deleted by the same script that writes the final state;
- entries delivered more than ``max_deliveries`` times go to the dead stream;
- running jobs can be cancelled (a pub/sub channel), and on shutdown the entries still
  held are handed back at once for other workers to reclaim;
- Redis faults are waited out, not passed on: the pool retries each command through a
  blip, every loop keeps trying with backoff (one warning when Redis goes, one when it is
  back), and no job is failed or abandoned for it (see ``JobExecutor``).

``kick`` (the scheduler, ``AsyncKicker(name, broker).kiq()``) creates a job through
:class:`broker.Jobstream`, the one door to the core, so a kicked job meets the same rules as
any other. A plain taskiq task declared on this broker (taskiq's ``@broker.task``) has no job
to run as: its ``kiq`` raises :class:`NotAJobstreamTask`, one sentence saying to declare it
with jobstream's ``@task`` and start it with ``submit`` or ``kiq`` (:mod:`broker.task_object`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec
from redis.exceptions import RedisError
from taskiq import AckableMessage, AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.kicker import AsyncKicker
from taskiq.message import BrokerMessage

from broker.connection import (
    STARTUP_PATIENCE_SECONDS,
    RedisWatch,
    resilient_options,
    until_redis_answers,
)
from broker.log_format import set_worker, use_log_format
from broker.message import decode_message
from broker.queues import ensure_groups
from broker.registry import TaskRegistry
from broker.settings import Settings
from broker.store import Delivery, JobStore
from broker.task_object import NotAJobstreamTask
from broker.topology import open_redis
from broker.validation import InvalidInput
from hub.subscriptions import ShardSubscriptions
from workers.deliveries import Deliveries
from workers.executor import JobExecutor
from workers.frames import JobFormatter, split_batch, split_frame
from workers.leases import Leases
from workers.webhook_sender import WebhookSender
from workers.worker_metrics import serve_worker_metrics

if TYPE_CHECKING:
    from broker.api import Jobstream

log = logging.getLogger("jobstream.broker")
_SHUTDOWN_WRITES_SECONDS = 5.0
"""How long shutdown waits for the lease loop's last writes (hand-back, heartbeat delete)."""


class JobBroker(AsyncBroker):
    """The jobstream worker broker (``taskiq worker workers.app:broker``)."""

    def __init__(
        self,
        settings: Settings,
        registry: TaskRegistry,
        queues: Sequence[str] | None = None,
    ) -> None:
        lease_ms = int(settings.lease_seconds * 1000)
        super().__init__()
        self.redis = open_redis(
            settings.topology,
            # A read that never completes must not hang the worker: after a cancelled
            # blocking XREADGROUP, redis-py could leave a connection waiting for a reply
            # that never came, and SIGTERM then idled forever (seen about 1 run in 10).
            socket_timeout=min(1000, lease_ms) / 1000 + 5,
            socket_connect_timeout=5,
            **resilient_options(),
        )
        self.settings = settings
        self.keys = settings.keys
        self.registry = registry
        self.queues = tuple(queues or settings.queues)
        self.formatter = JobFormatter()
        self.consumer_name = ""
        # Set by ``JobReceiver`` (:meth:`deliver_in_batches`): how many jobs run at once.
        self.batch_limit: int | None = None
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._closing = False
        self.executor: JobExecutor | None = None
        self.deliveries: Deliveries | None = None
        self.leases: Leases | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._cancels: ShardSubscriptions | None = None
        self.watch = RedisWatch(log, "worker")
        # What taskiq's ``@broker.task`` builds here: its public hook, as taskiq's own
        # ``AsyncSharedBroker`` uses it; a task jobstream does not know is refused at ``kiq``.
        self.decorator_class = TaskiqTaskOnJobBroker
        for spec in registry:
            self.register_task(self._entry_point(), task_name=spec.name)

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Name this consumer, create the groups, and start leases, heartbeat and cancels."""
        await super().startup()
        if not self.is_worker_process:
            return
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        set_worker(self.consumer_name)
        use_log_format(self.settings.log_format)
        # Taskiq logs a line per task at INFO; at thousands of jobs a second that is a
        # sizeable share of the worker's time. Job changes are in Redis and its events.
        logging.getLogger("taskiq.receiver.receiver").setLevel(logging.WARNING)
        redis = self.redis
        store = JobStore(redis, self.settings)

        async def prepare() -> None:
            await store.scripts.load_all(redis)
            await ensure_groups(redis, self.keys, self.queues)

        give_up = time.monotonic() + STARTUP_PATIENCE_SECONDS
        await until_redis_answers(self.watch, "starting up", prepare, lambda: give_up)
        executor = self.executor = JobExecutor(store, self.registry, self.consumer_name, watch=self.watch)
        limit = self.batch_limit or self.settings.worker_concurrency
        deliveries = Deliveries(
            self.settings, self.registry, self.queues, store, self.consumer_name, self.watch, limit
        )
        self.deliveries = deliveries
        self.leases = Leases(self.settings, deliveries, executor, self.watch)
        self.leases.slots = limit
        executor.on_running_changed = self.leases.changed
        if self.settings.worker_metrics_port:
            host, port = self.settings.worker_metrics_host, self.settings.worker_metrics_port
            serve_worker_metrics(port, host, limit, lambda: len(executor.running))
        self._cancels = self._cancel_listener(executor)
        await self._cancels.start()
        self._loops = [
            asyncio.create_task(self.leases.keep(), name="jobstream-leases"),
            asyncio.create_task(deliveries.promote_due(), name="jobstream-delayed"),
            asyncio.create_task(
                WebhookSender(store, self.settings, self.watch).run(), name="jobstream-webhooks"
            ),
        ]
        log.info("worker %s consuming %s", self.consumer_name, ", ".join(self.queues))

    async def shutdown(self) -> None:
        """Stop what still runs, hand its entries back for prompt reclaim, then close."""
        self._closing = True
        if self.executor is not None and self.deliveries is not None and self.leases is not None:
            self.leases.stop({stream: set(ids) for stream, ids in self.deliveries.inflight.items()})
            for job_id in list(self.executor.running):
                self.executor.abandon(job_id)
            await self._sign_off(self._loops[0])
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._cancels is not None:
            await self._cancels.stop()
        if self.is_worker_process and "broker.default_client" in sys.modules:
            from broker.default_client import close_default_jobstream  # made only if task code used it

            await close_default_jobstream()  # the one task code's submit/kiq made, if any
        await super().shutdown()
        await self.redis.aclose()

    async def _sign_off(self, leases: asyncio.Task[None]) -> None:
        """Let the lease loop write its last (hand-back, heartbeat delete), for a while at most."""
        try:
            await asyncio.wait_for(asyncio.shield(leases), _SHUTDOWN_WRITES_SECONDS)
        except (TimeoutError, RedisError, OSError) as err:  # the heartbeat's TTL ends it; leases lapse
            log.warning("worker %s: could not sign off from Redis (%r)", self.consumer_name, err)
        except Exception:
            log.exception("worker %s: the lease loop failed", self.consumer_name)

    # -- running deliveries -----------------------------------------------------------------

    def _entry_point(self) -> Callable[[str, str, str, int], Awaitable[None]]:
        """A fresh entry function per task name (Taskiq renames the function it registers)."""

        async def run_job(job_id: str, stream: str, entry_id: str, dispatch: int) -> None:
            """What Taskiq's own receiver calls for every delivery: run the job, forget the entry."""
            await self._run(Delivery(job_id, stream, entry_id, int(dispatch)))

        return run_job

    def deliver_in_batches(self, limit: int) -> None:
        """Make ``listen`` yield batches for :meth:`run_batch`, and run ``limit`` jobs at once.

        ``JobReceiver`` asks for it: a batch is everything one read from Redis returned, so
        Taskiq's receiver handles one message per read instead of one per job. Its
        per-message machinery (two helper tasks and two ``asyncio.wait`` per message) was
        about half of a noop job's worker CPU: ``python -m bench throughput`` on 2 shared
        cores, worker CPU per job 66-118 us with batches, 179-278 us with one message per
        job (and 96-135 us with the private prefetch override this replaced).
        """
        self.batch_limit = max(1, limit)
        self._slots = asyncio.Semaphore(self.batch_limit)

    async def run_batch(self, batch: bytes) -> None:
        """Run the deliveries of a batch, each in a task of its own, ``batch_limit`` at most at once."""
        frames = split_batch(batch)
        if len(frames) == 1:
            await self._run_in_slot(frames[0])
            return
        await asyncio.gather(*(self._run_in_slot(frame) for frame in frames), return_exceptions=True)

    async def _run_in_slot(self, frame: bytes) -> None:
        async with self._slots:
            if self._closing:  # shutting down: the entry is handed back, unrun
                return
            await self.run_delivered(frame)

    async def run_delivered(self, frame: bytes) -> None:
        """Run one delivery ``listen`` yielded, with no Taskiq message on the way.

        Does what Taskiq's receiver does with it, minus what a job never uses: an entry
        that cannot be read, or names a task this worker lacks, is released unrun (to be
        redelivered, and dead-lettered after ``max_deliveries``).
        """
        stream, entry_id, payload = split_frame(frame)
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

    def _release(self, stream: str, entry_id: str) -> None:
        if self.deliveries is not None:
            self.deliveries.release(stream, entry_id)

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        """New and reclaimed entries of this worker's queues (:meth:`Deliveries.listen`)."""
        if self.deliveries is None:
            raise RuntimeError("JobBroker.listen runs in a worker process, after startup")
        async for delivery in self.deliveries.listen(self.redis, batches=self.batch_limit is not None):
            yield delivery

    def _cancel_listener(self, executor: JobExecutor) -> ShardSubscriptions:
        """Cancel requests for running jobs arrive on every partition's cancels channel, by
        pub/sub, within milliseconds; after a reconnect the job records are checked for
        cancels published while the channels were not heard."""

        def cancel(_channel: str, job_id: bytes) -> None:
            executor.cancel(job_id.decode())

        async def recheck(_channels: list[str]) -> None:
            await executor.recheck_cancels()

        return ShardSubscriptions(
            self.settings.topology,
            self.redis,
            [self.keys.cancels(p) for p in range(self.keys.partitions)],
            cancel,
            recheck,
            client_name=f"jobstream-cancels:{self.consumer_name}",
            connect_timeout=5.0,
            keepalive_seconds=10.0,
            role=f"worker {self.consumer_name} cancels",
        )

    # -- sending ----------------------------------------------------------------------------

    async def kick(self, message: BrokerMessage) -> None:
        """Turn a message sent through Taskiq (the scheduler, ``task.kiq()``) into a job.

        Workers run jobs, not bare messages: every entry of a queue stream belongs to a job
        record. So instead of adding the Taskiq message to a stream, this submits a job
        through :class:`broker.Jobstream` whose input is the message's kwargs (or its one
        positional argument). Labels: ``owner`` (default ``scheduler``), ``idempotency_key``
        (one job per key and owner), ``delay`` (seconds). Raises what ``Jobstream.submit``
        raises (``UnknownTask``, ``InvalidInput``, ``QuotaExceeded``...), and
        ``NotAJobstreamTask`` for a plain taskiq task declared on this broker.
        """
        sent = _sent_decoder.decode(message.message)
        if sent.task_name not in self.registry and self.find_task(sent.task_name) is not None:
            raise NotAJobstreamTask(sent.task_name)
        labels = message.labels
        delay = float(labels.get("delay") or 0)
        await self._jobs.submit(
            sent.task_name,
            _kick_input(sent),
            owner=str(labels.get("owner") or KICK_OWNER),
            idempotency_key=str(labels["idempotency_key"]) if labels.get("idempotency_key") else None,
            delay=delay if delay > 0 else None,
        )

    @functools.cached_property
    def _jobs(self) -> Jobstream:
        """The public API on this broker's pool (scripts load on first use, by EVALSHA's fallback);
        imported here, as only the scheduler kicks: a worker starts without the event hub."""
        from broker.api import Jobstream

        return Jobstream(self.redis, self.settings, self.registry)


_Params = ParamSpec("_Params")
_Return = TypeVar("_Return")


class TaskiqTaskOnJobBroker(AsyncTaskiqDecoratedTask[_Params, _Return]):
    """A task declared with taskiq's ``@broker.task`` on the jobstream broker: still callable
    as its function, but only a task jobstream's registry knows may be kicked."""

    def kicker(self) -> AsyncKicker[_Params, _Return]:
        """Taskiq's kicker (``kiq``, ``schedule_by_*`` go through it); ``NotAJobstreamTask``
        for a task jobstream's registry does not know, before anything is sent."""
        broker = self.broker
        if isinstance(broker, JobBroker) and self.task_name not in broker.registry:
            raise NotAJobstreamTask(self.task_name)
        return super().kicker()


KICK_OWNER = "scheduler"
"""Who owns a job created by ``JobBroker.kick`` when its message has no ``owner`` label."""


class _Sent(msgspec.Struct):
    """The part of a Taskiq message (``JobFormatter.dumps``) that ``kick`` reads."""

    task_name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


_sent_decoder = msgspec.json.Decoder(_Sent)


def _kick_input(sent: _Sent) -> Any:
    """A kicked task's input: its kwargs, its one positional argument, or ``{}``."""
    if (sent.args and sent.kwargs) or len(sent.args) > 1:
        raise InvalidInput(
            msgspec.ValidationError(
                f"{sent.task_name}: pass the input as keyword arguments or as one positional argument"
            )
        )
    return sent.args[0] if sent.args else sent.kwargs
