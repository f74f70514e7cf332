"""The app's own task module: what ``POST /cases/{id}/analyze`` used to do inside the request.

Deployed with the jobstream workers by naming it in ``JOBSTREAM_TASK_MODULES`` (which
replaces the default ``workers.tasks``; list both to keep the demo tasks)::

    JOBSTREAM_TASK_MODULES=examples.case_tasks python -m workers

The web side names it too, so the API validates a case's input and lists the task.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec

from broker.registry import JobContext, task

STEPS = ("loading the case", "reading documents", "running the model", "writing the summary")


class AnalyzeCase(msgspec.Struct, forbid_unknown_fields=True):
    """Which case to analyse, and how long each step takes (seconds; a real model takes minutes)."""

    case_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    step_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.2


class Analysis(msgspec.Struct):
    case_id: str
    summary: str
    risk: float


@task("cases.analyze", timeout=3_600, retries=2)
async def analyze_case(ctx: JobContext, case: AnalyzeCase) -> Analysis:
    """The slow work, step by step, with progress the frontend shows."""
    for number, step in enumerate(STEPS, start=1):
        await asyncio.sleep(case.step_seconds)
        await ctx.progress(100 * number / len(STEPS), step)
    return Analysis(case_id=case.case_id, summary=f"case {case.case_id}: nothing unusual", risk=0.12)
