"""Task objects (what ``@task`` returns) on a real Redis, no worker: still the function, and
``submit``/``kiq`` create jobs through an explicit or a default ``Jobstream``; taskiq's own
``@broker.task`` on ``workers.app:broker`` is refused at ``kiq`` with one sentence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import msgspec
import pytest
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker

from broker import (
    JobContext,
    JobFailed,
    JobNotDone,
    JobStatus,
    Jobstream,
    NotAJobstreamTask,
    OwnerRequired,
    Task,
    UnknownTask,
    close_default_jobstream,
    default_jobstream,
    set_default_jobstream,
)
from broker.registry import TaskRegistry
from workers.job_broker import JobBroker
from workers.tasks.demo import NoopInput, SleepInput, noop, sleep

pytestmark = pytest.mark.timeout(60)

objects = TaskRegistry()


class Add(msgspec.Struct):
    a: int
    b: int


@objects.task("objects.add")
async def add(ctx: JobContext, data: Add) -> int:
    """Adds two numbers."""
    return data.a + data.b


@pytest.fixture
def environment(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test's Redis and prefix as the ``JOBSTREAM_*`` environment, and no default client
    left behind."""
    monkeypatch.setenv("JOBSTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("JOBSTREAM_PREFIX", prefix)
    monkeypatch.setenv("JOBSTREAM_TASK_MODULES", "workers.tasks")
    yield
    set_default_jobstream(None)


async def test_a_task_object_is_still_its_function() -> None:
    assert isinstance(add, Task)
    assert (add.name, add.task_name, add.__name__, add.__doc__) == (
        "objects.add",
        "objects.add",
        "add",
        "Adds two numbers.",
    )
    assert await add(cast(JobContext, None), Add(a=2, b=3)) == 5
    spec = objects.get("objects.add")
    assert objects.spec_of(add) is spec
    assert objects.spec_of(add.__wrapped__) is spec  # the bare function still names it
    assert spec.output_type is int
    with pytest.raises(UnknownTask):
        TaskRegistry().spec_of(add)  # a task object of another registry


async def test_submit_and_kiq_create_jobs_through_the_client_given(js: Jobstream) -> None:
    job = await sleep.submit(SleepInput(seconds=30, steps=2), owner="alice", client=js)
    assert (job.status, job.owner, job.type) == (JobStatus.PENDING, "alice", "demo.sleep")
    assert bytes(job.input) == b'{"seconds":30.0,"steps":2}'
    assert (await js.submit(sleep, SleepInput(seconds=1), owner="alice")).type == "demo.sleep"
    run = await sleep.kiq(SleepInput(seconds=30), owner="alice", client=js, idempotency_key="k")
    assert run.task_id == run.job_id == run.job.id != job.id
    again = await sleep.kiq(SleepInput(seconds=30), owner="alice", client=js, idempotency_key="k")
    assert again.task_id == run.task_id
    assert not await run.is_ready()
    with pytest.raises(JobNotDone):
        await run.get_result()
    with pytest.raises(TimeoutError):
        await run.wait_result(timeout=0.2)
    assert (await run.cancel()).status == JobStatus.CANCELLED
    assert await run.is_ready()
    with pytest.raises(JobFailed, match="CANCELLED"):
        await run.wait_result(timeout=5)


async def test_every_job_needs_an_owner(js: Jobstream) -> None:
    for owner in ("", None):
        with pytest.raises(OwnerRequired) as refused:
            await sleep.submit(SleepInput(), owner=cast(str, owner), client=js)
        assert str(refused.value) == (
            "demo.sleep: pass owner=<the id of the user this job is for>; every job has an owner, "
            "who alone may read, follow and cancel it"
        )
        with pytest.raises(OwnerRequired):
            await sleep.kiq(SleepInput(), owner=cast(str, owner), client=js)
    untyped: Any = sleep
    with pytest.raises(TypeError, match="owner"):
        await untyped.kiq(SleepInput(), client=js)
    assert await js.redis.keys(js.store.keys.job("*")) == []  # nothing was created


async def test_the_default_client_comes_from_the_environment(environment: None, js: Jobstream) -> None:
    job = await noop.submit(NoopInput(), owner="alice")
    made = default_jobstream()
    assert (await js.get(job.id, "alice")).type == "demo.noop"  # the test's Redis and prefix
    assert default_jobstream() is made  # one per process (and loop)
    await close_default_jobstream()
    assert default_jobstream() is not made  # made again on the next use
    await close_default_jobstream()


async def test_an_app_sets_its_own_client_as_the_default(environment: None, js: Jobstream) -> None:
    set_default_jobstream(js)
    run = await noop.kiq(NoopInput(), owner="alice")
    assert run.client is js
    await close_default_jobstream()  # forgets it; the app's own is the app's to close
    assert (await js.get(run.task_id, "alice")).status == JobStatus.PENDING


def test_a_default_made_here_is_made_again_for_a_new_event_loop(environment: None) -> None:
    async def use() -> Jobstream:
        return default_jobstream()

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first is not second
    asyncio.run(close_default_jobstream())


PLAIN_TASK_REFUSED = (
    "task 'tests.integration.test_task_objects:add_numbers' was declared with taskiq's @broker.task, "
    'which the jobstream broker does not run: declare it with jobstream\'s @task("<name>") '
    "(from broker import task) and start it with await <fn>.submit(input, owner=...) "
    "or await <fn>.kiq(input, owner=...)"
)


async def test_taskiqs_own_decorator_on_the_jobstream_broker_is_refused_at_kiq() -> None:
    from workers.app import broker  # what a taskiq user imports

    @broker.task
    async def add_numbers(a: int, b: int) -> int:
        return a + b

    assert await add_numbers(1, 2) == 3  # still the function
    with pytest.raises(NotAJobstreamTask) as refused:
        await add_numbers.kiq(1, 2)
    assert str(refused.value) == PLAIN_TASK_REFUSED
    assert isinstance(refused.value, UnknownTask)  # what it is, said plainly
    with pytest.raises(SendTaskError) as sent:  # the kicker taskiq's scheduler uses
        await AsyncKicker(add_numbers.task_name, broker, {}).kiq(1, 2)
    assert str(sent.value.__cause__) == PLAIN_TASK_REFUSED


async def test_a_jobstream_task_is_still_kicked_through_taskiq(js: Jobstream) -> None:
    broker = JobBroker(js.settings, js.tasks)
    try:
        await broker.find_task("demo.noop").kiq()  # type: ignore[union-attr]
        [job] = (await js.list("scheduler")).jobs  # kick's owner when none is given
        assert job.type == "demo.noop"
    finally:
        await broker.shutdown()
