"""Helpers for the web tests: settings, in-process clients, key snapshots."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from broker.ids import new_job_id
from broker.settings import Settings, load_settings
from web.app import create_app
from web.auth import make_token

SECRET = "test-secret-of-at-least-thirty-two-bytes"
PROBLEM_JSON = "application/problem+json"
JWT_SETTINGS = load_settings({}, auth="jwt", jwt_secret=SECRET)


@dataclass(frozen=True)
class User:
    """A JWT subject of one test's own, so on a shared server it sees only its own jobs."""

    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_user(admin: bool = False) -> User:
    """``user-<uuid>`` with a bearer token signed with ``SECRET`` (the admin role if ``admin``)."""
    name = f"user-{uuid.uuid4().hex[:12]}"
    return User(name, make_token(JWT_SETTINGS, name, [JWT_SETTINGS.admin_role] if admin else []))


def web_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for one test: its Redis and prefix, no auth unless overridden."""
    values: dict[str, Any] = {"redis_url": redis_url, "prefix": prefix, "auth": "none", **overrides}
    return load_settings({}, **values)


@asynccontextmanager
async def app_client(settings: Settings, path_prefix: str = "") -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app in process (lifespan run), behind Litestar's async test client."""
    async with AsyncTestClient(create_app(settings, path_prefix=path_prefix)) as client:
        yield client


async def keys_under(redis: Redis, prefix: str) -> set[bytes]:
    """Every key under the test's prefix (SCAN, never KEYS)."""
    return {key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)}


async def job_keys(redis: Redis, prefix: str) -> set[bytes]:
    """The job record hashes under the test's prefix."""
    return {key async for key in redis.scan_iter(match=f"{prefix}{{p*}}:job:*", count=1000)}


async def assert_hidden(
    client: Any, method: str, path: str, job_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """``method path`` (``{id}`` standing for the job) answers for ``job_id`` exactly as for
    an id that does not exist: a 404 problem whose body matches the unknown id's once each
    id is replaced by a placeholder, so nothing (a detail, an ``instance``) tells that the
    job exists. ``client`` is an httpx or Litestar test client."""
    unknown_id = new_job_id()
    hidden = await client.request(method, path.format(id=job_id), headers=headers)
    unknown = await client.request(method, path.format(id=unknown_id), headers=headers)
    assert hidden.status_code == unknown.status_code == 404, (hidden.text, unknown.text)
    assert hidden.headers["content-type"] == unknown.headers["content-type"] == PROBLEM_JSON
    hidden_body = json.loads(hidden.text.replace(job_id, "<id>"))
    assert hidden_body == json.loads(unknown.text.replace(unknown_id, "<id>")), hidden_body
    return hidden
