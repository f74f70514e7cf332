"""Tasks of the per-job option tests (``JOBSTREAM_TASK_MODULES=...,tests.support.option_tasks``)."""

from __future__ import annotations

import msgspec

from broker.registry import JobContext, task


class Nothing(msgspec.Struct):
    pass


@task("options.kept", keep_until_fetched=True, retention=3600)
async def kept(ctx: JobContext, data: Nothing) -> str:
    """Its result is kept only until it is fetched."""
    return ctx.job_id


@task("options.capped", timeout=5)
async def capped(ctx: JobContext, data: Nothing) -> None:
    """A task with a timeout of its own: a job may ask for less, never more."""
