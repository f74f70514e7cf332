"""The task decorator: typed msgspec input and output, per-task options, and ``JobContext``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

import msgspec

from broker.connection import REDIS_FAULTS
from broker.errors import IllegalTransition, JobNotFound, StaleAttempt, UnknownTask
from broker.task_object import Task

if TYPE_CHECKING:
    from broker.store import JobStore, Started

log = logging.getLogger("jobstream.worker")

TaskFn = Callable[["JobContext", Any], Awaitable[Any]]
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How jobs of one task are queued, limited, retried and kept."""

    queue: str | None = None
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    retention: int | None = None
    keep_until_fetched: bool = False
    """Once terminal, keep a job's record only until its result is first fetched (then
    ``fetched_grace_seconds`` more), or its retention if it is never fetched."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A registered task: its function, its typed input and output, and its options."""

    name: str
    fn: TaskFn
    input_type: Any
    output_type: Any
    options: TaskOptions
    decoder: msgspec.json.Decoder[Any] = field(repr=False)

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the task's input, as ``GET /tasks`` shows it."""
        return msgspec.json.schema(self.input_type)

    def output_schema(self) -> dict[str, Any]:
        """The JSON schema of the task's result."""
        return msgspec.json.schema(self.output_type)

    def decode_input(self, raw: bytes) -> Any:
        """Validate raw JSON input (raises ``msgspec.ValidationError`` naming the bad field)."""
        return self.decoder.decode(raw)

    def retention(self, default: int) -> int:
        """Seconds a finished job of this task is kept: its ``retention`` option, else ``default``
        (``JOBSTREAM_RETENTION_SECONDS``). 0 is a value, not "unset": the record is deleted as
        soon as its final state is published. The one place this rule lives."""
        return default if self.options.retention is None else self.options.retention

    def timeout_for(self, job_timeout: float | None) -> float | None:
        """Seconds a job of this task may run: its own ``timeout`` when it has one (created at
        most the task's), never more than the task's ``timeout`` option; None: no limit."""
        limit = self.options.timeout
        if job_timeout is None:
            return limit
        return job_timeout if limit is None else min(job_timeout, limit)


