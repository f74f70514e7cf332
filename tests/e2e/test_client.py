"""The Python client and the CLI against a real web process and worker: SSE and polling.

The tests that run jobs share the module's server and worker, each as an owner of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from broker.models import JobStatus
from client.http_client import ApiError, JobstreamClient
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
        cancelled = await client.cancel(job.id)
        assert cancelled.status == JobStatus.CANCELLED
        assert (await client.wait(job.id)).status == JobStatus.CANCELLED


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
