"""Who may open a stream: bearer header, stream token in the query, or the stream cookie.

A real server with bearer-JWT auth and its access log on, so the last check of each test
can read what the server wrote and find no token in it. The tests share the module's
server, each with owners of its own (``user``, ``new_user()``) and the log lines written
since it began.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support.sse_support import Reader
from tests.support.web_stack import WebStack
from tests.support.web_support import JWT_SETTINGS, PROBLEM_JSON, SECRET, User, assert_hidden, new_user
from web.live.stream_tokens import STREAM_COOKIE, StreamTokens, job_scope

pytestmark = pytest.mark.timeout(60)


async def first_event(stack: WebStack, url: str, **headers: str) -> dict[str, Any]:
    """Open a stream, take its first event, leave."""
    reader = Reader(stack.http, url, headers)
    try:
        await reader.until(lambda r: bool(r.events), what="the first event")
        return reader.events[0]
    finally:
        await reader.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON


async def assert_no_token_logged(
    stack: WebStack, *tokens: str, users: tuple[User, ...] = (), queried: bool = True
) -> None:
    """The access log saw the token-bearing URLs (redacted, if ``queried``) and none of the tokens."""
    await stack.http.get("/healthz")  # the log line before it is written by now
    log = stack.log_text()
    assert ("token=[redacted]" in log) is queried, log
    for token in (*tokens, *(user.token for user in users)):
        assert token not in log
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", log), "a JWT reached the log"


async def test_a_job_token_opens_that_jobs_stream_and_no_other(module_stack: WebStack, user: User) -> None:
    stack = module_stack
    a = await stack.create("demo.sleep", **user.headers)
    b = await stack.create("demo.sleep", **user.headers)
    assert (await first_event(stack, f"/jobs/{a['id']}/events?token={a['stream_token']}"))["id"] == a["id"]

    other = await stack.http.get(f"/jobs/{b['id']}/events", params={"token": a["stream_token"]})
    assert_problem(other, 403)
    feed = await stack.http.get("/events", params={"token": a["stream_token"]})
    assert_problem(feed, 403)

    minted = await stack.http.post(f"/jobs/{b['id']}/stream-token", headers=user.headers)
    assert minted.status_code == 201
    grant = minted.json()
    assert grant["url"] == f"/jobs/{b['id']}/events?token={grant['token']}"
    left = datetime.fromisoformat(grant["expires_at"]) - datetime.now(UTC)
    assert 290 < left.total_seconds() <= 300
    assert (await first_event(stack, grant["url"]))["id"] == b["id"]
    await assert_no_token_logged(stack, a["stream_token"], b["stream_token"], grant["token"], users=(user,))


async def test_another_owner_gets_404_before_any_stream(module_stack: WebStack, user: User) -> None:
    stack, bob, admin = module_stack, new_user(), new_user(admin=True)
    job = await stack.create("demo.sleep", **user.headers)
    await assert_hidden(stack.http, "GET", "/jobs/{id}/events", job["id"], bob.headers)
    await assert_hidden(stack.http, "POST", "/jobs/{id}/stream-token", job["id"], bob.headers)
    bobs = (await stack.http.post("/events/stream-token", headers=bob.headers)).json()["token"]
    await assert_hidden(stack.http, "GET", f"/jobs/{{id}}/events?token={bobs}", job["id"])
    admins = await stack.http.post(f"/jobs/{job['id']}/stream-token", headers=admin.headers)
    assert (await first_event(stack, admins.json()["url"]))["owner"] == user.name
    await assert_no_token_logged(stack, bobs, admins.json()["token"], users=(user, bob, admin))


async def test_a_bearer_token_in_the_query_is_refused_and_a_stream_token_is_no_bearer(
    module_stack: WebStack, user: User
) -> None:
    stack = module_stack
    job = await stack.create("demo.sleep", **user.headers)
    url = f"/jobs/{job['id']}/events"
    for path in (url, "/events"):
        assert_problem(await stack.http.get(path, params={"token": user.token}), 401)
        assert_problem(await stack.http.get(path), 401)
        assert_problem(await stack.http.get(path, params={"token": "not-a-jwt"}), 401)
    owner = (await stack.http.post("/events/stream-token", headers=user.headers)).json()["token"]
    for token in (job["stream_token"], owner):
        assert_problem(await stack.http.get(f"/jobs/{job['id']}", headers=bearer(token)), 401)
        assert_problem(await stack.http.get(url, headers=bearer(token)), 401)
        minted = await stack.http.post(f"/jobs/{job['id']}/stream-token", headers=bearer(token))
        assert_problem(minted, 401)  # a stream token cannot renew itself
    assert (await first_event(stack, url, **user.headers))["id"] == job["id"]  # the header works
    await assert_no_token_logged(stack, job["stream_token"], owner, users=(user,))


async def test_a_stream_token_is_refused_once_it_expires(sse_stack: Any, user: User) -> None:
    # A stack of its own: it runs with a stream-token lifetime of its own.
    stack: WebStack = await sse_stack(jwt=True, stream_token_ttl_seconds="2")
    job = await stack.create("demo.sleep", **user.headers)
    grant = (await stack.http.post(f"/jobs/{job['id']}/stream-token", headers=user.headers)).json()
    assert (await first_event(stack, grant["url"]))["id"] == job["id"]
    expires_in = (datetime.fromisoformat(grant["expires_at"]) - datetime.now(UTC)).total_seconds()
    assert 0 < expires_in <= 2  # minted with the configured lifetime
    # The same token, as it is once its time is up: signed with the app's key, expired already.
    expired, _ = StreamTokens(SECRET, JWT_SETTINGS.jwt_algorithm, ttl_seconds=-1).mint(
        user.name, admin=False, scope=job_scope(job["id"])
    )
    assert_problem(await stack.http.get(f"/jobs/{job['id']}/events?token={expired}"), 401)
    await assert_no_token_logged(stack, grant["token"], expired, users=(user,))


async def test_the_stream_cookie_opens_the_owners_streams_only(module_stack: WebStack, user: User) -> None:
    stack, bob = module_stack, new_user()
    job = await stack.create("demo.sleep", **user.headers)
    bobs = await stack.create("demo.sleep", **bob.headers)
    minted = await stack.http.post("/events/stream-token", headers=user.headers)
    assert minted.status_code == 201
    set_cookie = minted.headers["set-cookie"]
    assert set_cookie.startswith(f"{STREAM_COOKIE}={minted.json()['token']};")
    attributes = {part.strip().lower() for part in set_cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/", "max-age=300"} <= attributes
    assert minted.json()["url"] == f"/events?token={minted.json()['token']}"

    async with httpx.AsyncClient(
        base_url=stack.base_url, cookies={STREAM_COOKIE: minted.json()["token"]}, timeout=10
    ) as browser:
        cookie_stack = WebStack(stack.server, browser)
        assert (await first_event(cookie_stack, "/events"))["id"] == job["id"]
        assert (await first_event(cookie_stack, f"/jobs/{job['id']}/events"))["id"] == job["id"]
        assert_problem(await browser.get(f"/jobs/{bobs['id']}/events"), 404)
        assert_problem(await browser.get(f"/jobs/{job['id']}"), 401)  # only the SSE routes take it
    await assert_no_token_logged(stack, minted.json()["token"], users=(user, bob), queried=False)


async def test_without_auth_streams_need_no_token_and_the_token_routes_still_mint(sse_stack: Any) -> None:
    stack: WebStack = await sse_stack()  # a stack of its own: auth is off
    job = await stack.create("demo.sleep")
    assert job["stream_token"] is None  # POST /jobs mints none: a stream needs none
    url = f"/jobs/{job['id']}/events"
    assert (await first_event(stack, url))["id"] == job["id"]
    minted = (await stack.http.post(f"{url.removesuffix('/events')}/stream-token")).json()
    assert (await first_event(stack, minted["url"]))["id"] == job["id"]
    grant = (await stack.http.post("/events/stream-token")).json()
    assert (await first_event(stack, grant["url"]))["id"] == job["id"]
    await assert_no_token_logged(stack, minted["token"], grant["token"])
