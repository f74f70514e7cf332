"""Runs one delivered job: start it, run the task under its timeout and cancel handle, and
write the final state (which also acknowledges the entry), or schedule a retry."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from broker.errors import JobstreamError, StaleAttempt, UnknownTask
from broker.models import JobError
from broker.store import Delivery, JobStore, Started
from broker.tasks import JobContext, TaskRegistry, TaskSpec

log = logging.getLogger("jobstream.worker")
_encode = msgspec.json.Encoder().encode


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

    def interrupt(self) -> None:
        """Cancel the task's code if it is running now (otherwise the flags say enough)."""
        if self.in_task_code and not self.interrupted:
            self.interrupted = True
            self.task.cancel()


Outcome = tuple[str, Any]
"""("ok", result) | ("error", exception) | ("timeout", None) | ("cancelled", None) | ("lost", None)"""


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

    async def run(self, delivery: Delivery) -> None:
        """Run the job a delivery names, from start to its final state."""
        if delivery.job_id in self.running:
            return  # already running here: the entry came back to us, leave it be
        started = await self.store.start(delivery, self.consumer)
        if started is None:
            return
        self.counters.started += 1
        try:
            spec = self.registry.get(started.job.type)
        except UnknownTask:
            await self._fail(started, delivery, None, JobError("UnknownTask", started.job.type))
            return
        if started.job.cancel_requested:
            await self._end_cancelled(started, delivery, spec)
            return
        await self._run_started(spec, started, delivery)

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
            running.abandoned = True
            running.interrupt()

    async def _run_started(self, spec: TaskSpec, started: Started, delivery: Delivery) -> None:
        try:
            data = spec.decode_input(started.job.input)
        except msgspec.ValidationError as err:
            await self._fail(started, delivery, spec, JobError("InvalidInput", str(err)))
            return
        task = asyncio.current_task()
        assert task is not None
        running = Running(task, delivery)
        running.ctx = ctx = JobContext(self.store, started, running.interrupt)
        self.running[started.job.id] = running
        if self.early_cancels.pop(started.job.id, None) is not None:
            ctx.request_cancel()
        try:
            outcome = await self._call(spec, ctx, data, running)
        finally:
            del self.running[started.job.id]
            running.ctx = None  # ctx holds running.interrupt: unlinked, both go by refcount, not GC
        if ctx.cancelled and outcome[0] in ("ok", "error"):
            outcome = ("cancelled", None)  # it saw ctx.cancelled and returned (or gave up) early
        await self._record(spec, started, delivery, outcome)

    async def _call(  # noqa: PLR0911 - one return per way a task can end
        self, spec: TaskSpec, ctx: JobContext, data: Any, running: Running
    ) -> Outcome:
        """Run the task's function under its timeout; say how it ended."""
        if ctx.cancelled:
            return ("cancelled", None)
        deadline = asyncio.timeout(spec.options.timeout)
        running.in_task_code = True
        try:
            async with deadline:
                result = await spec.fn(ctx, data)
        except asyncio.CancelledError:
            if not running.interrupted:
                raise  # the worker itself is being torn down
            running.task.uncancel()
            return self._interrupted(running)
        except TimeoutError as exc:
            return ("timeout", None) if deadline.expired() else ("error", exc)
        except StaleAttempt:
            return ("lost", None)
        except Exception as exc:
            return ("error", exc)
        finally:
            running.in_task_code = False
        if running.interrupted:  # the code swallowed our cancel and returned
            running.task.uncancel()
            return self._interrupted(running)
        return ("timeout", None) if deadline.expired() else ("ok", result)

    @staticmethod
    def _interrupted(running: Running) -> Outcome:
        return ("lost", None) if running.abandoned else ("cancelled", None)

    async def _record(self, spec: TaskSpec, started: Started, delivery: Delivery, outcome: Outcome) -> None:
        kind, value = outcome
        try:
            if kind == "lost":
                self.counters.lost += 1
            elif kind == "timeout":
                error = JobError("Timeout", f"ran longer than {spec.options.timeout} s")
                await self._fail_or_retry(spec, started, delivery, error)
            elif kind == "cancelled":
                await self._end_cancelled(started, delivery, spec)
            elif kind == "error":
                await self._fail_or_retry(spec, started, delivery, _error_of(value))
            else:
                await self._succeed(spec, started, delivery, value)
        except StaleAttempt:
            self.counters.lost += 1
            log.warning("job %s: lost its lease before it could record its end", started.job.id)

    async def _succeed(self, spec: TaskSpec, started: Started, delivery: Delivery, result: Any) -> None:
        try:
            payload = _encode(result)
        except (TypeError, msgspec.EncodeError) as err:
            await self._fail(started, delivery, spec, JobError("BadResult", str(err)))
            return
        await self.store.succeed(started, delivery, payload, self._retention(spec))
        self.counters.succeeded += 1

    async def _fail_or_retry(
        self, spec: TaskSpec, started: Started, delivery: Delivery, error: JobError
    ) -> None:
        options = spec.options
        if started.attempt <= options.retries:
            delay = min(options.backoff_max, options.backoff * 2 ** (started.attempt - 1))
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
            run_at_ms = int((time.time() + delay) * 1000)
            await self.store.retry(started, delivery, error, run_at_ms)
            self.counters.retried += 1
            return
        await self._fail(started, delivery, spec, error)

    async def _fail(
        self, started: Started, delivery: Delivery, spec: TaskSpec | None, error: JobError
    ) -> None:
        await self.store.fail(started, delivery, error, self._retention(spec))
        self.counters.failed += 1

    async def _end_cancelled(self, started: Started, delivery: Delivery, spec: TaskSpec) -> None:
        await self.store.cancelled(started, delivery, self._retention(spec))
        self.counters.cancelled += 1

    def _retention(self, spec: TaskSpec | None) -> int:
        default = self.store.settings.retention_seconds
        return default if spec is None else self.registry.retention(spec.name, default)


def _error_of(exc: BaseException) -> JobError:
    if isinstance(exc, JobstreamError):
        return JobError(type(exc).__name__, str(exc))
    return JobError(type(exc).__name__, str(exc) or repr(exc))
