"""Turning a ``POST /jobs`` body into what ``JobStore.create`` needs, or into a problem.

Everything here is checked before anything is written to Redis: a refused request leaves
no trace.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from broker.settings import Settings
from broker.tasks import TaskSpec
from web.problems import FieldProblem, ProblemError, invalid_input, problem
from web.schemas import CreateJob

PAST_TOLERANCE_MS = 300_000
"""A ``run_at`` up to this far in the past (clock skew) means "now"; older is refused."""

_create_decoder = msgspec.json.Decoder(CreateJob)


def decode_body(body: bytes) -> CreateJob:
    """The create body: 400 when it is not JSON, 422 naming the field when it has the wrong shape."""
    try:
        return _create_decoder.decode(body)
    except msgspec.ValidationError as err:
        raise invalid_input(err) from None
    except msgspec.DecodeError as err:
        raise ProblemError(problem(400, "malformed-json", f"the body is not valid JSON: {err}")) from None


def validated_input(spec: TaskSpec, raw: msgspec.Raw) -> bytes:
    """The input checked by the task's own type, re-encoded (defaults filled in) for storage."""
    try:
        value = spec.decode_input(bytes(raw))
    except msgspec.ValidationError as err:
        raise invalid_input(err, under=".input") from None
    return msgspec.json.encode(value)


def max_delay_seconds(settings: Settings) -> int:
    """How far ahead a job may be scheduled: its PENDING record must outlive the wait.

    A waiting job's record lives ``active_ttl_seconds``; the margin leaves the promoter
    time to start it before the record would expire.
    """
    ttl = settings.active_ttl_seconds
    return ttl - max(1, min(60, ttl // 10))


async def due(body: CreateJob, redis: Redis, settings: Settings) -> tuple[int, int]:
    """When the job may start: ``(run_at epoch ms, 0)``, ``(0, delay ms)`` or ``(0, 0)`` for now.

    A delay is counted by the create script from its own Redis clock reading, so the job
    never starts earlier than ``delay_seconds`` after its ``created_at``.
    """
    if body.delay_seconds is None and body.run_at is None:
        return 0, 0
    if body.delay_seconds is not None and body.run_at is not None:
        raise _bad_schedule("give delay_seconds or run_at, not both")
    limit = max_delay_seconds(settings)
    if body.delay_seconds is not None:
        if body.delay_seconds > limit:
            raise _bad_schedule(f"a job can be scheduled at most {limit} seconds ahead", "$.delay_seconds")
        return 0, round(body.delay_seconds * 1000)
    seconds, micros = await redis.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    run_at = int(body.run_at.timestamp() * 1000) if body.run_at is not None else now
    if run_at < now - PAST_TOLERANCE_MS:
        raise _bad_schedule("run_at is in the past", "$.run_at")
    if run_at - now > limit * 1000:
        raise _bad_schedule(f"a job can be scheduled at most {limit} seconds ahead", "$.run_at")
    return max(run_at, now), 0


def _bad_schedule(message: str, field: str = "$") -> ProblemError:
    errors = [FieldProblem(message=message, field=field, source="body")]
    return ProblemError(problem(422, "invalid-schedule", message, errors=errors))
