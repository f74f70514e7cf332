"""The rules a new job must meet, whoever creates it (``POST /jobs``, :class:`broker.Jobstream`).

They are checked before anything is written to Redis, so a refused job leaves no trace.
Errors are :class:`InvalidInput` and :class:`InvalidSchedule`; the web app turns them into
422 problems, a Python caller catches them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

import msgspec

from broker.errors import JobstreamError
from broker.registry import TaskSpec
from broker.settings import Settings
from broker.webhook_targets import url_refusal

_SAFE_INTEGER = 2**53


class InvalidInput(JobstreamError):
    """The input does not fit the task's type; ``error`` is msgspec's, naming the field."""

    def __init__(self, error: msgspec.ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


class InvalidSchedule(JobstreamError):
    """``delay``/``run_at`` asked for something not allowed; ``field`` is its JSON path."""

    def __init__(self, message: str, field: str = "$") -> None:
        super().__init__(message)
        self.field = field


class InvalidCallback(JobstreamError):
    """A ``callback_url`` this server may not send webhooks to (see :mod:`broker.webhook_targets`)."""


def check_callback_url(url: str, settings: Settings) -> str:
    """``url`` if its host is on ``JOBSTREAM_WEBHOOK_ALLOWED_HOSTS``; else :class:`InvalidCallback`.

    The sender asks the same again at each delivery, so a host taken off the list gets no
    more webhooks, even for jobs created while it was on it.
    """
    refusal = url_refusal(url, settings.webhook_allowed_hosts)
    if refusal is not None:
        raise InvalidCallback(refusal)
    return url


def validated_input(spec: TaskSpec, raw: bytes) -> bytes:
    """The input checked by the task's own type, re-encoded (defaults filled in) for storage.

    JSON Schema (what ``GET /tasks`` and ``/schema`` publish) counts ``5.0`` as an integer,
    and msgspec does not: an input the task's type refuses is tried once more with its
    whole-number floats as integers. Only the refused input pays for that second pass.
    Raises :class:`InvalidInput`, or msgspec's ``DecodeError`` for text that is not JSON.
    """
    try:
        value = spec.decode_input(raw)
    except msgspec.ValidationError as err:
        value = _with_integral_floats(spec, raw, err)
    return msgspec.json.encode(value)


def _with_integral_floats(spec: TaskSpec, raw: bytes, refusal: msgspec.ValidationError) -> object:
    if b"." not in raw and b"e" not in raw and b"E" not in raw:
        raise InvalidInput(refusal) from None
    try:
        return spec.decode_input(msgspec.json.encode(_integral(msgspec.json.decode(raw))))
    except msgspec.ValidationError as err:
        raise InvalidInput(err) from None


def _integral(value: object) -> object:
    """``value`` with every float that is a whole number (``5.0``, ``1e3``) as an int."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _SAFE_INTEGER:
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def max_delay_seconds(settings: Settings) -> int:
    """How far ahead a job may be scheduled: its PENDING record must outlive the wait.

    A waiting job's record lives ``active_ttl_seconds``; the margin leaves the promoter
    time to start it before the record would expire.
    """
    ttl = settings.active_ttl_seconds
    return ttl - max(1, min(60, ttl // 10))


def check_delay(delay_seconds: float, settings: Settings, field: str = "$.delay_seconds") -> int:
    """A delay from now, as milliseconds for the create script (which counts it from its own
    Redis clock reading, so the job never starts earlier than the delay after ``created_at``)."""
    limit = max_delay_seconds(settings)
    if delay_seconds > limit:
        raise InvalidSchedule(f"a job can be scheduled at most {limit} seconds ahead", field)
    return round(delay_seconds * 1000)


def check_run_at(run_at: datetime, now_ms: int, settings: Settings, field: str = "$.run_at") -> int:
    """A start time as epoch milliseconds, given Redis's ``now_ms``.

    A ``run_at`` in the past means now, as in Cloud Tasks, Celery or Sidekiq: a client whose
    clock runs ahead still gets its job. Only the horizon is refused.
    """
    limit = max_delay_seconds(settings)
    at_ms = int(run_at.timestamp() * 1000)
    if at_ms - now_ms > limit * 1000:
        raise InvalidSchedule(f"a job can be scheduled at most {limit} seconds ahead", field)
    return max(at_ms, now_ms)


def both_given() -> InvalidSchedule:
    """The error for a job given both a delay and a start time."""
    return InvalidSchedule("give delay_seconds or run_at, not both")


MAX_LABELS = 16
LABEL_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LABEL_VALUE_MAX = 128
LABEL_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
LABEL_FILTER_PATTERN = r"^[A-Za-z0-9_.-]{1,64}:[^\x00-\x1f\x7f]{1,128}$"
"""A label filter, ``key:value`` (``GET /jobs?label=case:42``)."""
LabelKey = Annotated[str, msgspec.Meta(pattern=LABEL_KEY_PATTERN, max_length=64)]
LabelValue = Annotated[
    str, msgspec.Meta(min_length=1, max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)
]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
"""A job's labels: at most 16, keys ``[A-Za-z0-9_.-]{1,64}`` (no ``:``, so ``GET /jobs?label=k:v``
splits at the first colon), values of 1 to 128 characters, none a control character. The one
definition: the create body, ``Jobstream.submit`` and the OpenAPI document all use it."""


class InvalidOption(JobstreamError):
    """A per-job option (``timeout``, ``labels``, ``owner``) is not allowed; ``field`` is its JSON path."""

    def __init__(self, message: str, field: str = "$") -> None:
        super().__init__(message)
        self.field = field


def check_timeout(spec: TaskSpec, timeout: float | None) -> float | None:
    """A job's own timeout: more than 0 seconds and at most its task's ``timeout`` option."""
    if timeout is None:
        return None
    if not math.isfinite(timeout) or timeout <= 0:
        raise InvalidOption("timeout must be more than 0 seconds", "$.timeout")
    limit = spec.options.timeout
    if limit is not None and timeout > limit:
        raise InvalidOption(
            f"timeout may be at most {limit} seconds, the timeout of {spec.name}", "$.timeout"
        )
    return float(timeout)


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """``labels`` checked against :data:`Labels` (limits in its docstring)."""
    if not labels:
        return {}
    try:
        return msgspec.convert(dict(labels), Labels)
    except msgspec.ValidationError as err:
        raise InvalidOption(f"labels: {err} (at most {MAX_LABELS}, see the docs)", "$.labels") from None
