"""``Jobstream``: the public Python API, for apps that create and follow jobs from their own code.

::

    from broker import Jobstream

    async with Jobstream.from_env() as js:
        job = await js.submit("reports.build", {"customer": "acme"}, owner=user_id)
        job = await js.submit(build_report, Report(customer="acme"), owner=user_id)  # typed
        async for state in js.follow(job.id): ...
        done = await js.wait(job.id, timeout=600)

``submit`` checks what ``POST /jobs`` checks (:mod:`broker.validation`) and raises the same
typed errors; every read and change takes an ``owner`` (None: an admin's view of everyone's).
Following goes through one event hub per ``Jobstream`` (one pub/sub connection, no HTTP).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack, overload

import msgspec

from broker.connection import resilient_options
from broker.errors import JobstreamError
from broker.listing import Page
from broker.models import Job, JobStatus
from broker.queues import ensure_groups
from broker.registry import JobContext, TaskRegistry, TaskSpec, load_task_modules, registry
from broker.scripts import RecordExtras
from broker.settings import Settings, load_settings
from broker.store import JobStore
from broker.topology import RedisClient, open_redis
from broker.validation import (
    both_given,
    check_callback_url,
    check_delay,
    check_labels,
    check_run_at,
    check_timeout,
    validated_input,
)
from hub.event_hub import EventHub

In = TypeVar("In")


class JobOptions(TypedDict, total=False):
    """What :meth:`Jobstream.submit` (and a task's ``submit``/``kiq``) take beside the input.

    ``idempotency_key``: a replayed key returns the job it first created. ``delay`` (seconds)
    or ``run_at`` (an aware datetime) delays the start. ``timeout`` (seconds, at most the
    task's own) limits this job's run instead of the task's. ``labels``
    (:data:`broker.validation.Labels`) are stored on the job and filter :meth:`Jobstream.list`.
    ``created_by`` records the service that creates the job for its owner (the job is the
    owner's). ``callback_url`` (a host on ``JOBSTREAM_WEBHOOK_ALLOWED_HOSTS``) is sent a
    signed completion webhook once the job ends.
    """

    idempotency_key: str | None
    delay: float | None
    run_at: datetime | None
    timeout: float | None
    labels: Mapping[str, str] | None
    created_by: str | None
    callback_url: str | None


@dataclass(frozen=True, slots=True)
class Submitted:
    """What :meth:`Jobstream.submit_json` did: the job, and whether it is new (False: the
    job an earlier submit with the same ``idempotency_key`` created)."""

    job: Job
    created: bool


class JobFailed(JobstreamError):
    """``result`` of a job that ended FAILURE or CANCELLED; ``job`` holds its error."""

    def __init__(self, job: Job) -> None:
        message = job.error.message if job.error else job.status.value
        super().__init__(f"job {job.id} ended {job.status}: {message}")
        self.job = job


class MalformedInput(JobstreamError):
    """:meth:`Jobstream.submit_json` was given input that is not JSON text (or not UTF-8)."""


class JobNotDone(JobstreamError):
    """``result`` of a job that is still PENDING or PROCESSING; ``job`` is its current state."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.status}; it has no result yet")
        self.job = job


class Jobstream:
    """Create, read, cancel and follow jobs in one Redis, as the HTTP API does."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        tasks: TaskRegistry = registry,
        *,
        store: JobStore | None = None,
        hub: EventHub | None = None,
    ) -> None:
        """Use ``redis`` (not closed on exit unless :meth:`from_settings` opened it).

        An app that already has a ``store`` on this client, or a started event ``hub``, passes
        them so there is one of each per process; a hub given here is the app's to stop.
        """
        self.redis = redis
        self.settings = settings
        self.tasks = tasks
        self.store = store if store is not None else JobStore(redis, settings)
        self._hub = hub
        self._owns_hub = hub is None
        self._hub_lock = asyncio.Lock()
        self._owns_redis = False

    @classmethod
    def from_settings(cls, settings: Settings, tasks: TaskRegistry = registry) -> Jobstream:
        """A client of ``settings.redis_url`` that loads ``settings.task_modules`` (closed on exit)."""
        load_task_modules(settings.task_modules)
        js = cls(open_redis(settings.topology, **resilient_options()), settings, tasks)
        js._owns_redis = True
        return js

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Jobstream:
        """:meth:`from_settings` with the ``JOBSTREAM_*`` environment (plus ``overrides``)."""
        return cls.from_settings(load_settings(environ, **overrides))

    async def __aenter__(self) -> Self:
        """:meth:`prepare`, for ``async with``."""
        await self.prepare()
        return self

    async def prepare(self) -> None:
        """Load the scripts and make sure every queue's consumer group exists."""
        await self.store.scripts.load_all(self.redis)
        await ensure_groups(self.redis, self.store.keys, self.tasks.queues(self.settings.default_queue))

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the event hub (if following started it) and close Redis if this opened it."""
        if self._hub is not None and self._owns_hub:
            await self._hub.stop()
            self._hub = None
        if self._owns_redis:
            await self.redis.aclose()

    # -- creating --------------------------------------------------------------------------

    @overload
    async def submit(
        self,
        task: Callable[[JobContext, In], Awaitable[Any]],
        input: In,
        *,
        owner: str,
        **options: Unpack[JobOptions],
    ) -> Job: ...

    @overload
    async def submit(
        self, task: str, input: Any = None, *, owner: str, **options: Unpack[JobOptions]
    ) -> Job: ...

    async def submit(
        self,
        task: str | Callable[[JobContext, Any], Awaitable[Any]],
        input: Any = None,
        *,
        owner: str,
        **options: Unpack[JobOptions],
    ) -> Job:
        """Create and queue a job for ``owner``: a task name with JSON-able input (a dict), or the
        task function with its typed input; ``options`` are :class:`JobOptions`.

        Raises ``UnknownTask``, ``InvalidInput``, ``InvalidSchedule``, ``InvalidOption``,
        ``InvalidCallback``, ``QuotaExceeded`` or ``IdempotencyConflict``; a replayed
        ``idempotency_key`` returns the first job. With ``create_replicas`` set, ``NotReplicated``
        when too few replicas confirm it in time (submit again with the same idempotency key).
        """
        raw = msgspec.json.encode({} if input is None else input)
        submitted = await self._create(self._spec(task), raw, owner, options)
        return submitted.job

    async def submit_json(
        self, task: str, input_json: bytes, *, owner: str, **options: Unpack[JobOptions]
    ) -> Submitted:
        """:meth:`submit` for input that is already JSON text (``POST /jobs`` passes its
        body's ``input`` as received), telling a new job from an idempotent replay.

        Raises what :meth:`submit` raises, and ``MalformedInput`` for text that is not JSON.
        """
        return await self._create(self.tasks.get(task), input_json, owner, options)

    async def _create(self, spec: TaskSpec, raw: bytes, owner: str, options: JobOptions) -> Submitted:
        callback_url = options.get("callback_url")
        if callback_url is not None:
            check_callback_url(callback_url, self.settings)
        try:
            input_json = validated_input(spec, raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            raise MalformedInput(str(err)) from None
        extras = _record_extras(spec, owner, options)
        run_at_ms, delay_ms = await self._due(options.get("delay"), options.get("run_at"))
        job, created = await self.store.create(
            task=spec.name,
            input_json=input_json,
            owner=owner,
            queue=spec.options.queue or self.settings.default_queue,
            idempotency_key=options.get("idempotency_key"),
            run_at_ms=run_at_ms,
            delay_ms=delay_ms,
            extras=extras,
        )
        return Submitted(job, created)

    def _spec(self, task: str | Callable[[JobContext, Any], Awaitable[Any]]) -> TaskSpec:
        if isinstance(task, str):
            return self.tasks.get(task)
        return self.tasks.spec_of(task)

    async def _due(self, delay: float | None, run_at: datetime | None) -> tuple[int, int]:
        if delay is not None and run_at is not None:
            raise both_given()
        if delay is not None:
            return 0, check_delay(delay, self.settings, "delay")
        if run_at is not None:
            seconds, micros = await self.redis.time()
            return check_run_at(run_at, int(seconds) * 1000 + int(micros) // 1000, self.settings, "run_at"), 0
        return 0, 0

    # -- reading and cancelling ----------------------------------------------------------------

    async def get(self, job_id: str, owner: str | None = None, *, fetch: bool = True) -> Job:
        """The job; ``JobNotFound`` if it does not exist (or expired) or is not ``owner``'s.

        A finished job of a ``keep_until_fetched`` task counts as fetched (its record then
        expires after ``fetched_grace_seconds``) unless ``fetch`` is False: a look that must
        leave it kept, say an operator's.
        """
        job = await self.store.get(job_id, owner)
        return await self.store.mark_fetched(job) if fetch else job

    async def mark_fetched(self, job: Job) -> Job:
        """Count ``job`` (read with ``fetch=False``, or followed to its end) as fetched; see
        :meth:`get`. Costs nothing for a job not kept until fetched."""
        return await self.store.mark_fetched(job)

    async def list(
        self,
        owner: str | None,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """The owner's jobs (None: every owner's, an admin's view), newest first (creation
        order); pass ``page.cursor`` for the next page.

        ``labels`` keeps the jobs carrying all of these labels. Listing never counts as a fetch.
        """
        return await self.store.list(
            owner, status=status, task=task, labels=labels, limit=limit, cursor=cursor
        )

    async def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel: CANCELLED at once if PENDING; PROCESSING with ``cancel_requested`` until its
        worker stops it. ``IllegalTransition`` if it already ended."""
        return await self.store.cancel(
            job_id, owner, lambda task: self.tasks.retention(task, self.settings.retention_seconds)
        )

    async def result(self, job_id: str, owner: str | None = None) -> Any:
        """The result of a job that ended SUCCESS, decoded from JSON; ``JobFailed`` if it ended
        FAILURE or CANCELLED, ``JobNotDone`` while it is active (see :meth:`wait`)."""
        return _result_of(await self.get(job_id, owner))

    # -- following -------------------------------------------------------------------------------

    async def follow(self, job_id: str, owner: str | None = None) -> AsyncIterator[Job]:
        """Every new state of the job, from its current one to its terminal one (a slow reader
        skips to the newest state, never back). ``JobNotFound`` as :meth:`get`."""
        hub = await self._events()
        async with hub.listen_job(job_id) as feed:
            job = await feed.snapshot(owner)
            if job is None:
                await self.get(job_id, owner)  # raises JobNotFound
                return
            yield job
            if job.terminal:
                return
            async for job in feed:
                yield job

    async def wait(self, job_id: str, timeout: float | None = None, owner: str | None = None) -> Job:
        """The job once it has ended (a fetch, as :meth:`get`); ``TimeoutError`` if it has not
        within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            async for job in self.follow(job_id, owner):
                if job.terminal:
                    return await self.store.mark_fetched(job)
        return await self.get(job_id, owner)  # the hub stopped before the end: read it

    async def _events(self) -> EventHub:
        async with self._hub_lock:
            if self._hub is None:
                hub = EventHub(self.store, client_name=f"jobstream-api:{os.getpid()}")
                await hub.start()
                self._hub = hub
            return self._hub


def _record_extras(spec: TaskSpec, owner: str, options: JobOptions) -> RecordExtras:
    """The checked per-job options, in the form the record keeps them."""
    timeout = check_timeout(spec, options.get("timeout"))
    labels = check_labels(options.get("labels"))
    created_by = options.get("created_by")
    return RecordExtras(
        timeout=None if timeout is None else repr(timeout),
        labels=msgspec.json.encode(labels).decode() if labels else None,
        created_by=created_by if created_by != owner else None,
        keep_until_fetched=spec.options.keep_until_fetched,
        callback_url=options.get("callback_url"),
    )


def _result_of(job: Job) -> Any:
    if job.status is JobStatus.SUCCESS:
        return msgspec.json.decode(job.result)
    if job.terminal:
        raise JobFailed(job)
    raise JobNotDone(job)
