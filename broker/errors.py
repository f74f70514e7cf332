"""One exception base for the package, and the script result codes that map onto it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any


class ScriptCode(IntEnum):
    """What a state-change script answers; the first element of every script's reply."""

    OK = 0
    NOT_FOUND = 1
    BAD_TRANSITION = 2
    STALE = 3
    DUPLICATE = 4
    QUOTA = 5
    SKIPPED = 6


class JobstreamError(Exception):
    """Base of every error jobstream raises on purpose."""


class JobNotFound(JobstreamError):
    """No such job, or it expired, or it belongs to someone else."""


class IllegalTransition(JobstreamError):
    """The job's current status does not allow the requested change."""

    def __init__(self, job_id: str, status: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {status}; cannot {wanted}")
        self.job_id = job_id
        self.status = status
        self.wanted = wanted


class StaleAttempt(JobstreamError):
    """The caller's attempt lost the job (its lease ran out and another worker took it)."""


class QuotaExceeded(JobstreamError):
    """The owner has too many active jobs."""


class NotReplicated(JobstreamError):
    """Fewer replicas than asked (``JOBSTREAM_CREATE_REPLICAS``) confirmed a create in time.

    The primary has the job, but a failover could lose it; or the primary has gone since. The
    caller should send the same create again with the same idempotency key: that returns the
    job if it survived (once replicas confirm it) or creates it anew if it did not.
    """

    def __init__(self, wanted: int, confirmed: int, timeout_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the write within {timeout_ms} ms")
        self.wanted = wanted
        self.confirmed = confirmed
        self.timeout_ms = timeout_ms


class IdempotencyConflict(JobstreamError):
    """An idempotency key was used again with another task type or input (names the first job)."""


class UnknownTask(JobstreamError):
    """No task is registered under that name."""


class TaskError(JobstreamError):
    """Raised by a task's code to fail the attempt with a message and details of its own.

    ``raise TaskError("PDF is encrypted", details={"page": 3})`` records ``error.type``
    ``"TaskError"`` (a subclass's name instead, so ``class PdfEncrypted(TaskError)`` names
    the failure), ``error.message``, and ``error.details``: the task's keys beside the
    ``traceback`` the worker adds (a task's own ``traceback`` key is replaced). Values that
    JSON cannot hold are stored as their ``repr``. ``retry=False`` fails the job at once,
    for a failure that another attempt cannot fix; otherwise the task's retries apply as
    to any other exception.
    """

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None, retry: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry = retry


def raise_for_code(code: int, job_id: str, wanted: str, detail: bytes | str | None = None) -> None:
    """Turn a script's result code into the matching exception (``OK`` raises nothing)."""
    match ScriptCode(code):
        case ScriptCode.OK | ScriptCode.DUPLICATE | ScriptCode.SKIPPED:
            return
        case ScriptCode.NOT_FOUND:
            raise JobNotFound(job_id)
        case ScriptCode.BAD_TRANSITION:
            status = detail.decode() if isinstance(detail, bytes) else str(detail)
            raise IllegalTransition(job_id, status, wanted)
        case ScriptCode.STALE:
            raise StaleAttempt(job_id)
        case ScriptCode.QUOTA:
            raise QuotaExceeded(job_id)
