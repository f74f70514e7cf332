"""Hostile input gets a 4xx, never a 5xx: nesting, sizes, numbers, encodings, headers, tokens.

The app runs in process in JWT mode, called as an admin (who reaches every route), so each
case meets the code behind authentication. A last group checks that whatever spelling of
``?token=`` the stream-token reader accepts is exactly what log redaction blanks.
"""

from __future__ import annotations

import base64
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient

from broker.settings import Settings
from tests.support.web_support import PROBLEM_JSON, SECRET, app_client, web_settings
from web.auth import make_token
from web.live.stream_tokens import StreamTokenError, query_token
from web.log_redaction import REDACTED, redact
from web.routes.creation import MAX_JSON_DEPTH, nests_too_deep

pytestmark = pytest.mark.timeout(60)

Client = AsyncTestClient[Litestar]


@pytest.fixture
def settings_(redis_url: str, prefix: str) -> Settings:
    return web_settings(redis_url, prefix, auth="jwt", jwt_secret=SECRET, max_active_per_owner=3)


@pytest_asyncio.fixture
async def client(settings_: Settings) -> AsyncIterator[Client]:
    async with app_client(settings_) as c:
        c.headers["Authorization"] = f"Bearer {make_token(settings_, 'root', [settings_.admin_role])}"
        yield c


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


WORDS = b'{"type":"demo.wordcount","input":{"text":"'
DEEP_JWT = ".".join([_b64(b'{"alg":"HS256","x":' + nested(900) + b"}"), _b64(b"{}"), "c2ln"])

BODIES: list[tuple[str, bytes, int]] = [
    ("input nested past the limit", b'{"type":"demo.sleep","input":' + nested(MAX_JSON_DEPTH) + b"}", 400),
    ("input nested 1,000 deep", b'{"type":"demo.sleep","input":' + nested(1000) + b"}", 400),
    ("objects nested 50,000 deep", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
    ("brackets that never close", b"[" * 100_000, 400),
    ("brackets inside strings do not count", WORDS + b"[" * 5000 + b'"}}', 202),
    ("input nested within the limit", b'{"type":"demo.sleep","input":' + nested(100) + b"}", 422),
    ("empty", b"", 400),
    ("not JSON", b"{type: demo.sleep}", 400),
    ("invalid UTF-8", b'{"type":"demo.noop","input":{"\xff":1}}', 400),
    ("a lone surrogate", b'{"type":"demo.wordcount","input":{"text":"\\ud800"}}', 400),
    ("NaN", b'{"type":"demo.sleep","input":{"seconds":NaN}}', 400),
    ("a number too large for a float", b'{"type":"demo.sleep","input":{"seconds":1e400}}', 422),
    ("an integer of 5,000 digits", b'{"type":"demo.sleep","input":{"steps":' + b"9" * 5000 + b"}}", 422),
    ("a whole-number float for an integer", b'{"type":"demo.sleep","input":{"steps":5.0}}', 202),
    ("null", b"null", 422),
    ("an array", b"[]", 422),
    ("a string", b'"demo.sleep"', 422),
    ("a type name of 10,000 characters", b'{"type":"' + b"t" * 10_000 + b'"}', 422),
    ("an unknown field", b'{"type":"demo.noop","priority":1}', 422),
    ("delay and run_at both", b'{"type":"demo.noop","delay_seconds":1,"run_at":"2030-01-01T00:00:00Z"}', 422),
    ("a delay of 1e308 seconds", b'{"type":"demo.noop","delay_seconds":1e308}', 422),
    ("run_at in year 9999", b'{"type":"demo.noop","run_at":"9999-12-31T23:59:59+14:00"}', 422),
    ("run_at in year 1 (means now)", b'{"type":"demo.noop","run_at":"0001-01-01T00:00:00-14:00"}', 202),
    ("run_at without an offset", b'{"type":"demo.noop","run_at":"2030-01-01T00:00:00"}', 422),
    ("NUL in a string", b'{"type":"demo.wordcount","input":{"text":"a\\u0000b"}}', 202),
    ("a body over the size limit", WORDS + b"x" * 1_100_000 + b'"}}', 413),
]


@pytest.mark.parametrize(("body", "status"), [(b, s) for _, b, s in BODIES], ids=[n for n, _, _ in BODIES])
async def test_hostile_create_bodies_get_a_4xx_problem(client: Client, body: bytes, status: int) -> None:
    response = await client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:300]
    if status >= 400:
        assert response.headers["content-type"] == PROBLEM_JSON


