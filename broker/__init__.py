"""jobstream's core: settings, keys, the job model, the Lua scripts, the store, the task
registry, and the public Python API, :class:`Jobstream`.

The public API and the default client (which bring the event hub) are imported on first
use of their names, so a process that needs only the core (a worker, which must start in a
fraction of a second) does not pay for them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from broker.errors import (
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    JobstreamError,
    NotReplicated,
    QuotaExceeded,
    TaskError,
    UnknownTask,
)
from broker.models import Job, JobError, JobStatus
from broker.registry import JobContext, task
from broker.task_object import JobHandle, NotAJobstreamTask, OwnerRequired, Task
from broker.validation import InvalidCallback, InvalidInput, InvalidOption, InvalidSchedule

if TYPE_CHECKING:
    from broker.api import JobFailed, JobNotDone, JobOptions, Jobstream, MalformedInput, Submitted
    from broker.default_client import close_default_jobstream, default_jobstream, set_default_jobstream

_LAZY = {
    **dict.fromkeys(
        ("JobFailed", "JobNotDone", "JobOptions", "Jobstream", "MalformedInput", "Submitted"), "broker.api"
    ),
    **dict.fromkeys(
        ("close_default_jobstream", "default_jobstream", "set_default_jobstream"), "broker.default_client"
    ),
}


def __getattr__(name: str) -> Any:
    """``broker.Jobstream`` and the rest of :data:`_LAZY`, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "IdempotencyConflict",
    "IllegalTransition",
    "InvalidCallback",
    "InvalidInput",
    "InvalidOption",
    "InvalidSchedule",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobNotDone",
    "JobNotFound",
    "JobOptions",
    "JobStatus",
    "Jobstream",
    "JobstreamError",
    "MalformedInput",
    "NotAJobstreamTask",
    "NotReplicated",
    "OwnerRequired",
    "QuotaExceeded",
    "Submitted",
    "Task",
    "TaskError",
    "UnknownTask",
    "close_default_jobstream",
    "default_jobstream",
    "set_default_jobstream",
    "task",
]
