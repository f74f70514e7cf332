"""taskiq's idiom on jobstream, with a real worker: ``await task.kiq(input, owner=...)`` then
``await run.wait_result(timeout=...)`` returns the task's typed result or raises its failure."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from broker import JobFailed, JobStatus, Jobstream, close_default_jobstream
from tests.support.procs import start_worker, stop
from workers.tasks.demo import (
    FailInput,
    NoopInput,
    SleepInput,
    SleepResult,
    WordCount,
    WordcountInput,
    fail,
    noop,
    sleep,
    wordcount,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def worker(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Popen[bytes]]:
    proc = start_worker(redis_url, prefix, log=tmp_path / "worker.log")
    yield proc
    assert stop(proc, signal.SIGTERM) == 0


async def test_kiq_then_wait_result_gives_the_typed_result_or_raises(
    js: Jobstream, worker: Popen[bytes]
) -> None:
    run = await sleep.kiq(SleepInput(seconds=0.2, steps=2), owner="alice", client=js)
    result = await run.wait_result(timeout=30)
    assert isinstance(result, SleepResult) and result == SleepResult(slept=0.2)
    assert await run.is_ready()
    assert (await js.get(run.task_id, "alice")).status == JobStatus.SUCCESS

    counted = await wordcount.kiq(WordcountInput(text="b a a"), owner="alice", client=js)
    assert await counted.wait_result(timeout=30) == [WordCount("a", 2), WordCount("b", 1)]

    failing = await fail.kiq(FailInput(message="no luck"), owner="alice", client=js)
    with pytest.raises(JobFailed, match="no luck") as failed:
        await failing.wait_result(timeout=30)
    assert failed.value.job.status == JobStatus.FAILURE
    assert failed.value.job.error is not None and failed.value.job.error.type == "DemoFailure"


async def test_submit_through_the_default_client_runs_on_a_worker(
    js: Jobstream, worker: Popen[bytes], redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("JOBSTREAM_PREFIX", prefix)
    try:
        job = await noop.submit(NoopInput(), owner="bob")
        run = await sleep.kiq(SleepInput(seconds=0.1, steps=1), owner="bob")
        assert await run.wait_result(timeout=30) == SleepResult(slept=0.1)
    finally:
        await close_default_jobstream()
    assert (await js.wait(job.id, timeout=30, owner="bob")).status == JobStatus.SUCCESS
