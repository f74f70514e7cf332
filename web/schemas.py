"""Request and response shapes of the web API (the job itself is ``broker.models.Job``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from broker.models import Job, JobStatus
from broker.validation import Labels

TaskName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
OwnerName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CreateJob(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /jobs`` body. ``input`` stays raw JSON until the task's own type validates it."""

    type: TaskName
    input: msgspec.Raw = msgspec.Raw(b"{}")
    delay_seconds: Annotated[float, msgspec.Meta(ge=0)] | None = None
    run_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    owner: OwnerName | None = None  # a service creating the job for this owner (403 for others)
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None  # seconds, at most the task's
    labels: Labels | None = None
    callback_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class JobPage(msgspec.Struct):
    """One page of ``GET /jobs``: newest first; pass ``next_cursor`` back for the next page."""

    jobs: list[Job]
    next_cursor: str | None


class JobResult(msgspec.Struct):
    """``GET /jobs/{id}/result``: the result once SUCCESS (``null`` while still running)."""

    id: str
    status: JobStatus
    result: msgspec.Raw


class TaskInfo(msgspec.Struct):
    """A registered task type, as ``GET /tasks`` lists it."""

    name: str
    queue: str
    timeout_seconds: float | None
    retries: int
    retention_seconds: int
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    description: str | None = None


class TaskList(msgspec.Struct):
    """``GET /tasks``."""

    tasks: list[TaskInfo]


class Health(msgspec.Struct):
    """``GET /healthz`` and ``GET /readyz``."""

    status: str
