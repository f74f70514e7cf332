"""The Python client and the CLI against a real web process and worker: SSE and polling,
``wait`` with a timeout, ``list`` and ``result``.

The tests that run jobs share the module's server and worker, each as an owner of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from broker.models import JobStatus
from client.http_client import ApiError, JobFailed, JobNotDone, JobstreamClient
from tests.support.procs import ROOT
from tests.support.web_stack import WebStack
from tests.support.web_support import User


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_sse", [True, False], ids=["sse", "polling"])
@pytest.mark.usefixtures("module_worker")
async def test_follow_sees_progress_then_the_result(
    module_stack: WebStack, user: User, use_sse: bool
) -> None:
    stack = module_stack
    async with JobstreamClient(stack.base_url, user.token, use_sse=use_sse) as client:
        job = await client.submit("demo.sleep", {"seconds": 1.5, "steps": 3})
        seen = [state async for state in client.follow(job.id)]
    versions = [state.version for state in seen]
    assert versions == sorted(set(versions))
    assert seen[-1].status == JobStatus.SUCCESS
    assert bytes(seen[-1].result) == b'{"slept":1.5}'
    assert any(state.status == JobStatus.PROCESSING and state.message for state in seen)


@pytest.mark.timeout(60)
async def test_errors_come_back_as_api_errors(sse_stack: Any) -> None:
    # A stack of its own, with no worker: its cancel must find the job still PENDING.
    stack = await sse_stack()
    async with JobstreamClient(stack.base_url) as client:
        with pytest.raises(ApiError) as unknown:
            await client.submit("demo.nope", {})
        assert unknown.value.status == 404
        with pytest.raises(ApiError) as missing:
            await client.get("00000000-0000-4000-8000-000000000000")
        assert missing.value.status == 404
        job = await client.submit("demo.sleep", {"seconds": 30})
        with pytest.raises(JobNotDone) as not_done:
            await client.result(job.id)
        assert (not_done.value.status, not_done.value.retry_after) == (JobStatus.PENDING, 1.0)
        cancelled = await client.cancel(job.id)
        assert cancelled.status == JobStatus.CANCELLED
        assert (await client.wait(job.id)).status == JobStatus.CANCELLED
        with pytest.raises(JobFailed) as failed:
            await client.result(job.id)
        assert failed.value.status == 409
        assert failed.value.job_status == JobStatus.CANCELLED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_sse", [True, False], ids=["sse", "polling"])
async def test_wait_gives_up_after_its_timeout(sse_stack: Any, use_sse: bool) -> None:
    stack = await sse_stack()  # no worker: the job stays PENDING
    async with JobstreamClient(stack.base_url, use_sse=use_sse) as client:
        job = await client.submit("demo.sleep", {"seconds": 1})
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.wait(job.id, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        assert (await client.get(job.id)).status == JobStatus.PENDING  # only the waiting stopped


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("module_worker")
async def test_list_pages_and_filters_and_result_decodes(module_stack: WebStack, user: User) -> None:
    async with JobstreamClient(module_stack.base_url, user.token) as client:
        first = await client.submit("demo.noop", {}, labels={"case": "42"})
        second = await client.submit("demo.wordcount", {"text": "b a b"}, labels={"case": "43"})
        failing = await client.submit("demo.fail", {"message": "no paper"}, labels={"case": "42"})
        for job in (first, second, failing):
            await client.wait(job.id, timeout=20)
        page = await client.list(limit=2)
        assert [job.id for job in page.jobs] == [failing.id, second.id]  # newest first
        assert page.next_cursor is not None
        rest = await client.list(limit=2, cursor=page.next_cursor)
        assert ([job.id for job in rest.jobs], rest.next_cursor) == ([first.id], None)
        assert [job.id for job in (await client.list(labels={"case": "42"})).jobs] == [failing.id, first.id]
        assert [job.id for job in (await client.list(status=JobStatus.FAILURE)).jobs] == [failing.id]
        assert [job.id for job in (await client.list(task="demo.wordcount")).jobs] == [second.id]
        assert await client.result(second.id) == [{"word": "b", "count": 2}, {"word": "a", "count": 1}]
        assert await client.result(first.id) is None
        with pytest.raises(JobFailed) as failed:
            await client.result(failing.id)
    assert failed.value.job_status == JobStatus.FAILURE
    assert failed.value.error is not None
    assert (failed.value.error.type, failed.value.error.message) == ("DemoFailure", "no paper")


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("module_worker")
async def test_cli_submit_watch_prints_the_final_job(module_stack: WebStack, user: User) -> None:
    stack = module_stack
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "submit",
        "demo.sleep",
        '{"seconds": 1, "steps": 2}',
        "--watch",
        "--url",
        stack.base_url,
    ]
    env = {**os.environ, "JOBSTREAM_TOKEN": user.token}
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, timeout=50
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b'"status": "SUCCESS"' in done.stdout
    assert b"100%" in done.stderr  # the progress bar's last frame