REQUESTS: list[tuple[str, str, str, dict[str, str], int]] = [
    # (name, method, url, headers, status); {job} is a job of the caller's
    ("wait=nan", "GET", "/jobs/{job}?wait=nan", {}, 400),
    ("wait=-1", "GET", "/jobs/{job}?wait=-1", {}, 400),
    ("wait=1e309", "GET", "/jobs/{job}?wait=1e309", {}, 400),
    ("limit=10**30", "GET", f"/jobs?limit={10**30}", {}, 400),
    ("status=BOGUS", "GET", "/jobs?status=BOGUS", {}, 400),
    ("a malformed cursor", "GET", "/jobs?cursor=1%00.x", {}, 400),
    ("owner of 10,000 characters", "GET", "/jobs?owner=" + "o" * 10_000, {}, 200),
    ("owner with invalid UTF-8", "GET", "/jobs?owner=%ED%A0%80", {}, 200),
    ("Idempotency-Key of 300 characters", "POST", "/jobs", {"Idempotency-Key": "k" * 300}, 400),
    ("Last-Event-ID of 5,000 digits", "GET", "/jobs/{job}/events", {"Last-Event-ID": "9" * 5000}, 400),
    ("If-None-Match of 30,000 bytes", "GET", "/jobs/{job}", {"If-None-Match": "W/" * 15_000}, 200),
    ("a job id of 5,000 characters", "GET", "/jobs/" + "a" * 5000, {}, 404),
    ("a job id with NUL", "GET", "/jobs/%00", {}, 404),
    ("a path that climbs", "GET", "/jobs/..%2F..%2Fetc%2Fpasswd", {}, 404),
    ("a body where none is read", "POST", "/jobs/{job}/cancel", {}, 200),
    ("a JWT whose header nests 900 deep", "GET", "/jobs", {"Authorization": f"Bearer {DEEP_JWT}"}, 401),
    ("a bearer token of 100,000 bytes", "GET", "/jobs", {"Authorization": "Bearer " + "a" * 100_000}, 401),
    ("the Token scheme", "GET", "/jobs", {"Authorization": "Token abc"}, 401),
    ("a stream token nested 900 deep", "GET", f"/events?token={DEEP_JWT}", {"Authorization": ""}, 401),
    ("a wrong method", "DELETE", "/jobs/{job}", {}, 405),
]


@pytest.mark.parametrize(
    ("method", "url", "headers", "status"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
async def test_hostile_parameters_and_headers_get_a_4xx(
    client: Client, method: str, url: str, headers: dict[str, str], status: int
) -> None:
    if "{job}" in url:
        job = (await client.post("/jobs", json={"type": "demo.sleep"})).json()
        url = url.format(job=job["id"])
    if headers.get("Authorization") == "":
        del client.headers["Authorization"]
        headers = {k: v for k, v in headers.items() if k != "Authorization"}
    content = b"[" * 100_000 if method == "POST" and url.endswith("/cancel") else None
    json_body: Any = {"type": "demo.noop"} if url == "/jobs" and method == "POST" else None
    response = await client.request(method, url, headers=headers, content=content, json=json_body)
    assert response.status_code == status, response.text[:300]


async def test_over_the_quota_is_429_with_retry_after(client: Client) -> None:
    for _ in range(3):
        assert (await client.post("/jobs", json={"type": "demo.sleep"})).status_code == 202
    refused = await client.post("/jobs", json={"type": "demo.sleep"})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["content-type"] == PROBLEM_JSON


def test_nesting_is_measured_exactly_and_cheaply() -> None:
    assert not nests_too_deep(nested(MAX_JSON_DEPTH - 1, b"{}"))
    assert nests_too_deep(nested(MAX_JSON_DEPTH, b"{}"))
    assert not nests_too_deep(b'["' + b"]" * 500 + b'\\"' + b"[" * 500 + b'"]')  # brackets in a string
    assert not nests_too_deep(b"[]" * 300_000)  # wide, not deep
    assert nests_too_deep(nested(20) * 1000 + nested(MAX_JSON_DEPTH + 1))


# -- the stream-token reader and log redaction agree on every spelling of ``token`` ----------

_SECRET_VALUE = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln"


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """``token`` or ``access_token`` in any case, each character possibly percent-encoded."""
    name = draw(st.sampled_from(["token", "access_token"]))
    spelled = ""
    for letter in name:
        char = letter.upper() if draw(st.booleans()) else letter
        spelled += f"%{ord(char):02X}" if draw(st.booleans()) else char
    return spelled


@settings(max_examples=200, deadline=None)
@given(name=spellings(), before=st.sampled_from(["", "a=1&", "x=y;"]))
def test_every_token_spelling_the_reader_takes_is_redacted(name: str, before: str) -> None:
    query = f"{before}{name}={_SECRET_VALUE}"
    assert query_token(query) == _SECRET_VALUE
    line = redact(f'127.0.0.1:5 - "GET /jobs/x/events?{query} HTTP/1.1" 200')
    assert _SECRET_VALUE not in line
    assert f"{name}={REDACTED}" in line


@settings(max_examples=200, deadline=None)
@given(name=st.text(alphabet=string.ascii_letters + "%_+.-[]", min_size=1, max_size=14))
def test_a_parameter_the_reader_ignores_is_left_as_it_is(name: str) -> None:
    query = f"{name}={_SECRET_VALUE}"
    try:
        taken = query_token(query)
    except StreamTokenError:  # pragma: no cover - one parameter is never two
        taken = None
    redacted = _SECRET_VALUE not in redact(f"/x?{query}")
    assert (taken is not None) == redacted


def test_two_token_parameters_are_refused_and_both_redacted() -> None:
    query = f"token=a1&%74oken={_SECRET_VALUE}"
    with pytest.raises(StreamTokenError):
        query_token(query)
    assert redact(f"/x?{query}") == f"/x?token={REDACTED}&%74oken={REDACTED}"
