"""Turning a ``POST /jobs`` body into what ``JobStore.create`` needs, or into a problem.

Everything here is checked before anything is written to Redis: a refused request leaves
no trace.
"""

from __future__ import annotations

import re

import msgspec
from redis.asyncio import Redis

from broker import validation
from broker.registry import TaskSpec
from broker.settings import Settings
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
    """The input checked by the task's own type (:func:`broker.validation.validated_input`),
    re-encoded for storage; a 422 naming the field, or a 400 for bytes that are not JSON."""
    try:
        return validation.validated_input(spec, bytes(raw))
    except validation.InvalidInput as err:
        raise invalid_input(err.error, under=".input") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:  # skipped, not read, as part of the body
        raise malformed_json(err) from None


async def due(body: CreateJob, redis: Redis, settings: Settings) -> tuple[int, int]:
    """When the job may start: ``(run_at epoch ms, 0)``, ``(0, delay ms)`` or ``(0, 0)`` for now.

    The rules are :mod:`broker.validation`'s (a ``run_at`` in the past means now; only the
    horizon is refused, which fits in the OpenAPI document, where "relative to now" would not).
    """
    try:
        if body.delay_seconds is None and body.run_at is None:
            return 0, 0
        if body.delay_seconds is not None and body.run_at is not None:
            raise validation.both_given()
        if body.delay_seconds is not None:
            return 0, validation.check_delay(body.delay_seconds, settings)
        assert body.run_at is not None
        seconds, micros = await redis.time()
        return validation.check_run_at(body.run_at, int(seconds) * 1000 + int(micros) // 1000, settings), 0
    except validation.InvalidSchedule as err:
        raise _bad_schedule(str(err), err.field) from None


def _bad_schedule(message: str, field: str = "$") -> ProblemError:
    errors = [FieldProblem(message=message, field=field, source="body")]
    return ProblemError(problem(422, "invalid-schedule", message, errors=errors))
