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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from broker.connection import REDIS_FAULTS, RedisWatch, until_redis_answers
from broker.errors import IllegalTransition, JobNotFound, JobstreamError, StaleAttempt
from broker.log_format import enter_job, leave_job
from broker.models import JobError, JobStatus
from broker.registry import JobContext, TaskRegistry, TaskSpec
from broker.store import Delivery, JobStore, Started
from workers.failures import failure_of, log_failed_attempt, retry_delay, retryable
from workers.worker_metrics import Counters, JobMetrics

log = logging.getLogger("jobstream.worker")
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")
_RECANCEL_SECONDS = 0.25
_ENDS = {  # the outcome each end counts as, and what its write is called in a log line
    JobStatus.SUCCESS: ("succeeded", "record its SUCCESS"),
    JobStatus.FAILURE: ("failed", "record its FAILURE"),
    JobStatus.CANCELLED: ("cancelled", "record its CANCELLED"),
}


class LeaseLapsed(JobstreamError):
    """A write could not reach Redis before the job's lease lapsed; the job will run again."""


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
    metrics: JobMetrics = field(default_factory=JobMetrics)
    # Called whenever a job joins or leaves ``running`` (the lease loop then beats soon).
    on_running_changed: Callable[[], None] = field(default=lambda: None)
    # Cancel requests that arrived between a job's start script and its registration here.
    early_cancels: dict[str, float] = field(default_factory=dict)
    watch: RedisWatch = field(default_factory=lambda: RedisWatch(log, "worker"))
    # When the last renewal of every held entry that went through began (monotonic).
    leases_renewed_at: float = 0.0
    starts: int = 0

    @property
    def counters(self) -> Counters:
        """What this worker has done (its heartbeat carries them)."""
        return self.metrics.counters

    async def run(self, delivery: Delivery) -> None:
        """Run the job a delivery names, from start to its final state."""
        if delivery.job_id in self.running:
            return  # already running here: the entry came back to us, leave it be
        received = time.monotonic()
        self.starts += 1
        token = f"{self.consumer}/{self.starts}"  # unique: consumer names are
        try:
            start = lambda: self.store.start(delivery, self.consumer, token)  # noqa: E731
            started = await self._persist(delivery.job_id, "start it", received, start)
        except LeaseLapsed:
            self.metrics.lost_before_start()
            return
        if started is None:
            return
        began = time.monotonic()
        job = started.job
        self.metrics.started(job.type, started.waited_ms)
        logged = enter_job(job.id, job.type, job.owner, started.attempt)
        try:
            ended = await self._run_started(started, delivery, received)
        except LeaseLapsed:
            ended = "lost"
        finally:
            leave_job(logged)
        self.metrics.ended(job.type, ended, time.monotonic() - began)

    async def _run_started(self, started: Started, delivery: Delivery, received: float) -> str:
        """Run a started job and record its end; answers how the attempt ended (an outcome of
        :data:`workers.worker_metrics.OUTCOMES`)."""
        job = started.job
        spec = self.registry.get(job.type) if job.type in self.registry else None
        if spec is None:
            outcome: Outcome = ("invalid", JobError("UnknownTask", job.type))
        else:
            outcome = await self._execute(spec, started, delivery)
        return await self._record(spec, started, delivery, received, outcome)

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
        self.on_running_changed()
        if self.early_cancels.pop(started.job.id, None) is not None:
            ctx.request_cancel()
        try:
            outcome = await self._call(spec, ctx, data, running, spec.timeout_for(started.job.timeout))
        finally:
            del self.running[started.job.id]
            self.on_running_changed()
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
    ) -> str:
        """Write how the attempt ended; answers its outcome (``lost`` when the write was refused)."""
        if outcome[0] == "lost":
            return "lost"
        try:
            return await self._write_end(spec, started, delivery, received, outcome)
        except StaleAttempt:
            log.warning("job %s: lost its lease before it could record its end", started.job.id)
        except (IllegalTransition, JobNotFound) as err:
            log.warning("job %s: its end was refused (%s); another actor ended it first", started.job.id, err)
        return "lost"

    async def _write_end(
        self, spec: TaskSpec | None, started: Started, delivery: Delivery, received: float, outcome: Outcome
    ) -> str:
        kind, value = outcome
        if kind == "invalid" or spec is None:
            return await self._fail(started, delivery, spec, received, value)
        if kind == "timeout":
            error = JobError("Timeout", f"ran longer than {spec.timeout_for(started.job.timeout)} s")
            return await self._fail_or_retry(spec, started, delivery, received, error)
        if kind == "cancelled":
            return await self._end_cancelled(started, delivery, spec, received)
        if kind == "error":
            return await self._fail_or_retry(spec, started, delivery, received, failure_of(value), value)
        return await self._succeed(spec, started, delivery, received, value)

    async def _end(
        self,
        started: Started,
        spec: TaskSpec | None,
        received: float,
        status: JobStatus,
        write: Callable[[int], Awaitable[None]],
    ) -> str:
        """Write the job's terminal state with ``write(retention)``, retried as every end is."""
        retention = self._retention(spec)
        ended, what = _ENDS[status]
        await self._persist(started.job.id, what, received, lambda: write(retention))
        return ended

    async def _end_cancelled(
        self, started: Started, delivery: Delivery, spec: TaskSpec | None, received: float
    ) -> str:
        return await self._end(
            started, spec, received, JobStatus.CANCELLED, lambda r: self.store.cancelled(started, delivery, r)
        )

    async def _succeed(
        self, spec: TaskSpec, started: Started, delivery: Delivery, received: float, result: Any
    ) -> str:
        try:
            payload = _encode(result)
        except (TypeError, msgspec.EncodeError) as err:
            return await self._fail(started, delivery, spec, received, JobError("BadResult", str(err)))
        return await self._end(
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
    ) -> str:
        if started.attempt <= spec.options.retries and retryable(exc):
            delay = retry_delay(spec.options, started.attempt)  # run_at: Redis TIME + delay, in the script
            log_failed_attempt(started, spec, error, exc, delay)
            await self._persist(
                started.job.id,
                "schedule its retry",
                received,
                lambda: self.store.retry(started, delivery, error, delay),
            )
            return "retried"
        return await self._fail(started, delivery, spec, received, error, exc)

    async def _fail(
        self,
        started: Started,
        delivery: Delivery,
        spec: TaskSpec | None,
        received: float,
        error: JobError,
        exc: BaseException | None = None,
    ) -> str:
        log_failed_attempt(started, spec, error, exc)
        return await self._end(
            started, spec, received, JobStatus.FAILURE, lambda r: self.store.fail(started, delivery, error, r)
        )

    def _retention(self, spec: TaskSpec | None) -> int:
        default = self.store.settings.retention_seconds
        return default if spec is None else spec.retention(default)
