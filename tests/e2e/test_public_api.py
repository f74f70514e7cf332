"""The public Python API, ``from broker import Jobstream``, on a real Redis with a real worker:
what ``POST /jobs`` refuses it refuses with typed errors, and following a job needs no HTTP."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from broker import (
    IdempotencyConflict,
    IllegalTransition,
    InvalidInput,
    InvalidSchedule,
    JobFailed,
    JobNotDone,
    JobNotFound,
    JobStatus,
    Jobstream,
    MalformedInput,
    UnknownTask,
)
from broker.settings import load_settings
from hub.event_hub import EventHub
from tests.support.procs import start_worker, stop
from workers.tasks.demo import SleepInput, sleep

pytestmark = [pytest.mark.timeout(60), pytest.mark.topologies("single", "cluster")]


async def test_submit_validates_as_post_jobs_does(js: Jobstream) -> None:
    job = await js.submit("demo.sleep", {"seconds": 5, "steps": 2}, owner="alice")
    assert (job.status, job.owner, job.type) == (JobStatus.PENDING, "alice", "demo.sleep")
    assert bytes(job.input) == b'{"seconds":5.0,"steps":2}'  # validated, with the task's types
    with pytest.raises(InvalidInput, match=r"\$\.seconds"):
        await js.submit("demo.sleep", {"seconds": "soon"}, owner="alice")
    with pytest.raises(UnknownTask):
        await js.submit("no.such", {}, owner="alice")
    with pytest.raises(InvalidSchedule, match="not both"):
        await js.submit("demo.noop", owner="alice", delay=1, run_at=datetime.now(UTC))
    with pytest.raises(InvalidSchedule, match="at most"):
        await js.submit("demo.noop", owner="alice", delay=10 * 86_400)
    later = await js.submit("demo.noop", owner="alice", run_at=datetime.now(UTC) + timedelta(hours=1))
    assert later.run_at is not None and later.run_at > datetime.now(UTC)
    listed = await js.list("alice")
    assert [j.id for j in listed.jobs] == [later.id, job.id]  # newest first


async def test_typed_submit_and_idempotency(js: Jobstream) -> None:
    job = await js.submit(sleep, SleepInput(seconds=0.5, steps=1), owner="alice", idempotency_key="k")
    again = await js.submit(sleep, SleepInput(seconds=0.5, steps=1), owner="alice", idempotency_key="k")
    assert again.id == job.id
    with pytest.raises(IdempotencyConflict):
        await js.submit(sleep, SleepInput(seconds=2), owner="alice", idempotency_key="k")


async def test_owners_see_only_their_jobs(js: Jobstream) -> None:
    job = await js.submit("demo.noop", owner="alice")
    assert (await js.get(job.id, "alice")).id == job.id
    assert (await js.get(job.id)).id == job.id  # None: an admin's view
    with pytest.raises(JobNotFound):
        await js.get(job.id, "bob")
    with pytest.raises(JobNotFound):
        await js.cancel(job.id, "bob")
    with pytest.raises(JobNotFound):
        async for _ in js.follow(job.id, "bob"):
            pass


async def test_result_and_cancel(js: Jobstream) -> None:
    job = await js.submit("demo.sleep", {"seconds": 60}, owner="alice")
    with pytest.raises(JobNotDone):
        await js.result(job.id, "alice")
    cancelled = await js.cancel(job.id, "alice")
    assert cancelled.status == JobStatus.CANCELLED
    with pytest.raises(JobFailed, match="CANCELLED"):
        await js.result(job.id, "alice")
    with pytest.raises(IllegalTransition):
        await js.cancel(job.id, "alice")


async def test_follow_and_wait_through_the_event_hub(
    js: Jobstream, redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    job = await js.submit("demo.sleep", {"seconds": 0.6, "steps": 3}, owner="alice")
    worker = start_worker(redis_url, prefix, log=tmp_path / "worker.log")
    try:
        states = [state async for state in js.follow(job.id, "alice")]
        versions = [state.version for state in states]
        assert versions == sorted(set(versions)), versions  # forward only, never a repeat
        assert states[0].status == JobStatus.PENDING and states[-1].status == JobStatus.SUCCESS
        assert any(state.status == JobStatus.PROCESSING and state.progress > 0 for state in states)
        assert (await js.wait(job.id, timeout=10, owner="alice")).status == JobStatus.SUCCESS
        assert await js.result(job.id) == {"slept": 0.6}
        pending = await js.submit("demo.sleep", {"seconds": 30}, owner="alice", delay=3600)
        with pytest.raises(TimeoutError):
            await js.wait(pending.id, timeout=0.2)
    finally:
        stop(worker, signal.SIGTERM)


async def test_submit_json_tells_a_replay_from_a_new_job(js: Jobstream) -> None:
    first = await js.submit_json("demo.sleep", b'{"seconds": 1}', owner="alice", idempotency_key="j")
    again = await js.submit_json("demo.sleep", b'{"seconds":1.0}', owner="alice", idempotency_key="j")
    assert (first.created, again.created, again.job.id) == (True, False, first.job.id)
    with pytest.raises(MalformedInput):
        await js.submit_json("demo.sleep", b'{"seconds": NaN}', owner="alice")
    with pytest.raises(InvalidSchedule) as refused:
        await js.submit_json("demo.noop", b"{}", owner="alice", delay=10 * 86_400)
    assert refused.value.field == "delay"  # the parameter's name; the web answers its body path
    assert [j.id for j in (await js.list("alice")).jobs] == [first.job.id]  # refusals wrote nothing


async def test_an_app_shares_its_store_and_hub(js: Jobstream) -> None:
    """The web app hands its own store and started hub in; closing the API leaves the hub to it."""
    store = js.store
    hub = EventHub(store, client_name="test-shared-hub")
    await hub.start()
    try:
        shared = Jobstream(js.redis, js.settings, store=store, hub=hub)
        job = await shared.submit("demo.noop", owner="alice")
        assert shared.store is store
        async for state in shared.follow(job.id, "alice"):
            assert state.id == job.id
            break
        await shared.aclose()
        assert hub.connected
    finally:
        await hub.stop()


def test_settings_come_from_the_environment() -> None:
    js = Jobstream.from_env({"JOBSTREAM_PREFIX": "env:"}, task_modules="workers.tasks")
    assert js.settings == load_settings({}, prefix="env:", task_modules="workers.tasks")
