"""Turning a ``POST /jobs`` body into what ``JobStore.create`` needs, or into a problem.

Everything here is checked before anything is written to Redis: a refused request leaves
no trace.
"""

from __future__ import annotations

import re

import msgspec
from redis.asyncio import Redis

from broker.settings import Settings
from broker.tasks import TaskSpec
from web.problems import FieldProblem, ProblemError, invalid_input, problem
from web.schemas import CreateJob

MAX_JSON_DEPTH = 128
"""How deeply a request body may nest (the body itself is level 1): serde_json's limit.

msgspec decodes (and skips, for a raw ``input``) nested values by recursion, so a body
nested a thousand deep raised ``RecursionError`` (a 500) before any check could answer."""

_create_decoder = msgspec.json.Decoder(CreateJob)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_OPEN = ord("(")


def nests_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``body`` nests more than ``limit`` arrays and objects deep.

    Answers without recursion. A body with no more than ``limit`` brackets (nearly all)
    costs two ``count`` calls. Otherwise strings are cut out and the brackets kept, as
    ``(`` and ``)``, and walked in slices: a slice whose open brackets cannot lift the
    depth past ``limit`` is summed by ``count``, and only the others are walked bracket by
    bracket (a body that stays near the limit throughout: about 0.2 s a megabyte).
    Brackets that do not pair up are the decoder's to refuse: it never recurses deeper than
    the running depth measured here.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_AS_PARENS, _NOT_BRACKETS)
    depth, size = 0, max(1, limit // 2)
    for start in range(0, len(brackets), size):
        piece = brackets[start : start + size]
        opens = piece.count(b"(")
        if depth + opens <= limit:
            depth += 2 * opens - len(piece)
            continue
        for bracket in piece:
            depth += 1 if bracket == _OPEN else -1
            if depth > limit:
                return True
    return False


def decode_body(body: bytes) -> CreateJob:
    """The create body: 400 when it is not JSON (or nests too deep), 422 naming the field
    when it has the wrong shape."""
    if nests_too_deep(body):
        detail = f"the body is not JSON nested at most {MAX_JSON_DEPTH} levels deep"
        raise ProblemError(problem(400, "json-too-deep", detail))
    try:
        return _create_decoder.decode(body)
    except msgspec.ValidationError as err:
        raise invalid_input(err) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise malformed_json(err) from None


def malformed_json(err: Exception) -> ProblemError:
    """400 for a body that is not JSON (or not UTF-8)."""
    return ProblemError(problem(400, "malformed-json", f"the body is not valid JSON: {err}"))


def validated_input(spec: TaskSpec, raw: msgspec.Raw) -> bytes:
    """The input checked by the task's own type, re-encoded (defaults filled in) for storage.

    JSON Schema (what ``GET /tasks`` and ``/schema`` publish) counts ``5.0`` as an integer,
    and msgspec does not: an input the task's type refuses is tried once more with its
    whole-number floats as integers. Only the refused input pays for that second pass.
    """
    try:
        value = spec.decode_input(bytes(raw))
    except msgspec.ValidationError as err:
        value = _with_integral_floats(spec, bytes(raw), err)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:  # skipped, not read, as part of the body
        raise malformed_json(err) from None
    return msgspec.json.encode(value)


def _with_integral_floats(spec: TaskSpec, raw: bytes, refusal: msgspec.ValidationError) -> object:
    if b"." not in raw and b"e" not in raw and b"E" not in raw:
        raise invalid_input(refusal, under=".input") from None
    try:
        return spec.decode_input(msgspec.json.encode(_integral(msgspec.json.decode(raw))))
    except msgspec.ValidationError as err:
        raise invalid_input(err, under=".input") from None


_SAFE_INTEGER = 2**53


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


async def due(body: CreateJob, redis: Redis, settings: Settings) -> tuple[int, int]:
    """When the job may start: ``(run_at epoch ms, 0)``, ``(0, delay ms)`` or ``(0, 0)`` for now.

    A ``run_at`` in the past means now, as in Cloud Tasks, Celery or Sidekiq: a client whose
    clock runs ahead still gets its job, and the rule fits in the OpenAPI document (a
    time relative to "now" does not; only the horizon is refused, with a 422).

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
    if run_at - now > limit * 1000:
        raise _bad_schedule(f"a job can be scheduled at most {limit} seconds ahead", "$.run_at")
    return max(run_at, now), 0


def _bad_schedule(message: str, field: str = "$") -> ProblemError:
    errors = [FieldProblem(message=message, field=field, source="body")]
    return ProblemError(problem(422, "invalid-schedule", message, errors=errors))
