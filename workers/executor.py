"""Runs one delivered job: start it, run the task under its timeout and cancel handle, and
write the final state (which also acknowledges the entry), or schedule a retry.

Faults of Redis are never the task's: the start and the final writes (succeed, fail,
retry, cancelled) are retried with backoff until the job's lease would lapse (they are
idempotent, see their scripts), and a write given up is logged once with the job id; the
job then runs again once its lease lapses. A retry of the task is spent only on the
task's own failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from broker.connection import REDIS_FAULTS, RedisWatch, until_redis_answers
from broker.errors import IllegalTransition, JobNotFound, JobstreamError, StaleAttempt
from broker.models import JobError, JobStatus
from broker.registry import JobContext, TaskOptions, TaskRegistry, TaskSpec
from broker.store import Delivery, JobStore, Started
from workers.failures import failure_of, log_failed_attempt, retryable

log = logging.getLogger("jobstream.worker")
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")
_MAX_BACKOFF_EXPONENT = 64
_RECANCEL_SECONDS = 0.25
_ENDS = {  # the counter each end adds to, and what its write is called in a log line
    JobStatus.SUCCESS: ("succeeded", "record its SUCCESS"),
    JobStatus.FAILURE: ("failed", "record its FAILURE"),
    JobStatus.CANCELLED: ("cancelled", "record its CANCELLED"),
}


class LeaseLapsed(JobstreamError):
    """A write could not reach Redis before the job's lease lapsed; the job will run again."""


@dataclass(slots=True)
class Counters:
    """What this worker has done, for its heartbeat and metrics."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    lost: int = 0


@dataclass(slots=True)
class Running:
    """A job running in this process: the asyncio task running it, and its context.

    The task's function runs in the delivery's own asyncio task (no task per job). A
    cancel or an abandon interrupts it only while the task's code runs, so the worker's
    own writes (start, final state) are never cut off half-way.
    """

    task: asyncio.Task[Any]
    delivery: Delivery
    ctx: JobContext | None = None
    in_task_code: bool = False
    interrupted: bool = False
    abandoned: bool = False
    timed_out: bool = False
    cancels: int = 0

    def interrupt(self) -> None:
        """Cancel the task's code if it is running now (otherwise the flags say enough)."""
        if self.in_task_code and not self.interrupted:
            self.interrupted = True
            self._cancel_task()

    def _cancel_task(self) -> None:
        """Cancel the task's code, and again every little while until it has stopped.

        A library may swallow a cancel: redis-py 8.1 on Python 3.11 did, for about one
        cancel in three that landed while a command was in flight, and the job then ran
        on to its end. ``uncancel_all`` takes back every one of these cancels.
        """
        if self.in_task_code:
            self.cancels += 1
            self.task.cancel()
            asyncio.get_running_loop().call_later(_RECANCEL_SECONDS, self._cancel_task)

    def uncancel_all(self) -> None:
        """Withdraw this job's cancels from its asyncio task, which goes on to record the end."""
        for _ in range(self.cancels):
            self.task.uncancel()
        self.cancels = 0

    def time_out(self) -> None:
        """Stop the task's code: it ran past its task's timeout."""
        if self.in_task_code and not self.interrupted:
            self.timed_out = True
            self.interrupt()

    def abandon(self) -> None:
        """Stop the task's code with no final write: this attempt no longer holds the job."""
        self.abandoned = True
        self.interrupt()


Outcome = tuple[str, Any]
"""("ok", result) | ("error", exception) | ("timeout", None) | ("cancelled", None) | ("lost", None)
| ("invalid", JobError): the job cannot run here at all (unknown task, bad input)."""


