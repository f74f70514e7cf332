"""CORS (``JOBSTREAM_CORS_ORIGINS``) on a real web process with bearer auth on.

A frontend on another origin gets preflights answered without credentials, on every route
(the SSE routes and ``/jobs`` included), its CORS headers on the answers it reads, the
credentials flag the stream cookie needs; an origin not on the list gets no
``Access-Control-Allow-Origin`` anywhere.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import MakeStack
from tests.support.web_stack import WebStack
from tests.support.web_support import new_user

ALLOWED = "https://app.example.com"
WILDCARD_MATCH = "https://tenant-7.example.org"
REFUSED = "https://evil.example.net"
ORIGINS = f"{ALLOWED}, https://*.example.org"
SENT_HEADERS = "authorization, content-type, idempotency-key, if-none-match, last-event-id"


@pytest.fixture
async def stack(sse_stack: MakeStack) -> WebStack:
    return await sse_stack(jwt=True, cors_origins=ORIGINS)


def preflight(origin: str, method: str = "GET") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": SENT_HEADERS,
    }


@pytest.mark.parametrize("origin", [ALLOWED, WILDCARD_MATCH])
async def test_preflights_of_every_kind_of_route_need_no_credentials(stack: WebStack, origin: str) -> None:
    paths = {
        "/jobs": "POST",
        "/jobs/some-id": "GET",
        "/jobs/some-id/events": "GET",
        "/events": "GET",
        "/events/stream-token": "POST",
        "/jobs/some-id/cancel": "POST",
    }
    for path, method in paths.items():
        answer = await stack.http.options(path, headers=preflight(origin, method))
        assert answer.status_code == 204, (path, answer.text)
        assert answer.headers["access-control-allow-origin"] == origin
        assert answer.headers["access-control-allow-credentials"] == "true"
        allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].lower().split(",")}
        assert set(SENT_HEADERS.split(", ")) <= allowed
        assert method in answer.headers["access-control-allow-methods"]


async def test_answers_to_an_allowed_origin_expose_what_clients_read(stack: WebStack) -> None:
    user = new_user()
    headers = {**user.headers, "Origin": ALLOWED}
    created = await stack.http.post("/jobs", json={"type": "demo.noop", "input": {}}, headers=headers)
    assert created.status_code == 202
    assert created.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
    assert {"location", "etag", "retry-after"} <= exposed
    unauthorized = await stack.http.get("/jobs", headers={"Origin": ALLOWED})
    assert unauthorized.status_code == 401  # an error still carries CORS headers: the page can read it
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED
    cookie = await stack.http.post("/events/stream-token", headers=headers)
    assert cookie.status_code == 201
    assert cookie.headers["access-control-allow-credentials"] == "true"
    assert "set-cookie" in cookie.headers


async def test_an_sse_stream_from_an_allowed_and_a_refused_origin(stack: WebStack) -> None:
    user = new_user()
    job = await stack.create("demo.noop", **user.headers)  # no worker: it stays PENDING, the stream open
    url = f"/jobs/{job['id']}/events?token={job['stream_token']}"
    async with stack.http.stream("GET", url, headers={"Origin": ALLOWED}) as allowed:
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/event-stream")
        assert allowed.headers["access-control-allow-origin"] == ALLOWED
        assert allowed.headers["access-control-allow-credentials"] == "true"
    async with stack.http.stream("GET", url, headers={"Origin": REFUSED}) as refused:
        assert "access-control-allow-origin" not in refused.headers


async def test_a_refused_origin_gets_no_allow_origin(stack: WebStack) -> None:
    answer = await stack.http.options("/jobs/some-id/events", headers=preflight(REFUSED))
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    user = new_user()
    listed = await stack.http.get("/jobs", headers={**user.headers, "Origin": REFUSED})
    assert listed.status_code == 200  # the server answers; the browser keeps it from the page
    assert "access-control-allow-origin" not in listed.headers


async def test_without_origins_there_are_no_cors_headers(sse_stack: MakeStack) -> None:
    stack = await sse_stack(jwt=True)
    answer = await stack.http.options("/jobs", headers=preflight(ALLOWED, "POST"))
    assert "access-control-allow-origin" not in answer.headers
    assert answer.status_code == 204
