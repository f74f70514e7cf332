"""Log lines as JSON when nobody reads them on a terminal (``JOBSTREAM_LOG_FORMAT``: auto, json, text).

One JSON object a line: ``time`` (UTC, ms), ``level``, ``logger``, ``message``, ``exc`` (a
traceback, when there is one), and what the line happened within, from context variables:
``job_id``, ``job_type``, ``owner`` and ``attempt`` while a worker runs a job (set by
:func:`job_logging`), ``worker`` (the consumer name of a worker process) and ``request_id``
on the web side (:mod:`web.request_ids`). Nothing else of a record is written, so a secret
reaches a log only if code puts it into a message (none does: tokens are redacted from the
access log before any formatter sees it, :mod:`web.log_redaction`).

Each role calls :func:`use_log_format` once its server has set its logging up (uvicorn and
taskiq configure handlers before our code runs): the formatter then goes onto every
handler there is, the servers' own included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec

_job: ContextVar[tuple[str, str, str, int] | None] = ContextVar("jobstream_job", default=None)
_request_id: ContextVar[str | None] = ContextVar("jobstream_request_id", default=None)
_worker: list[str] = []  # the consumer name of this worker process, once known
_encode = msgspec.json.Encoder().encode
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """A record as one JSON object, with the job, worker and request it happened within."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = _job.get()
        if job is not None:
            entry["job_id"], entry["job_type"], entry["owner"], entry["attempt"] = job
        if _worker:
            entry["worker"] = _worker[0]
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return _encode(entry).decode()


def wants_json(log_format: str, stream: Any = None) -> bool:
    """Whether lines are JSON: ``json``, or ``auto`` and ``stream`` (stderr) is no terminal."""
    if log_format != "auto":
        return log_format == "json"
    stream = sys.stderr if stream is None else stream
    return not (hasattr(stream, "isatty") and stream.isatty())


def use_log_format(log_format: str, level: int | str | None = None) -> None:
    """Format every log handler of the process as ``log_format`` says (one on stderr if none)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level or logging.INFO, format=TEXT_FORMAT)
    elif level is not None:
        root.setLevel(level)
    if not wants_json(log_format):
        return  # on a terminal: the servers' own formats stay
    formatter = JsonLines()
    known = logging.Logger.manager.loggerDict.values()
    loggers = [root, *(logger for logger in known if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            handler.setFormatter(formatter)


def set_worker(consumer: str) -> None:
    """Name this process's worker in every later line."""
    _worker[:] = [consumer]


def enter_job(job_id: str, job_type: str, owner: str, attempt: int) -> Any:
    """Lines logged from here on in this asyncio task name this job's attempt; returns the token
    for :func:`leave_job` (a plain set and reset: a worker does this for every job)."""
    return _job.set((job_id, job_type, owner, attempt))


def leave_job(token: Any) -> None:
    _job.reset(token)


@contextmanager
def job_logging(job_id: str, job_type: str, owner: str, attempt: int) -> Iterator[None]:
    """Lines logged within the block name this job's attempt."""
    token = enter_job(job_id, job_type, owner, attempt)
    try:
        yield
    finally:
        leave_job(token)


def set_request_id(request_id: str | None) -> Any:
    """Lines logged from here on in this task name this request; returns the token to reset."""
    return _request_id.set(request_id)


def reset_request_id(token: Any) -> None:
    _request_id.reset(token)