@dataclass(slots=True)
class JobExecutor:
    """Executes deliveries for one worker process (one consumer)."""

    store: JobStore
    registry: TaskRegistry
    consumer: str
    running: dict[str, Running] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    # Cancel requests that arrived between a job's start script and its registration here.
    early_cancels: dict[str, float] = field(default_factory=dict)
    watch: RedisWatch = field(default_factory=lambda: RedisWatch(log, "worker"))
    # When the last renewal of every held entry that went through began (monotonic).
    leases_renewed_at: float = 0.0
    starts: int = 0

    async def run(self, delivery: Delivery) -> None:
        """Run the job a delivery names, from start to its final state."""
        if delivery.job_id in self.running:
            return  # already running here: the entry came back to us, leave it be
        received = time.monotonic()
        self.starts += 1
        token = f"{self.consumer}/{self.starts}"  # unique: consumer names are
        try:
            started = await self._persist(
                delivery.job_id,
                "start it",
                received,
                lambda: self.store.start(delivery, self.consumer, token),
            )
            if started is None:
                return
            self.counters.started += 1
            await self._run_started(started, delivery, received)
        except LeaseLapsed:
            self.counters.lost += 1

    async def _run_started(self, started: Started, delivery: Delivery, received: float) -> None:
        job = started.job
        spec = self.registry.get(job.type) if job.type in self.registry else None
        if spec is None:
            outcome: Outcome = ("invalid", JobError("UnknownTask", job.type))
        else:
            outcome = await self._execute(spec, started, delivery)
        await self._record(spec, started, delivery, received, outcome)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job running here (a cancel request arrived); False if not here."""
        running = self.running.get(job_id)
        if running is None or running.ctx is None:
            now = time.monotonic()
            self.early_cancels = {j: t for j, t in self.early_cancels.items() if now - t < 60}
            self.early_cancels[job_id] = now
            return False
        running.ctx.request_cancel()
        return True

    def abandon(self, job_id: str) -> None:
        """Stop a job without writing a state: its lease was lost or the worker is leaving."""
        running = self.running.get(job_id)
        if running is not None:
            running.abandon()

    async def flush_progress(self) -> None:
        """Write the newest progress of jobs whose progress writes failed (Redis was away)."""
        for running in list(self.running.values()):
            ctx = running.ctx
            if ctx is not None and ctx.unsaved_since is not None:
                await ctx.flush()

    async def recheck_cancels(self) -> None:
        """Cancel running jobs whose cancel was asked while the cancel channel was not heard."""
        job_ids = [job_id for job_id, running in self.running.items() if not running.abandoned]
        if not job_ids:
            return
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.store.keys.job(job_id), "cancel_requested")
            flags = await pipe.execute()
        for job_id, flag in zip(job_ids, flags, strict=True):
            if flag:
                self.cancel(job_id)

    async def _persist(self, job_id: str, what: str, since: float, write: Callable[[], Awaitable[T]]) -> T:
        """Make an idempotent write, retried with backoff while Redis fails, until the lease lapses.

        The lease of the job's entry lapses one lease after the later of ``since`` (when
        the entry was received) and the last renewal of all held entries. Raises
        :class:`LeaseLapsed`, logged here once with the job id, when it would lapse first.
        """
        lease = self.store.settings.lease_seconds
        try:
            return await until_redis_answers(
                self.watch, "writing job states", write, lambda: max(since, self.leases_renewed_at) + lease
            )
        except REDIS_FAULTS as err:
            log.error(
                "job %s: could not %s before its lease lapsed (%s: %s); it will run again",
                job_id,
                what,
                type(err).__name__,
                err,
            )
            raise LeaseLapsed(job_id) from None

    async def _execute(self, spec: TaskSpec, started: Started, delivery: Delivery) -> Outcome:
        """Run the task's code for a started job (unless a cancel came first); say how it ended."""
        if started.job.cancel_requested:
            return ("cancelled", None)
        try:
            data = spec.decode_input(started.job.input)
        except msgspec.ValidationError as err:
            return ("invalid", JobError("InvalidInput", str(err)))
        task = asyncio.current_task()
        assert task is not None
        running = Running(task, delivery)
        running.ctx = ctx = JobContext(self.store, started, running.interrupt, running.abandon)
        self.running[started.job.id] = running
        if self.early_cancels.pop(started.job.id, None) is not None:
            ctx.request_cancel()
        try:
            outcome = await self._call(spec, ctx, data, running, spec.timeout_for(started.job.timeout))
        finally:
            del self.running[started.job.id]
            running.ctx = None  # ctx holds running's methods: unlinked, both go by refcount, not GC
        if ctx.cancelled and outcome[0] in ("ok", "error"):
            outcome = ("cancelled", None)  # it saw ctx.cancelled and returned (or gave up) early
        return outcome

    async def _call(
        self, spec: TaskSpec, ctx: JobContext, data: Any, running: Running, timeout: float | None
    ) -> Outcome:
        """Run the task's function under ``timeout`` (the job's own, else its task's); say how it ended.

        The timeout interrupts the code as a cancel does (insisting, see ``Running``),
        rather than by ``asyncio.timeout``, whose one cancel a library may swallow.
        """
        if ctx.cancelled:
            return ("cancelled", None)
        deadline = (
            None if timeout is None else asyncio.get_running_loop().call_later(timeout, running.time_out)
        )
        running.in_task_code = True
        try:
            result = await spec.fn(ctx, data)
        except asyncio.CancelledError:
            if not running.interrupted:
                raise  # the worker itself is being torn down
            running.uncancel_all()
            return self._interrupted(running)
        except StaleAttempt:
            return ("lost", None)
        except Exception as exc:
            return ("error", exc)
        finally:
            running.in_task_code = False
            if deadline is not None:
                deadline.cancel()
        if running.interrupted:  # the code swallowed our cancel and returned
            running.uncancel_all()
            return self._interrupted(running)
        return ("ok", result)

    @staticmethod
    def _interrupted(running: Running) -> Outcome:
        if running.abandoned:
            return ("lost", None)
        return ("timeout", None) if running.timed_out else ("cancelled", None)

    async def _record(
        self, spec: TaskSpec | None, started: Started, delivery: Delivery, received: float, outcome: Outcome
    ) -> None:
        kind, value = outcome
        if kind == "lost":
            self.counters.lost += 1
            return
        job_id = started.job.id
        try:
            if kind == "invalid" or spec is None:
                await self._fail(started, delivery, spec, received, value)
            elif kind == "timeout":
                error = JobError("Timeout", f"ran longer than {spec.timeout_for(started.job.timeout)} s")
                await self._fail_or_retry(spec, started, delivery, received, error)
            elif kind == "cancelled":
                await self._end_cancelled(started, delivery, spec, received)
            elif kind == "error":
                await self._fail_or_retry(spec, started, delivery, received, failure_of(value), value)
            else:
                await self._succeed(spec, started, delivery, received, value)
        except StaleAttempt:
            self.counters.lost += 1
            log.warning("job %s: lost its lease before it could record its end", job_id)
        except (IllegalTransition, JobNotFound) as err:
            self.counters.lost += 1
            log.warning("job %s: its end was refused (%s); another actor ended it first", job_id, err)

    async def _end(
        self,
        started: Started,
        spec: TaskSpec | None,
        received: float,
        status: JobStatus,
        write: Callable[[int], Awaitable[None]],
    ) -> None:
        """Write the job's terminal state with ``write(retention)``, retried as every end is."""
        retention = self._retention(spec)
        counter, what = _ENDS[status]
        await self._persist(started.job.id, what, received, lambda: write(retention))
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)

    async def _end_cancelled(
        self, started: Started, delivery: Delivery, spec: TaskSpec | None, received: float
    ) -> None:
        await self._end(
            started, spec, received, JobStatus.CANCELLED, lambda r: self.store.cancelled(started, delivery, r)
        )

    async def _succeed(
        self, spec: TaskSpec, started: Started, delivery: Delivery, received: float, result: Any
    ) -> None:
        try:
            payload = _encode(result)
        except (TypeError, msgspec.EncodeError) as err:
            await self._fail(started, delivery, spec, received, JobError("BadResult", str(err)))
            return
        await self._end(
            started,
            spec,
            received,
            JobStatus.SUCCESS,
            lambda r: self.store.succeed(started, delivery, payload, r),
        )

    async def _fail_or_retry(
        self,
        spec: TaskSpec,
        started: Started,
        delivery: Delivery,
        received: float,
        error: JobError,
        exc: BaseException | None = None,
    ) -> None:
        if started.attempt <= spec.options.retries and retryable(exc):
            delay = retry_delay(spec.options, started.attempt)  # run_at: Redis TIME + delay, in the script
            log_failed_attempt(started, spec, error, exc, delay)
            await self._persist(
                started.job.id,
                "schedule its retry",
                received,
                lambda: self.store.retry(started, delivery, error, delay),
            )
            self.counters.retried += 1
            return
        await self._fail(started, delivery, spec, received, error, exc)

    async def _fail(
        self,
        started: Started,
        delivery: Delivery,
        spec: TaskSpec | None,
        received: float,
        error: JobError,
        exc: BaseException | None = None,
    ) -> None:
        log_failed_attempt(started, spec, error, exc)
        await self._end(
            started, spec, received, JobStatus.FAILURE, lambda r: self.store.fail(started, delivery, error, r)
        )

    def _retention(self, spec: TaskSpec | None) -> int:
        default = self.store.settings.retention_seconds
        return default if spec is None else spec.retention(default)


def retry_delay(options: TaskOptions, attempt: int, jitter: float | None = None) -> float:
    """Seconds from failed attempt ``attempt`` (1-based) to the next: ``backoff * 2**(attempt-1)``,
    at most ``backoff_max``, times a jitter in [0.5, 1] (random unless given).

    The exponent is capped, so a task with thousands of retries never overflows a float.
    """
    exponent = min(max(attempt - 1, 0), _MAX_BACKOFF_EXPONENT)
    delay = min(options.backoff_max, options.backoff * 2.0**exponent)
    return delay * (random.uniform(0.5, 1.0) if jitter is None else jitter)  # noqa: S311 - jitter, not crypto
