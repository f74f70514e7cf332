"""jobstream's core: settings, keys, the job model, the Lua scripts, the store, the task
registry, and the public Python API, :class:`Jobstream`."""

from broker.api import JobFailed, JobNotDone, Jobstream, MalformedInput, Submitted
from broker.errors import (
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    JobstreamError,
    QuotaExceeded,
    UnknownTask,
)
from broker.models import Job, JobError, JobStatus
from broker.registry import JobContext, task
from broker.validation import InvalidCallback, InvalidInput, InvalidSchedule

__all__ = [
    "IdempotencyConflict",
    "IllegalTransition",
    "InvalidCallback",
    "InvalidInput",
    "InvalidSchedule",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotDone",
    "JobNotFound",
    "JobStatus",
    "Jobstream",
    "JobstreamError",
    "MalformedInput",
    "QuotaExceeded",
    "Submitted",
    "UnknownTask",
    "task",
]
