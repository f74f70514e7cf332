"""What the browser tests share: the stack they drive, signing in, blocking SSE, and the
npm test tools (tsc, axe-core, React), installed with ``npm ci`` when missing."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, Route, expect

from broker.settings import load_settings
from tests.support.polling import until
from tests.support.web_support import SECRET
from web.auth import make_token

TOOLS = Path(__file__).parent / "tools"
ARTIFACTS = Path(__file__).parent / "artifacts"
"""Screenshots the tests save for people to look at (gitignored)."""
JWT_SETTINGS = load_settings({}, auth="jwt", jwt_secret=SECRET)
JWT_ENV = {"JOBSTREAM_AUTH": "jwt", "JOBSTREAM_JWT_SECRET": SECRET}
"""The environment of the browser tests' web and worker processes."""


@dataclass
class Stack:
    """A web process (JWT auth) and a worker on one key prefix."""

    base_url: str
    prefix: str
    log: Path

    def token(self, user: str, *, admin: bool = False) -> str:
        return make_token(JWT_SETTINGS, user, [JWT_SETTINGS.admin_role] if admin else [])

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    async def create(self, user: str, task: str, data: dict[str, Any], **options: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"type": task, "input": data, **options}
            response = await http.post(f"{self.base_url}/jobs", json=body, headers=self.headers(user))
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def get(self, user: str, job_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{self.base_url}/jobs/{job_id}", headers=self.headers(user))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def cancel(self, user: str, job_id: str) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{self.base_url}/jobs/{job_id}/cancel", headers=self.headers(user))
        assert response.status_code == 200, response.text

    async def wait_status(self, user: str, job_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            job = await self.get(user, job_id)
            return job if job["status"] == status else None

        return await until(reached, timeout, f"job {job_id} {status}", interval=0.1)


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def sign_in(page: Page, stack: Stack, name: str, *, admin: bool = False) -> None:
    await page.goto(f"{stack.base_url}/")
    await expect(page.locator("#mode")).to_have_text("token needed")
    await page.fill("#token", stack.token(name, admin=admin))
    await page.click("#token-form button")


# What a tab's hiding and showing again looks like to the page (``page.evaluate(SET_VISIBILITY, hidden)``).
SET_VISIBILITY = """(hidden) => {
    const state = hidden ? "hidden" : "visible";
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


async def abort_event_streams(page: Page, pattern: str = "**/events**") -> None:
    """Make SSE impossible (a proxy that drops it): the page must fall back to polling."""

    async def refuse(route: Route) -> None:
        await route.abort()

    await page.route(pattern, refuse)


def node_tools() -> Path:
    """``tests/browser/tools`` with its ``node_modules``: ``npm ci`` (exact versions from the
    committed lock) when they are missing or the lock changed since they were installed."""
    npm = shutil.which("npm")
    assert npm, "npm is needed for the browser tests' tools (Debian: apt-get install nodejs npm)"
    lock = hashlib.sha256((TOOLS / "package-lock.json").read_bytes()).hexdigest()
    stamp = TOOLS / "node_modules" / ".installed-lock-sha256"
    if not stamp.exists() or stamp.read_text() != lock:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TOOLS, check=True, timeout=300
        )
        stamp.write_text(lock)
    return TOOLS


BLANK_PATH = "/__test__/blank"


async def open_blank(page: Page, base_url: str) -> None:
    """An empty page on the server's origin (so the client's requests are same-origin), served
    by the browser's router: the tests' scripts run with no dashboard beside them."""

    async def serve(route: Route) -> None:
        await route.fulfill(content_type="text/html", body="<!doctype html><title>jobstream test</title>")

    await page.route(f"{base_url}{BLANK_PATH}", serve)
    await page.goto(f"{base_url}{BLANK_PATH}")
