"""``JobStore``: one typed method per state-change script, plus reads of job records."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from broker.batching import ScriptBatcher
from broker.errors import IdempotencyConflict, IllegalTransition, JobNotFound, ScriptCode, raise_for_code
from broker.ids import new_job_id
from broker.keys import Keys
from broker.message import encode_message
from broker.models import Job, JobError, JobStatus, job_from_fields, pairs_to_fields
from broker.scripts import Scripts
from broker.settings import Settings

Rows = list[tuple[str, float]]
"""(job id, created ms) rows of an owner index."""

GROUP = "workers"
"""The consumer group every queue stream is read through."""

_encode = msgspec.json.Encoder().encode
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


@dataclass(frozen=True, slots=True)
class Started:
    """A job a worker has just started, and the attempt number that fences it."""

    job: StartedJob
    attempt: int

    @classmethod
    def from_reply(cls, flat: list[bytes]) -> Started:
        """Read the record a start script returned (a flat field/value list)."""
        f = pairs_to_fields(flat)
        job = StartedJob(
            id=f[b"id"].decode(),
            type=f[b"type"].decode(),
            owner=f[b"owner"].decode(),
            queue=f[b"queue"].decode(),
            input=f.get(b"input", b"null"),
            cancel_requested=b"cancel_requested" in f,
        )
        return cls(job, int(f[b"attempts"]))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing, and the cursor of the next (None at the end)."""

    jobs: list[Job]
    cursor: str | None


