"""``GET /tasks``: the task types this deployment accepts, with their JSON schemas."""

from __future__ import annotations

import inspect

from litestar import get
from litestar.di import NamedDependency

from broker.registry import TaskSpec, registry
from broker.settings import Settings
from web.openapi import problem_responses
from web.schemas import TaskInfo, TaskList


def task_info(spec: TaskSpec, settings: Settings) -> TaskInfo:
    """What a client needs to create jobs of ``spec``: queue, limits, input and output schemas."""
    options = spec.options
    return TaskInfo(
        name=spec.name,
        queue=options.queue or settings.default_queue,
        timeout_seconds=options.timeout,
        retries=options.retries,
        retention_seconds=spec.retention(settings.retention_seconds),
        input_schema=spec.input_schema(),
        output_schema=spec.output_schema(),
        description=inspect.getdoc(spec.fn),
    )


@get("/tasks", tags=["tasks"], responses=problem_responses(401), summary="List task types")
async def list_tasks(settings: NamedDependency[Settings]) -> TaskList:
    """Every registered task type, sorted by name."""
    return TaskList([task_info(spec, settings) for spec in registry])