class TaskRegistry:
    """Task name -> spec. Workers run what is here; the web app validates against it."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}

    def task(
        self,
        name: str,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        retention: int | None = None,
        keep_until_fetched: bool = False,
    ) -> Callable[[Callable[[JobContext, In], Awaitable[Out]]], Task[In, Out]]:
        """Register ``async def fn(ctx: JobContext, data: In) -> Out`` as task ``name``; the
        decorator returns a :class:`Task` (callable as ``fn``, plus ``submit`` and ``kiq``).

        ``keep_until_fetched``: a finished job's record goes once its result has been read
        (see :attr:`TaskOptions.keep_until_fetched`).
        """
        if retention is not None and retention < 0:
            raise ValueError(f"task {name}: retention must be 0 (not kept) or more seconds")
        options = TaskOptions(queue, timeout, retries, backoff, backoff_max, retention, keep_until_fetched)

        def register(fn: Callable[[JobContext, In], Awaitable[Out]]) -> Task[In, Out]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"task {name}: {fn.__qualname__} must be an async function")
            input_type, output_type = _signature_types(fn)
            if name in self._tasks and self._tasks[name].fn is not fn:
                raise ValueError(f"task {name} is registered twice")
            spec = TaskSpec(name, fn, input_type, output_type, options, msgspec.json.Decoder(input_type))
            self._tasks[name] = spec
            return Task(spec)

        return register

    def get(self, name: str) -> TaskSpec:
        """The spec of task ``name``; raises :class:`UnknownTask`."""
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name) from None

    def spec_of(self, fn: Callable[..., Any]) -> TaskSpec:
        """The spec of the task ``fn`` (a :class:`Task`, or its function) registered here;
        raises :class:`UnknownTask`."""
        if isinstance(fn, Task):
            spec = self._tasks.get(fn.name)
            if spec is not None and spec.fn is fn.spec.fn:
                return spec
            raise UnknownTask(fn.name)
        for spec in self._tasks.values():
            if spec.fn is fn:
                return spec
        raise UnknownTask(getattr(fn, "__qualname__", repr(fn)))

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(sorted(self._tasks.values(), key=lambda spec: spec.name))

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def retention(self, name: str, default: int) -> int:
        """Seconds a finished job of task ``name`` is kept (:meth:`TaskSpec.retention`);
        ``default`` for a task not registered here."""
        spec = self._tasks.get(name)
        return default if spec is None else spec.retention(default)

    def queues(self, default: str) -> set[str]:
        """Every queue a registered task uses (``default`` for those that name none)."""
        return {spec.options.queue or default for spec in self._tasks.values()} | {default}


def _signature_types(fn: TaskFn) -> tuple[Any, Any]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"{fn.__qualname__} must take (ctx: JobContext, data: <msgspec type>)")
    return hints.get(params[1], Any), hints.get("return", Any)


registry = TaskRegistry()
"""The default registry that :func:`task` registers into."""

task = registry.task


def load_task_modules(modules: str) -> None:
    """Import the comma-separated task modules so their tasks register themselves."""
    for name in modules.split(","):
        if name.strip():
            importlib.import_module(name.strip())


class JobContext:
    """What a running task knows about its job, and how it reports back.

    ``await ctx.progress(40, "Parsing")`` records progress (and an ETA, estimated from
    the rate so far unless given); ``ctx.cancelled`` turns true when a cancel was asked.

    Progress is best effort: a write Redis cannot take never reaches the task's code.
    The newest values are kept and written by :meth:`flush` once Redis answers (the
    worker's lease loop calls it), and until then ``progress`` returns at once. A write
    refused because this attempt no longer holds the job (its lease was taken over, the
    job was ended for it) stops the task's code, as a cancel does, without a final write.
    """

    __slots__ = (
        "_cancel",
        "_lose",
        "_pending",
        "_started_at",
        "_store",
        "attempt",
        "cancelled",
        "job_id",
        "owner",
        "task",
        "unsaved_since",
    )

    def __init__(
        self, store: JobStore, started: Started, cancel: Callable[[], None], lose: Callable[[], None]
    ) -> None:
        self._store = store
        self._cancel = cancel
        self._lose = lose
        self._started_at = time.monotonic()
        self._pending: tuple[float, str | None, float | None] | None = None
        self.job_id = started.job.id
        self.owner = started.job.owner
        self.task = started.job.type
        self.attempt = started.attempt
        self.cancelled = False
        self.unsaved_since: float | None = None
        """When progress writes started failing (monotonic); None while they go through."""

    async def progress(
        self, percent: float, message: str | None = None, *, eta_seconds: float | None = None
    ) -> None:
        """Record ``percent`` (0-100) and the current step; a requested cancel stops the task."""
        percent = min(100.0, max(0.0, float(percent)))
        if eta_seconds is None and percent > 0:
            elapsed = time.monotonic() - self._started_at
            eta_seconds = elapsed * (100.0 - percent) / percent
        self._pending = (percent, message, eta_seconds)
        if self.unsaved_since is None:
            await self.flush()

    async def flush(self) -> None:
        """Write the newest progress not yet written; keep it for later if Redis fails."""
        pending = self._pending
        if pending is None:
            return
        try:
            cancel_requested = await self._store.progress(self.job_id, self.attempt, *pending)
        except REDIS_FAULTS as err:
            if self.unsaved_since is None:
                self.unsaved_since = time.monotonic()
                log.debug(
                    "job %s: progress not saved (%s); the newest is written once Redis answers",
                    self.job_id,
                    err,
                )
            return
        except (StaleAttempt, JobNotFound, IllegalTransition) as err:
            log.warning(
                "job %s: attempt %d no longer holds the job (%s); stopping it", self.job_id, self.attempt, err
            )
            self._lose()
            await asyncio.sleep(0)  # let the interruption land here, at a clean point
            return
        if self._pending is pending:
            self._pending = None
        self.unsaved_since = None
        if cancel_requested:
            self.request_cancel()
            await asyncio.sleep(0)  # let the cancellation land here, at a clean point

    def request_cancel(self) -> None:
        """Mark the job cancelled and cancel its running code (called by the worker)."""
        if not self.cancelled:
            self.cancelled = True
            self._cancel()
