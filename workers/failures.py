"""Why an attempt failed: the error a worker records for a task's exception, and its log line.

A task's exception becomes ``JobError(type, message, details)``: ``type`` is the exception
class's name, ``details`` an object holding the task's own details (a
:class:`~broker.errors.TaskError`'s ``details``) and ``traceback``, the attempt's
traceback as text. A traceback longer than :data:`TRACEBACK_LIMIT` characters keeps its
first line, a marker (``[... shortened from N characters ...]``), and its end: the
innermost frames and the exception, where the cause is. Details that encode to more than :data:`DETAILS_LIMIT`
bytes of JSON are replaced by a note saying so, so one failure cannot bloat the record,
every event and every page that carries it. Nothing a task raises can make this fail: a
value JSON cannot hold is stored as its ``repr``, and a ``repr`` or ``str`` that raises
is replaced by a placeholder.

Each failed attempt is logged once, here, with its job id, task, attempt, what happens
next (a retry and when, or the final FAILURE) and the full traceback: the executor
catches the exception, so neither taskiq nor the receiver sees it or logs it again.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from broker.errors import JobstreamError, TaskError
from broker.models import JobError
from broker.registry import TaskOptions, TaskSpec
from broker.store import Started

log = logging.getLogger("jobstream.worker")

TRACEBACK_LIMIT = 8192
"""Characters of a traceback kept in ``error.details.traceback``."""
DETAILS_LIMIT = 16384
"""Bytes of JSON a task's own details may take in the record."""
_CUT = " [...]\n"
MAX_BACKOFF_EXPONENT = 64


def failure_of(exc: BaseException) -> JobError:
    """The error recorded for an attempt whose task raised ``exc`` (with its traceback)."""
    details = task_details(exc.details) if isinstance(exc, TaskError) and exc.details is not None else {}
    details["traceback"] = traceback_text(exc)
    message = _safe(str, exc)
    if not message and not isinstance(exc, JobstreamError):
        message = _safe(repr, exc)
    return JobError(type(exc).__name__, message, details)


def retryable(exc: BaseException | None) -> bool:
    """False for a :class:`~broker.errors.TaskError` raised with ``retry=False``."""
    return not isinstance(exc, TaskError) or exc.retry


def task_details(details: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A task's details as JSON-able builtins; what JSON cannot hold becomes its ``repr``.

    A mapping stays an object (its keys as text); any other value is kept under ``value``.
    """
    try:
        value = msgspec.to_builtins(details, enc_hook=_repr_of, str_keys=True)
        size = len(msgspec.json.encode(value))
    except Exception:  # anything a hostile value raises (recursion, a bad key)
        return {"repr": _safe(repr, details)}
    if size > DETAILS_LIMIT:
        return {"omitted": f"the task's details took {size} bytes of JSON, over the {DETAILS_LIMIT} kept"}
    return value if isinstance(value, dict) else {"value": value}


def traceback_text(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """``exc``'s traceback as Python prints it (with its chained exceptions), shortened to ``limit``."""
    return shorten_traceback("".join(traceback.format_exception(exc)), limit)


def shorten_traceback(text: str, limit: int = TRACEBACK_LIMIT) -> str:
    """``text`` if it fits in ``limit`` characters; else its first line, a marker, and as many
    of its last lines as fit: the innermost frames and the exception. A line longer than a
    quarter of ``limit`` (a huge exception message) keeps its beginning, which names it."""
    if len(text) <= limit:
        return text
    most = limit // 4
    lines = [line if len(line) <= most else line[:most] + _CUT for line in text.splitlines(keepends=True)]
    head, body = (lines[0], lines[1:]) if len(lines) > 1 else ("", lines)
    marker = f"  [... shortened from {len(text)} characters ...]\n"
    room = limit - len(head) - len(marker)
    kept: list[str] = []
    for line in reversed(body):
        if len(line) > room:
            break
        kept.append(line)
        room -= len(line)
    return head + marker + "".join(reversed(kept))


def log_failed_attempt(
    started: Started,
    spec: TaskSpec | None,
    error: JobError,
    exc: BaseException | None,
    retry_in: float | None = None,
) -> None:
    """Log one failed attempt: a warning when a retry follows, an error for the final FAILURE."""
    job = started.job
    of = f" of {spec.options.retries + 1}" if spec is not None else ""
    after = "the job FAILED" if retry_in is None else f"retrying in {retry_in:.2f} s"
    log.log(
        logging.ERROR if retry_in is None else logging.WARNING,
        "job %s (task %s) attempt %d%s failed: %s: %s; %s",
        job.id,
        job.type,
        started.attempt,
        of,
        error.type,
        error.message,
        after,
        exc_info=exc,
    )


def _repr_of(value: Any) -> str:
    return _safe(repr, value)


def _safe(show: Callable[[Any], str], value: Any) -> str:
    """``show(value)`` (``str`` or ``repr``), or a placeholder when that raises."""
    try:
        return show(value)
    except Exception:  # a broken __str__ or __repr__ in a task's value
        return f"<{type(value).__name__} that cannot be shown>"


def retry_delay(options: TaskOptions, attempt: int, jitter: float | None = None) -> float:
    """Seconds from failed attempt ``attempt`` (1-based) to the next: ``backoff * 2**(attempt-1)``,
    at most ``backoff_max``, times a jitter in [0.5, 1] (random unless given).

    The exponent is capped, so a task with thousands of retries never overflows a float.
    """
    exponent = min(max(attempt - 1, 0), MAX_BACKOFF_EXPONENT)
    delay = min(options.backoff_max, options.backoff * 2.0**exponent)
    return delay * (random.uniform(0.5, 1.0) if jitter is None else jitter)  # noqa: S311 - jitter, not crypto
