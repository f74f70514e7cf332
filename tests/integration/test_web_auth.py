"""Bearer-JWT auth: owners see only their own jobs (404 otherwise), admins see everyone's."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from broker.settings import Settings, load_settings
from tests.support.web_support import PROBLEM_JSON, SECRET, app_client, assert_hidden, web_settings
from web.app import create_app
from web.auth import make_token
from web.live.stream_tokens import STREAM_AUDIENCE

pytestmark = pytest.mark.timeout(60)

Client = AsyncTestClient[Litestar]


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    return web_settings(redis_url, prefix, auth="jwt", jwt_secret=SECRET)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with app_client(settings) as c:
        yield c


def bearer(settings: Settings, sub: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings, sub, roles)}"}


async def create_as(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/jobs", json={"type": "demo.sleep"}, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_the_token_subject_owns_the_job(client: Client, settings: Settings) -> None:
    job = await create_as(client, bearer(settings, "alice"))
    assert job["owner"] == "alice"


LONG_SECRET = "a-secret-long-enough-for-hs512-which-needs-sixty-four-bytes-or-more"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
async def test_the_create_answer_carries_a_stream_token_for_that_job(
    redis_url: str, prefix: str, algorithm: str
) -> None:
    settings = web_settings(redis_url, prefix, auth="jwt", jwt_secret=LONG_SECRET, jwt_algorithm=algorithm)
    async with app_client(settings) as client:
        job = await create_as(client, bearer(settings, "alice", settings.admin_role))
    token = job["stream_token"]
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "typ": "JWT"}
    claims = jwt.decode(token, LONG_SECRET, algorithms=[algorithm], audience=STREAM_AUDIENCE)
    assert claims.pop("exp") - claims.pop("iat") == settings.stream_token_ttl_seconds
    assert claims == {"sub": "alice", "admin": True, "aud": STREAM_AUDIENCE, "scope": f"job:{job['id']}"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, LONG_SECRET + "x", algorithms=[algorithm], audience=STREAM_AUDIENCE)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"jwt_secret": "x"}, "1 bytes; HS256 needs at least 32"),
        ({"jwt_secret": "s" * 31}, "31 bytes; HS256 needs at least 32"),
        ({"jwt_secret": "s" * 47, "jwt_algorithm": "HS384"}, "HS384 needs at least 48"),
        ({"jwt_secret": "s" * 63, "jwt_algorithm": "HS512"}, "HS512 needs at least 64"),
        ({"jwt_secret": "s" * 64, "jwt_algorithm": "RS256"}, "'RS256' is not supported"),
        ({"jwt_secret": "s" * 64, "jwt_algorithm": "none"}, "'none' is not supported"),
        ({"jwt_secret": SECRET, "metrics_token": "short"}, "METRICS_TOKEN must be at least 32 bytes"),
    ],
)
def test_the_app_refuses_to_start_with_a_weak_key_or_an_algorithm_it_cannot_sign_with(
    redis_url: str, prefix: str, overrides: dict[str, str], complaint: str
) -> None:
    settings = Settings(redis_url=redis_url, prefix=prefix, auth="jwt", **overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(complaint)):
        create_app(settings)


def test_the_environment_names_only_hmac_algorithms() -> None:
    with pytest.raises(msgspec.ValidationError, match="jwt_algorithm"):
        load_settings({"JOBSTREAM_JWT_ALGORITHM": "RS256"})


async def test_another_owner_gets_404_on_every_route(client: Client, settings: Settings) -> None:
    job = await create_as(client, bearer(settings, "alice"))
    bob = bearer(settings, "bob")
    for method, path in [("GET", ""), ("GET", "/result"), ("POST", "/cancel")]:
        await assert_hidden(client, method, f"/jobs/{{id}}{path}", job["id"], bob)
    listed = (await client.get("/jobs", headers=bob)).json()
    assert listed["jobs"] == []
    assert (await client.get("/jobs", params={"owner": "alice"}, headers=bob)).status_code == 403
    still = await client.get(f"/jobs/{job['id']}", headers=bearer(settings, "alice"))
    assert still.json()["status"] == "PENDING"


async def test_admin_sees_lists_and_cancels_anyones_job(client: Client, settings: Settings) -> None:
    job = await create_as(client, bearer(settings, "alice"))
    admin = bearer(settings, "root", "ops", settings.admin_role)
    assert (await client.get(f"/jobs/{job['id']}", headers=admin)).json()["owner"] == "alice"
    assert (await client.get(f"/jobs/{job['id']}/result", headers=admin)).status_code == 202
    listed = (await client.get("/jobs", params={"owner": "alice"}, headers=admin)).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    cancelled = await client.post(f"/jobs/{job['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"


async def test_a_role_that_is_not_admin_grants_nothing(client: Client, settings: Settings) -> None:
    job = await create_as(client, bearer(settings, "alice"))
    viewer = bearer(settings, "carol", "viewer")
    await assert_hidden(client, "GET", "/jobs/{id}", job["id"], viewer)


def forged(settings: Settings, **claims: Any) -> dict[str, str]:
    now = datetime.now(UTC)
    payload = {"sub": "alice", "iat": now, "exp": now + timedelta(minutes=5), **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic YWxpY2U6cHc="},
        {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "alice", "exp": 4102444800, "iat": 0}, "wrong-secret-" * 3)
        },
        "expired",
        "roles-not-a-list",
        "no-subject",
    ],
)
async def test_missing_or_bad_tokens_are_401_problems(
    client: Client, settings: Settings, headers: dict[str, str] | str
) -> None:
    if headers == "expired":
        headers = forged(settings, exp=datetime.now(UTC) - timedelta(seconds=5))
    elif headers == "roles-not-a-list":
        headers = forged(settings, roles="admin")
    elif headers == "no-subject":
        headers = forged(settings, sub="")
    assert isinstance(headers, dict)
    response = await client.get("/jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_remembered_token_is_refused_once_it_expires(client: Client, settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {make_token(settings, 'alice', ttl=timedelta(seconds=2))}"}
    assert (await client.get("/jobs", headers=headers)).status_code == 200
    assert (await client.get("/jobs", headers=headers)).status_code == 200  # from the verified tokens
    deadline = time.monotonic() + 10
    while (response := await client.get("/jobs", headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "the token outlived its exp"
        await asyncio.sleep(0.05)
    assert response.status_code == 401


async def test_public_routes_need_no_token(client: Client) -> None:
    for path in ["/healthz", "/readyz", "/", "/schema", "/schema/openapi.json"]:
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/tasks")).status_code == 401


async def test_tokens_never_reach_the_logs(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token(settings, "alice")
    with caplog.at_level(logging.DEBUG):
        job = await create_as(client, {"Authorization": f"Bearer {token}"})
        await client.get(f"/jobs/{job['id']}", headers={"Authorization": f"Bearer {token}x"})
    assert caplog.records
    assert token not in caplog.text


def test_make_token_needs_a_secret(redis_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        make_token(web_settings(redis_url, prefix), "alice")


def test_make_token_puts_roles_in_a_top_level_claim(settings: Settings) -> None:
    claims = jwt.decode(make_token(settings, "alice", ["admin"]), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["admin"]
    assert claims["exp"] > claims["iat"]
