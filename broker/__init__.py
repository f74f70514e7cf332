"""jobstream's core: settings, keys, the job model, the Lua scripts, the store, the task
registry, and the public Python API, :class:`Jobstream`."""

from broker.api import JobFailed, JobNotDone, JobOptions, Jobstream, MalformedInput, Submitted
from broker.default_client import close_default_jobstream, default_jobstream, set_default_jobstream
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
