"""What ``@task`` returns: the task function, plus ``submit`` and ``kiq`` to start it as a job.

::

    @task("reports.build")
    async def build_report(ctx: JobContext, data: Report) -> Summary: ...

    job = await build_report.submit(Report(customer="acme"), owner=user_id)
    run = await build_report.kiq(Report(customer="acme"), owner=user_id)  # taskiq's idiom
    summary: Summary = await run.wait_result(timeout=600)

Both go through a :class:`broker.Jobstream`: the one passed as ``client=``, else the process
default (:mod:`broker.default_client`: the app's own if it set one, else one made from the
``JOBSTREAM_*`` environment on first use). A task object is still the function: workers and
tests call ``await build_report(ctx, data)`` as before.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

import msgspec

from broker.errors import JobstreamError, UnknownTask

if TYPE_CHECKING:
    from broker.api import JobOptions, Jobstream
    from broker.models import Job
    from broker.registry import JobContext, TaskSpec

In = TypeVar("In")
Out = TypeVar("Out")


class OwnerRequired(JobstreamError, ValueError):
    """``submit`` or ``kiq`` was given no owner: every job belongs to someone."""

    def __init__(self, task: str) -> None:
        super().__init__(
            f"{task}: pass owner=<the id of the user this job is for>; every job has an owner, "
            "who alone may read, follow and cancel it"
        )
        self.task = task


class NotAJobstreamTask(UnknownTask):
    """A plain taskiq task (taskiq's ``@broker.task``) was kicked on the jobstream broker."""

    def __init__(self, task: str) -> None:
        super().__init__(
            f"task {task!r} was declared with taskiq's @broker.task, which the jobstream broker "
            'does not run: declare it with jobstream\'s @task("<name>") (from broker import task) '
            "and start it with await <fn>.submit(input, owner=...) or await <fn>.kiq(input, owner=...)"
        )
        self.task = task


class Task(Generic[In, Out]):
    """A registered task, typed by its input ``In`` and result ``Out``.

    Calling it runs the function in this process (``await fn(ctx, data)``); :meth:`submit`
    and :meth:`kiq` create a tracked job that a worker runs.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        functools.update_wrapper(self, spec.fn)

    @property
    def name(self) -> str:
        """The task's name (``reports.build``)."""
        return self.spec.name

    @property
    def task_name(self) -> str:
        """:attr:`name`, under taskiq's attribute name."""
        return self.spec.name

    def __call__(self, ctx: JobContext, data: In) -> Awaitable[Out]:
        """Run the task's function here, as the worker does."""
        result: Awaitable[Out] = self.spec.fn(ctx, data)
        return result

    def __repr__(self) -> str:
        return f"<Task {self.spec.name}>"

    async def submit(
        self, input: In, *, owner: str, client: Jobstream | None = None, **options: Unpack[JobOptions]
    ) -> Job:
        """Create and queue a job of this task for ``owner`` (:meth:`Jobstream.submit`, with the
        same :class:`~broker.api.JobOptions`).

        Raises ``OwnerRequired`` for an empty owner, and what ``Jobstream.submit`` raises.
        """
        if not owner or not isinstance(owner, str):
            raise OwnerRequired(self.spec.name)
        jobs = client if client is not None else _default()
        return await jobs.submit(self, input, owner=owner, **options)

    async def kiq(
        self, input: In, *, owner: str, client: Jobstream | None = None, **options: Unpack[JobOptions]
    ) -> JobHandle[Out]:
        """:meth:`submit`, answering a handle shaped like taskiq's ``AsyncTaskiqTask``."""
        jobs = client if client is not None else _default()
        job = await self.submit(input, owner=owner, client=jobs, **options)
        return JobHandle(job, jobs, self.spec.output_type)


class JobHandle(Generic[Out]):
    """A job started by :meth:`Task.kiq`, read as taskiq reads an ``AsyncTaskiqTask``.

    ``task_id`` (and ``job_id``) is the job's id, for ``GET /jobs/{id}`` and its streams.
    Unlike taskiq's, :meth:`wait_result` returns the result itself, typed, and raises the
    job's failure (``JobFailed``, holding the job and its error) instead of wrapping it; it
    follows the job's events rather than polling, and raises ``TimeoutError`` on timeout.
    """

    def __init__(self, job: Job, client: Jobstream, output_type: Any) -> None:
        self.job = job
        """The job as created (PENDING, or the earlier job an ``idempotency_key`` named)."""
        self.task_id = job.id
        self.client = client
        self._output_type = output_type

    @property
    def job_id(self) -> str:
        """:attr:`task_id`, under jobstream's name."""
        return self.task_id

    async def is_ready(self) -> bool:
        """Whether the job has ended (SUCCESS, FAILURE or CANCELLED)."""
        return (await self.client.get(self.task_id, self.job.owner)).terminal

    async def get_result(self) -> Out:
        """The result of the ended job; ``JobFailed`` if it failed or was cancelled,
        ``JobNotDone`` while it runs."""
        value = await self.client.result(self.task_id, self.job.owner)
        result: Out = msgspec.convert(value, self._output_type)
        return result

    async def wait_result(self, timeout: float | None = None) -> Out:
        """Wait for the job to end, then :meth:`get_result`. ``timeout`` in seconds (None, or a
        negative number as in taskiq, waits as long as it takes); ``TimeoutError`` past it."""
        limit = None if timeout is None or timeout < 0 else timeout
        await self.client.wait(self.task_id, timeout=limit, owner=self.job.owner)
        return await self.get_result()

    async def cancel(self) -> Job:
        """Cancel the job (:meth:`Jobstream.cancel`)."""
        return await self.client.cancel(self.task_id, self.job.owner)

    def __repr__(self) -> str:
        return f"<JobHandle {self.job.type} {self.task_id}>"


def _default() -> Jobstream:
    # Imported here, not at the top: broker.api imports the registry, which imports this module.
    from broker.default_client import default_jobstream

    return default_jobstream()
