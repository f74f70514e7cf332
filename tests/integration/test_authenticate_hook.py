"""``create_app(authenticate=...)``: the host app's own sessions or API keys decide the caller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.testing import AsyncTestClient

from broker.settings import Settings
from tests.support.web_support import web_settings
from web import User, create_app
from web.live.stream_tokens import StreamTokens

API_KEYS = {"key-alice": User(id="alice"), "key-bob": User(id="bob"), "key-root": User(id="root", admin=True)}

Client = AsyncTestClient[Litestar]


class ApiKeys:
    """A host's API-key check, counting its calls (sync or async, as the test picks)."""

    def __init__(self) -> None:
        self.calls = 0

    def check(self, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        self.calls += 1
        key = connection.headers.get("x-api-key", "")
        if key == "key-banned":
            raise PermissionDeniedException("this key is banned")
        if key == "key-broken":
            return "alice"  # type: ignore[return-value]
        return API_KEYS.get(key)

    async def check_async(self, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        return self.check(connection)


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    """JWT mode without any secret: the hook replaces the bearer check, so none is needed."""
    return web_settings(redis_url, prefix, auth="jwt")


@pytest.fixture
def keys() -> ApiKeys:
    return ApiKeys()


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, settings: Settings, keys: ApiKeys) -> AsyncIterator[Client]:
    hook = keys.check if request.param == "sync" else keys.check_async
    async with AsyncTestClient(create_app(settings, authenticate=hook)) as client:
        yield client


def as_(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def create(client: Client, key: str) -> dict[str, Any]:
    answer = await client.post("/jobs", json={"type": "demo.noop", "input": {}}, headers=as_(key))
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


async def test_the_hook_names_the_owner(client: Client) -> None:
    job = await create(client, "key-alice")
    assert job["owner"] == "alice"
    assert job["stream_token"]  # streams need a credential here, so the answer carries one
    assert (await client.get(f"/jobs/{job['id']}", headers=as_("key-alice"))).status_code == 200
    assert (await client.get(f"/jobs/{job['id']}", headers=as_("key-bob"))).status_code == 404
    assert (await client.get(f"/jobs/{job['id']}", headers=as_("key-root"))).json()["owner"] == "alice"


async def test_none_is_401_and_a_raised_refusal_is_kept(client: Client) -> None:
    assert (await client.get("/jobs")).status_code == 401
    assert (await client.get("/jobs", headers=as_("key-nobody"))).status_code == 401
    assert (await client.get("/jobs", headers=as_("key-banned"))).status_code == 403
    assert (await client.get("/jobs", headers=as_("key-broken"))).status_code == 500


async def test_a_bearer_jwt_is_not_a_credential_here(client: Client) -> None:
    answer = await client.get("/jobs", headers={"Authorization": "Bearer whatever"})
    assert answer.status_code == 401


async def test_health_and_docs_never_ask_the_hook(client: Client, keys: ApiKeys) -> None:
    for path in ("/healthz", "/readyz", "/schema/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    assert keys.calls == 0
    document = (await client.get("/schema/openapi.json")).json()
    assert "BearerToken" not in str(document)  # the host's credentials are not ours to name


async def test_streams_fall_back_to_stream_tokens(client: Client) -> None:
    job = await create(client, "key-alice")
    other = await create(client, "key-alice")
    cancelled = await client.post(f"/jobs/{job['id']}/cancel", headers=as_("key-alice"))
    assert cancelled.json()["status"] == "CANCELLED"  # terminal: the stream sends it and ends
    stream = await client.get(f"/jobs/{job['id']}/events", params={"token": job["stream_token"]})
    assert stream.status_code == 200
    assert '"status":"CANCELLED"' in stream.text
    assert (await client.get(f"/jobs/{job['id']}/events")).status_code == 401
    elsewhere = await client.get(f"/jobs/{other['id']}/events", params={"token": job["stream_token"]})
    assert elsewhere.status_code == 403
    bad = await client.get(f"/jobs/{job['id']}/events", params={"token": "x.y.z"})
    assert bad.status_code == 401


def test_stream_tokens_use_their_own_secret_in_every_process(settings: Settings) -> None:
    """With JOBSTREAM_STREAM_TOKEN_SECRET, a token minted by one web process opens streams on another."""
    with_secret = Settings(redis_url=settings.redis_url, prefix=settings.prefix, stream_token_secret="k" * 32)
    one = StreamTokens.for_settings(with_secret, credentials_checked=True)
    two = StreamTokens.for_settings(with_secret, credentials_checked=True)
    token, _ = one.mint("alice", admin=False, scope="owner")
    assert two.verify(token).sub == "alice"


def test_without_a_stream_secret_the_key_is_per_process_and_said_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="web.live.stream_tokens"):
        one = StreamTokens.for_settings(settings, credentials_checked=True)
    assert "JOBSTREAM_STREAM_TOKEN_SECRET" in caplog.text
    token, _ = one.mint("alice", admin=False, scope="owner")
    other = StreamTokens.for_settings(settings, credentials_checked=True)
    with pytest.raises(Exception, match="InvalidSignatureError"):
        other.verify(token)


def test_a_short_stream_secret_stops_the_app(settings: Settings, keys: ApiKeys) -> None:
    short = Settings(redis_url=settings.redis_url, prefix=settings.prefix, stream_token_secret="k" * 31)
    with pytest.raises(ValueError, match="JOBSTREAM_STREAM_TOKEN_SECRET is 31 bytes"):
        create_app(short, authenticate=keys.check)
