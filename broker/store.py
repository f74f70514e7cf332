"""``JobStore``: one typed method per state-change script, plus reads of job records."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from broker.errors import (
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    QuotaExceeded,
    ScriptCode,
    raise_for_code,
)
from broker.ids import new_job_id
from broker.keys import partition_of
from broker.listing import Page, list_jobs
from broker.message import encode_message
from broker.models import Job, JobError, JobStatus, job_from_fields
from broker.placement import Placement
from broker.scripts import CancelOpts, CreateOpts, ProgressOpts, RecordExtras, Reply, Scripts, TerminalOpts
from broker.settings import Settings
from broker.topology import RedisClient, client_retry

GROUP = "workers"
"""The consumer group every queue stream is read through."""

_encode = msgspec.json.Encoder().encode
_NO_EXTRAS = RecordExtras()
T = TypeVar("T")
_CANCELLED = _encode(JobError(type="Cancelled", message="cancelled by request"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a worker got a job's message: needed to acknowledge it with the final state."""

    job_id: str
    stream: str
    entry_id: str
    dispatch: int


@dataclass(frozen=True, slots=True)
class StartedJob:
    """What a worker needs of a job it runs (read from the start script's reply)."""

    id: str
    type: str
    owner: str
    queue: str
    input: bytes
    cancel_requested: bool
    timeout: float | None = None  # the job's own timeout (the task's applies when None)


@dataclass(frozen=True, slots=True)
class Started:
    """A job a worker has just started, its attempt (the fence), and ms it waited since due."""

    job: StartedJob
    attempt: int
    waited_ms: int | None = None

    @classmethod
    def from_record(cls, f: dict[bytes, bytes], waited_ms: int | None = None) -> Started:
        """Read the record a start script returned."""
        job = StartedJob(
            id=f[b"id"].decode(),
            type=f[b"type"].decode(),
            owner=f[b"owner"].decode(),
            queue=f[b"queue"].decode(),
            input=f.get(b"input", b"null"),
            cancel_requested=b"cancel_requested" in f,
            timeout=float(f[b"timeout"]) if f.get(b"timeout") else None,
        )
        return cls(job, int(f[b"attempts"]), waited_ms)


