"""Decoding a ``POST /jobs`` body, or answering a problem: the HTTP half of creating a job.

The job's own rules (its input's type, delay and start time) are ``Jobstream.submit_json``'s
(:mod:`broker.validation`); this module only turns bytes into a :class:`CreateJob`.
"""

from __future__ import annotations

import re

import msgspec

from web.problems import ProblemError, invalid_input, malformed_json, problem
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
