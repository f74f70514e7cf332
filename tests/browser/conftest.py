"""The browser tests' fixtures: one web process (JWT auth) and one worker, and one chromium,
for the whole browser session; a fresh browser context (storage, routes) per test.

The browser is Debian's ``chromium`` (CI installs it with apt); Playwright never downloads
one. Playwright's async API runs on the session's one event loop (pytest-asyncio, loop scope
"session"): no second loop of Playwright's own in the process. scripts/test runs these tests
in a pytest process of their own, so a stuck browser cannot hold the rest.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from devtools.embedded_redis import EmbeddedRedis
from tests.browser.helpers import ARTIFACTS, JWT_ENV, Stack, node_tools
from tests.support.procs import WebServer, start_worker, stop

TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    log = tmp_path_factory.mktemp("browser") / "procs.log"
    web = WebServer(redis_server.url, prefix, JWT_ENV, log)
    worker = start_worker(redis_server.url, prefix, env=JWT_ENV, log=log)
    try:
        web.start()
        yield Stack(web.url, prefix, log)
    finally:
        stop(worker)
        web.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed for the browser tests (apt-get install chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # Refused requests (401 before sign-in, aborted streams) are logged too; those are expected.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await context.close()
    assert errors == [], errors  # no uncaught script errors, no Content-Security-Policy violations


@pytest.fixture(scope="session")
def tools() -> Path:
    return node_tools()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
