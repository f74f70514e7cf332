"""The job record: its states, its wire shape, and its conversion from the Redis hash."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec


class JobStatus(StrEnum):
    """Where a job is in its life. Terminal states never change again."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the job can never change again."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})


class JobError(msgspec.Struct, omit_defaults=True):
    """Why a job failed or was cancelled (or why its last attempt failed, while a retry waits)."""

    type: str
    message: str
    details: Any = None


class WebhookState(msgspec.Struct):
    """Where the completion webhook of a job with a ``callback_url`` stands (every field always
    present, so a client reads ``state`` without knowing the defaults)."""

    url: str
    state: str = "waiting"  # waiting (the job is active) | pending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class Job(msgspec.Struct, kw_only=True):
    """A job as clients see it: the same shape in HTTP bodies and SSE events."""

    id: str
    type: str
    status: JobStatus
    progress: float = 0.0
    message: str | None = None
    eta_seconds: float | None = None
    input: msgspec.Raw
    result: msgspec.Raw  # JSON null until SUCCESS (Raw, not ``Raw | None``, so clients can decode it)
    error: JobError | None = None
    owner: str
    queue: str
    attempts: int = 0
    created_at: datetime
    updated_at: datetime  # every change stamps it (Redis time), creation included
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    run_at: datetime | None = None
    version: int
    cancel_requested: bool = False
    # The worker (consumer) running it, or that ran its last attempt; admins only over HTTP.
    worker: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    created_by: str | None = None  # the service that created it for its owner (None: the owner did)
    timeout_seconds: float | None = None  # this job's own timeout (None: its task's)
    keep_until_fetched: bool = False  # once ended, kept only until its result is first fetched
    webhook: WebhookState | None = None

    @property
    def terminal(self) -> bool:
        """True once the job can never change again."""
        return self.status in TERMINAL

    @property
    def etag(self) -> str:
        """The strong ETag of this state: its version, quoted."""
        return f'"{self.version}"'


_error_decoder = msgspec.json.Decoder(JobError)
_labels_decoder = msgspec.json.Decoder(dict[str, str])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NULL = msgspec.Raw(b"null")


def _time(ms: bytes | str | None) -> datetime | None:
    if not ms:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


def _raw(raw: bytes | str | None) -> msgspec.Raw | None:
    if raw is None:
        return None
    return msgspec.Raw(raw.encode() if isinstance(raw, str) else raw)


def _num(raw: bytes | str | None) -> float | None:
    return None if raw is None or raw == b"" else float(raw)


def job_from_fields(fields: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[Any, Any]) -> Job:
    """Build a :class:`Job` from the hash's fields (HGETALL, or a script's published state).

    Keys may be bytes or str; numbers and times are stored as text, times in epoch ms.
    """
    f: dict[str, Any] = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    error = f.get("error")
    eta = _num(f.get("eta"))
    labels = f.get("labels")
    return Job(
        id=_text(f["id"]) or "",
        type=_text(f["type"]) or "",
        status=JobStatus(_text(f["status"]) or "PENDING"),
        progress=_num(f.get("progress")) or 0.0,
        message=_text(f.get("message")),
        eta_seconds=None if eta is None or eta < 0 else eta,
        input=_raw(f.get("input")) or _NULL,
        result=_raw(f.get("result")) or _NULL,
        error=_error_decoder.decode(error) if error else None,
        owner=_text(f["owner"]) or "",
        queue=_text(f["queue"]) or "",
        attempts=int(f.get("attempts") or 0),
        created_at=_time(f.get("created_at")) or _EPOCH,
        updated_at=_time(f.get("updated_at")) or _time(f.get("created_at")) or _EPOCH,
        started_at=_time(f.get("started_at")),
        completed_at=_time(f.get("completed_at")),
        expires_at=_time(f.get("expires_at")),
        run_at=_time(f.get("run_at")),
        version=int(f.get("version") or 0),
        cancel_requested=bool(f.get("cancel_requested")),
        worker=_text(f.get("worker")),
        labels=_labels_decoder.decode(labels) if labels else {},
        created_by=_text(f.get("created_by")),
        timeout_seconds=_num(f.get("timeout")),
        keep_until_fetched=bool(f.get("keep_until_fetched")),
        webhook=_webhook(f),
    )


def _webhook(f: Mapping[str, Any]) -> WebhookState | None:
    """The ``webhook`` of a record with a ``callback_url`` (fields ``webhook_*``), else None."""
    url = _text(f.get("callback_url"))
    if url is None:
        return None
    return WebhookState(
        url=url,
        state=_text(f.get("webhook_state")) or "waiting",
        attempts=int(f.get("webhook_attempts") or 0),
        last_error=_text(f.get("webhook_error")),
        next_attempt_at=_time(f.get("webhook_next_at")),
        delivered_at=_time(f.get("webhook_delivered_at")),
    )


def without_traceback(job: Job) -> Job:
    """``job`` without ``error.details.traceback``, for a caller who may not see tracebacks.

    The same object when there is none to take out (no copy, so the encoded state of the
    common job can be shared); otherwise a copy whose details keep the task's own keys
    (``None`` if the traceback was all there was).
    """
    error = job.error
    if error is None or not isinstance(error.details, dict) or "traceback" not in error.details:
        return job
    details = {key: value for key, value in error.details.items() if key != "traceback"}
    return msgspec.structs.replace(job, error=msgspec.structs.replace(error, details=details or None))


def without_worker(job: Job) -> Job:
    """``job`` without ``worker`` (the same object when it names none), for a caller who is
    no operator: host names and process ids are nobody else's business."""
    return job if job.worker is None else msgspec.structs.replace(job, worker=None)


def pairs_to_fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """Turn a flat ``[field, value, ...]`` reply (HGETALL in Lua) into a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


job_encoder = msgspec.json.Encoder()
"""Shared encoder for wire shapes (jobs, events, problem bodies)."""