class JobStore:
    """Every job state change goes through here, each as one atomic Lua script."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.scripts = Scripts.register(redis)
        self.batcher = ScriptBatcher(redis)
        self._owner_prefix = self.keys.owner_channel_prefix

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
    ) -> tuple[Job, bool]:
        """Create and queue a job; returns it and whether it is new (False: idempotent replay).

        ``run_at_ms`` (epoch ms) or ``delay_ms`` (from now, by the Redis clock) delays it.
        A replayed ``idempotency_key`` returns the job it first created, and raises
        :class:`IdempotencyConflict` when that job's type or input differ from this one's.
        Safe to re-send after a lost reply: a create that finds its own id took effect.
        """
        replace_dangling = False
        job_id = new_job_id()
        while True:
            code, detail = await self._create(
                job_id,
                task,
                input_json,
                owner,
                queue,
                idempotency_key,
                (run_at_ms, delay_ms),
                replace_dangling,
            )
            if code == ScriptCode.OK:
                return job_from_fields(pairs_to_fields(detail)), True
            if code == ScriptCode.QUOTA:
                raise_for_code(code, job_id, "create")
            existing = detail.decode() if isinstance(detail, bytes) else str(detail)
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
        due: tuple[int, int],
        replace_dangling: bool,
    ) -> tuple[int, Any]:
        k, s = self.keys, self.settings
        idem_ttl = s.active_ttl_seconds + s.retention_seconds if idempotency_key else 0
        reply = await self.batcher.call(
            self.scripts.create_job,
            keys=[
                k.job(job_id),
                k.owner_jobs(owner),
                k.owner_active(owner),
                k.idempotency(owner, idempotency_key or ""),
                k.queue(queue),
                k.delayed(queue),
            ],
            args=[
                self._owner_prefix,
                job_id,
                task,
                owner,
                queue,
                input_json,
                s.active_ttl_seconds,
                s.max_active_per_owner,
                idem_ttl,
                encode_message(job_id, task, 1),
                due[0],
                "1" if replace_dangling else "0",
                due[1],
            ],
        )
        return int(reply[0]), (reply[1] if len(reply) > 1 else None)

    async def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, if it exists and ``owner`` (None: any, for admins) may see it."""
        return (await self._read(job_id, owner))[0]

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
        self,
        owner: str,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """The owner's jobs, newest first, optionally filtered; resumable with ``cursor``.

        The order is (created ms, id) descending and the cursor names the last job
        returned, so jobs created while a client pages neither repeat nor shift a page.
        Reads the index in bounded batches; ids whose record expired are skipped (the
        cleanup task prunes them). A page may hold fewer than ``limit`` jobs when a filter
        matches rarely; the cursor then continues the scan where it stopped.
        """
        after = _parse_cursor(cursor)
        top: float | str = after[0] if after else "+inf"
        batch = max(limit * 2, 50)
        found: list[Job] = []
        offset = scanned = 0
        last: tuple[float, str] | None = after
        while len(found) < limit and scanned < batch * 10:
            rows = await self._index_batch(owner, top, offset, batch)
            if not rows:
                return Page(found, None)
            offset += len(rows)
            rows = [(i, sc) for i, sc in rows if after is None or (sc, i) < after]
            scanned += len(rows)
            for (job_id, score), job in zip(rows, await self._read_many(rows), strict=True):
                last = (score, job_id)
                if job is None or not _matches(job, status, task):
                    continue
                found.append(job)
                if len(found) == limit:
                    return Page(found, _format_cursor(last))
        return Page(found, _format_cursor(last) if last else None)

    async def _index_batch(self, owner: str, top: float | str, offset: int, count: int) -> Rows:
        rows: Any = await self.redis.zrange(
            self.keys.owner_jobs(owner),
            top,
            "-inf",
            desc=True,
            byscore=True,
            offset=offset,
            num=count,
            withscores=True,
        )
        return [(member.decode(), float(score)) for member, score in rows]

    async def _read_many(self, rows: Rows) -> Sequence[Job | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, _ in rows:
                pipe.hgetall(self.keys.job(job_id))
            records = await pipe.execute()
        return [job_from_fields(fields) if fields else None for fields in records]

    # -- the worker's side -------------------------------------------------------------

    async def start(self, delivery: Delivery, consumer: str, token: str | None = None) -> Started | None:
        """Take the job for this delivery: PROCESSING, attempts + 1. None if it is not to run.

        ``token`` names this start (a fresh one if None): resent with the same token, say
        after a dropped connection, the start counts once and answers the same job.
        """
        reply = await self.batcher.call(
            self.scripts.start_job,
            keys=[self.keys.job(delivery.job_id), delivery.stream],
            args=[
                self._owner_prefix,
                GROUP,
                consumer,
                delivery.entry_id,
                delivery.dispatch,
                self.settings.active_ttl_seconds,
                token or uuid.uuid4().hex,
            ],
        )
        if int(reply[0]) != ScriptCode.OK:
            return None
        return Started.from_reply(reply[1])

    async def progress(
        self,
        job_id: str,
        attempt: int,
        progress: float,
        message: str | None = None,
        eta_seconds: float | None = None,
    ) -> bool:
        """Record progress of the running attempt; returns whether a cancel was requested."""
        reply = await self.batcher.call(
            self.scripts.progress_job,
            keys=[self.keys.job(job_id)],
            args=[
                self._owner_prefix,
                attempt,
                repr(float(progress)),
                message or "",
                "" if eta_seconds is None else repr(round(float(eta_seconds), 3)),
                self.settings.active_ttl_seconds,
            ],
        )
        raise_for_code(int(reply[0]), job_id, "report progress", reply[1] if len(reply) > 1 else None)
        return bool(reply[1])

    async def succeed(self, started: Started, delivery: Delivery, result_json: bytes, retention: int) -> None:
        """PROCESSING -> SUCCESS with the result, then ack and delete the entry."""
        await self._finish(started, delivery, JobStatus.SUCCESS, result_json, b"", retention)

    async def fail(self, started: Started, delivery: Delivery, error: JobError, retention: int) -> None:
        """PROCESSING -> FAILURE with the error, then ack and delete the entry."""
        await self._finish(started, delivery, JobStatus.FAILURE, b"", _encode(error), retention)

    async def cancelled(self, started: Started, delivery: Delivery, retention: int) -> None:
        """PROCESSING -> CANCELLED once the running code has stopped, then ack and delete."""
        await self._finish(started, delivery, JobStatus.CANCELLED, b"", _CANCELLED, retention)

    async def _finish(
        self,
        started: Started,
        delivery: Delivery,
        status: JobStatus,
        result_json: bytes,
        error_json: bytes,
        retention: int,
    ) -> None:
        job = started.job
        reply = await self.batcher.call(
            self.scripts.finish_job,
            keys=[self.keys.job(job.id), self.keys.owner_active(job.owner), delivery.stream],
            args=[
                self._owner_prefix,
                started.attempt,
                status.value,
                result_json,
                error_json,
                retention,
                GROUP,
                delivery.entry_id,
                job.id,
            ],
        )
        raise_for_code(int(reply[0]), job.id, status.value, reply[1] if len(reply) > 1 else None)

    async def retry(self, started: Started, delivery: Delivery, error: JobError, run_at_ms: int) -> None:
        """PROCESSING -> PENDING keeping ``error``; the next dispatch is due at ``run_at_ms``."""
        job = started.job
        dispatch = delivery.dispatch + 1
        reply = await self.batcher.call(
            self.scripts.retry_job,
            keys=[self.keys.job(job.id), delivery.stream, self.keys.delayed(job.queue)],
            args=[
                self._owner_prefix,
                started.attempt,
                _encode(error),
                run_at_ms,
                encode_message(job.id, job.type, dispatch),
                dispatch,
                self.settings.active_ttl_seconds,
                GROUP,
                delivery.entry_id,
            ],
        )
        raise_for_code(int(reply[0]), job.id, "retry", reply[1] if len(reply) > 1 else None)

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
        queue = delivery.stream.removeprefix(self.keys.queue(""))
        error = JobError(
            type="DeliveryLimit",
            message=(
                f"delivered {deliveries} times (max_deliveries={self.settings.max_deliveries}); "
                "its worker probably died each time. Moved to the dead-letter stream."
            ),
        )
        reply = await self.scripts.dead_letter_job(
            keys=[
                self.keys.job(delivery.job_id),
                self.keys.owner_active(owner),
                delivery.stream,
                self.keys.dead(queue),
            ],
            args=[
                self._owner_prefix,
                GROUP,
                consumer,
                delivery.entry_id,
                message,
                _encode(error),
                retention,
                delivery.job_id,
                deliveries,
            ],
        )
        return int(reply[0]) == ScriptCode.OK

    # -- the user's side ---------------------------------------------------------------

    async def cancel(self, job_id: str, owner: str | None, retention: int | Callable[[str], int]) -> Job:
        """Cancel a job: at once if PENDING, by asking its worker if PROCESSING.

        ``retention`` is seconds, or a function of the job's task name giving them.
        """
        job, fields = await self._read(job_id, owner)
        if callable(retention):
            retention = retention(job.type)
        queued = encode_message(job_id, job.type, int(fields.get(b"dispatch", 1)))
        reply = await self.scripts.cancel_job(
            keys=[self.keys.job(job_id), self.keys.owner_active(job.owner), self.keys.delayed(job.queue)],
            args=[
                self._owner_prefix,
                owner or "",
                retention,
                self.keys.cancel_channel,
                job_id,
                _CANCELLED,
                queued,
            ],
        )
        code = int(reply[0])
        if code == ScriptCode.BAD_TRANSITION:
            raise IllegalTransition(job_id, reply[1].decode(), "cancel")
        raise_for_code(code, job_id, "cancel")
        return job_from_fields(pairs_to_fields(reply[1]))


def _matches(job: Job, status: JobStatus | None, task: str | None) -> bool:
    return (status is None or job.status == status) and (task is None or job.type == task)


def _format_cursor(position: tuple[float, str]) -> str:
    return f"{int(position[0])}.{position[1]}"


def _parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """``<created ms>.<job id>`` -> (score, id); raises ``ValueError`` on anything else."""
    if not cursor:
        return None
    score, sep, job_id = cursor.partition(".")
    if not sep or not score.isdigit() or not job_id:
        raise ValueError(f"not a listing cursor: {cursor!r}")
    return float(score), job_id