class JobStore:
    """Every job state change goes through here, each as one atomic Lua script."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys
        self.scripts = Scripts.register(redis, self.keys)
        self.scripts.batcher.wait_for_replicas(
            settings.create_replicas, settings.create_replicas_timeout_ms, self.keys.replication_marker
        )
        self.terminal_opts = TerminalOpts(webhook_window=settings.webhook_max_seconds)

    # -- creating and reading -------------------------------------------------------

    async def create(
        self,
        *,
        task: str,
        input_json: bytes,
        owner: str,
        queue: str,
        idempotency_key: str | None = None,
        run_at_ms: int = 0,
        delay_ms: int = 0,
        extras: RecordExtras = _NO_EXTRAS,
    ) -> tuple[Job, bool]:
        """Create and queue a job; returns it and whether it is new (False: idempotent replay).

        ``run_at_ms`` (epoch ms) or ``delay_ms`` (from now, by the Redis clock) delays it.
        ``extras`` are stored on the record as given (checked before, by ``Jobstream``).
        A replayed ``idempotency_key`` returns the job it first created, and raises
        :class:`IdempotencyConflict` when that job's type or input differ from this one's.
        Safe to re-send after a lost reply: a create that finds its own id took effect.
        """
        replace_dangling = False
        settings = self.settings  # an idempotency key outlives its job's life (active, then kept):
        idem_ttl = settings.active_ttl_seconds + settings.retention_seconds if idempotency_key else 0
        placement = Placement(self.keys.partitions, settings.max_active_per_owner)
        partitions = placement.candidates(owner, idempotency_key)
        job_id = new_job_id(next(partitions))
        while True:
            opts = CreateOpts(
                max_active=placement.share(partition_of(job_id)) or 0,
                idempotency_ttl=idem_ttl,
                run_at=run_at_ms,
                delay_ms=delay_ms,
                replace_idempotency=replace_dangling,
                **msgspec.structs.asdict(extras),
            )
            reply = await self._create(job_id, task, input_json, owner, queue, idempotency_key, opts)
            if reply.code == ScriptCode.OK and reply.record is not None:
                return job_from_fields(reply.record), True
            if reply.code == ScriptCode.QUOTA:
                partition = next(partitions, None)
                if partition is None:
                    raise QuotaExceeded(job_id)
                job_id = new_job_id(partition)
                continue
            existing = reply.detail or ""
            if existing == job_id:  # an earlier send of this very create got through
                return await self.get(job_id, owner=owner), True
            try:
                job = await self.get(existing, owner=owner)
            except JobNotFound:
                replace_dangling = True  # the key outlived its job: take it over
                continue
            if job.type != task or msgspec.json.decode(job.input) != msgspec.json.decode(input_json):
                raise IdempotencyConflict(existing)
            return job, False

    async def _create(
        self,
        job_id: str,
        task: str,
        input_json: bytes,
        owner: str,
        queue: str,
        idempotency_key: str | None,
        opts: CreateOpts,
    ) -> Reply:
        return await self._resend_safe(
            lambda: self.scripts.create_job(
                job_id=job_id,
                task=task,
                owner=owner,
                queue=queue,
                input_json=input_json,
                message=encode_message(job_id, task, 1),
                active_ttl=self.settings.active_ttl_seconds,
                idempotency_key=idempotency_key,
                opts=opts,
            )
        )

    async def _resend_safe(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make a call of a script that is safe to send twice (create, start, finish, retry).

        When its connection fails, it is sent again as the client's retry policy says
        (redis-py's ``Retry``; none: not again). The batch it rode in is not resent.
        """
        retry = client_retry(self.redis)
        if retry is None:
            return await call()
        return await retry.call_with_retry(call, _nothing_to_clean_up)

    async def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, if it exists and ``owner`` (None: any, for admins) may see it."""
        return (await self._read(job_id, owner))[0]

    async def mark_fetched(self, job: Job) -> Job:
        """``job`` (just read) after its result's first fetch: a finished job of a
        ``keep_until_fetched`` task then expires ``fetched_grace_seconds`` from now (never
        later than its retention said). Any other job is returned as it is, with no round trip.
        """
        if not (job.keep_until_fetched and job.terminal):
            return job
        expires_ms = await self.scripts.mark_fetched(
            job_id=job.id, grace_seconds=self.settings.fetched_grace_seconds
        )
        if expires_ms is None:
            return job
        return msgspec.structs.replace(job, expires_at=datetime.fromtimestamp(expires_ms / 1000, tz=UTC))

    async def _read(self, job_id: str, owner: str | None) -> tuple[Job, dict[bytes, bytes]]:
        """The job and its raw hash fields; raises :class:`JobNotFound` as :meth:`get` does."""
        fields: Any = await self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            raise JobNotFound(job_id)
        job = job_from_fields(fields)
        if owner is not None and job.owner != owner:
            raise JobNotFound(job_id)
        return job, fields

    async def list(
        self, owner: str | None, *, status: JobStatus | None = None, task: str | None = None,
        labels: Mapping[str, str] | None = None, limit: int = 20, cursor: str | None = None,
    ) -> Page:  # fmt: skip
        """The owner's jobs (None: everyone's), newest first, optionally filtered; resumable
        with ``cursor`` (see :func:`broker.listing.list_jobs`)."""
        return await list_jobs(
            self.redis, self.keys, owner, status=status, task=task, labels=labels, limit=limit, cursor=cursor
        )

    # -- the worker's side -------------------------------------------------------------

    async def start(self, delivery: Delivery, consumer: str, token: str | None = None) -> Started | None:
        """Take the job for this delivery: PROCESSING, attempts + 1. None if it is not to run.

        ``token`` names this start (a fresh one if None): resent with the same token, say
        after a dropped connection, the start counts once and answers the same job.
        """
        run_token = token or uuid.uuid4().hex
        started = await self._resend_safe(
            lambda: self.scripts.start_job(
                job_id=delivery.job_id,
                stream=delivery.stream,
                group=GROUP,
                consumer=consumer,
                entry_id=delivery.entry_id,
                dispatch=delivery.dispatch,
                active_ttl=self.settings.active_ttl_seconds,
                run_token=run_token,
            )
        )
        reply = started.reply
        if reply.code != ScriptCode.OK or reply.record is None:
            return None
        return Started.from_record(reply.record, started.waited_ms)

    async def progress(
        self,
        job_id: str,
        attempt: int,
        progress: float,
        message: str | None = None,
        eta_seconds: float | None = None,
    ) -> bool:
        """Record progress of the running attempt; returns whether a cancel was requested."""
        reply = await self.scripts.progress_job(
            job_id=job_id,
            attempt=attempt,
            progress=progress,
            active_ttl=self.settings.active_ttl_seconds,
            opts=ProgressOpts(
                message=message or None,
                eta=None if eta_seconds is None else round(float(eta_seconds), 3),
            ),
        )
        raise_for_code(reply.code, job_id, "report progress", reply.detail)
        return reply.cancel_requested

    async def succeed(self, started: Started, delivery: Delivery, result_json: bytes, retention: int) -> None:
        """PROCESSING -> SUCCESS with the result, then ack and delete the entry."""
        await self._finish(started, delivery, JobStatus.SUCCESS, result_json, retention)

    async def fail(self, started: Started, delivery: Delivery, error: JobError, retention: int) -> None:
        """PROCESSING -> FAILURE with the error, then ack and delete the entry."""
        await self._finish(started, delivery, JobStatus.FAILURE, _encode(error), retention)

    async def cancelled(self, started: Started, delivery: Delivery, retention: int) -> None:
        """PROCESSING -> CANCELLED once the running code has stopped, then ack and delete."""
        await self._finish(started, delivery, JobStatus.CANCELLED, _CANCELLED, retention)

    async def _finish(
        self, started: Started, delivery: Delivery, status: JobStatus, payload: bytes, retention: int
    ) -> None:
        """``payload``: the result JSON for SUCCESS, else the error JSON."""
        job = started.job
        reply = await self._resend_safe(
            lambda: self.scripts.finish_job(
                job_id=job.id,
                owner=job.owner,
                stream=delivery.stream,
                group=GROUP,
                entry_id=delivery.entry_id,
                attempt=started.attempt,
                status=status.value,
                payload=payload,
                retention=retention,
                opts=self.terminal_opts,
            )
        )
        raise_for_code(reply.code, job.id, status.value, reply.detail)

    async def retry(
        self, started: Started, delivery: Delivery, error: JobError, delay_seconds: float
    ) -> None:
        """PROCESSING -> PENDING keeping ``error``; the next dispatch is due ``delay_seconds``
        after now by the Redis clock."""
        job = started.job
        dispatch = delivery.dispatch + 1
        reply = await self._resend_safe(
            lambda: self.scripts.retry_job(
                job_id=job.id,
                queue=job.queue,
                stream=delivery.stream,
                group=GROUP,
                entry_id=delivery.entry_id,
                attempt=started.attempt,
                error_json=_encode(error),
                delay_ms=max(0, round(delay_seconds * 1000)),
                message=encode_message(job.id, job.type, dispatch),
                dispatch=dispatch,
                active_ttl=self.settings.active_ttl_seconds,
            )
        )
        raise_for_code(reply.code, job.id, "retry", reply.detail)

    async def dead_letter(
        self,
        delivery: Delivery,
        consumer: str,
        message: bytes,
        deliveries: int,
        owner: str,
        retention: int,
    ) -> bool:
        """Move an over-delivered entry to the dead stream; fail its job. True if it failed."""
        error = JobError(
            type="DeliveryLimit",
            message=(
                f"delivered {deliveries} times (max_deliveries={self.settings.max_deliveries}); "
                "its worker probably died each time. Moved to the dead-letter stream."
            ),
        )
        reply = await self.scripts.dead_letter_job(
            job_id=delivery.job_id,
            owner=owner,
            queue=self.keys.queue_of(delivery.stream)[0],
            stream=delivery.stream,
            group=GROUP,
            consumer=consumer,
            entry_id=delivery.entry_id,
            message=message,
            error_json=_encode(error),
            retention=retention,
            deliveries=deliveries,
            opts=self.terminal_opts,
        )
        return reply.code == ScriptCode.OK

    # -- the user's side ---------------------------------------------------------------

    async def cancel(self, job_id: str, owner: str | None, retention: int | Callable[[str], int]) -> Job:
        """Cancel a job: at once if PENDING, by asking its worker if PROCESSING.

        ``retention`` is seconds, or a function of the job's task name giving them.
        """
        job, fields = await self._read(job_id, owner)
        if callable(retention):
            retention = retention(job.type)
        reply = await self.scripts.cancel_job(
            job_id=job_id,
            owner=job.owner,
            queue=job.queue,
            queued_message=encode_message(job_id, job.type, int(fields.get(b"dispatch", 1))),
            error_json=_CANCELLED,
            retention=retention,
            opts=CancelOpts(owner=owner, webhook_window=self.settings.webhook_max_seconds),
        )
        if reply.code == ScriptCode.BAD_TRANSITION:
            raise IllegalTransition(job_id, reply.detail or "", "cancel")
        raise_for_code(reply.code, job_id, "cancel")
        assert reply.record is not None
        return job_from_fields(reply.record)


async def _nothing_to_clean_up(_error: Exception) -> None:
    """The batcher has already dropped the failed connection."""
