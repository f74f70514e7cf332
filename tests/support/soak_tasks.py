"""The soak test's tasks (``JOBSTREAM_TASK_MODULES=workers.tasks,tests.support.soak_tasks``).

The input says how the job should end, so the test knows every job's final state, its
attempt count and each worker counter in advance.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec

from broker.registry import JobContext, task


class Plan(msgspec.Struct):
    outcome: Literal["ok", "retry", "fail", "timeout"]


@task("soak.mixed", retries=1, backoff=0.01, backoff_max=0.05, timeout=0.2)
async def mixed(ctx: JobContext, data: Plan) -> int:
    """ok: succeeds; retry: fails its first attempt only; fail: fails both attempts;
    timeout: overruns its 0.2 s on both attempts."""
    if data.outcome == "fail" or (data.outcome == "retry" and ctx.attempt == 1):
        raise RuntimeError(f"{data.outcome} on attempt {ctx.attempt}")
    if data.outcome == "timeout":
        await asyncio.sleep(5)
    return ctx.attempt


class Hold(msgspec.Struct):
    seconds: float = 60.0


@task("soak.hold")
async def hold(ctx: JobContext, data: Hold) -> None:
    """Runs until it is cancelled (the test cancels every one)."""
    await asyncio.sleep(data.seconds)
