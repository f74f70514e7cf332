"""The dashboard and the browser client, in Debian's chromium driven by Playwright.

One web process (JWT auth) and one worker serve the whole module; each test has its own
user, so it sees only its own jobs. The browser is the system's ``chromium`` (CI installs
it with apt); Playwright never downloads one.

Playwright's async API, on the module's one event loop (pytest-asyncio, loop scope
"module"): no second loop of Playwright's own in the process. scripts/test still runs
these tests in a pytest process of their own, so a stuck browser cannot hold the rest.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright, expect

from broker.settings import load_settings
from devtools.embedded_redis import EmbeddedRedis
from tests.support.procs import WebServer, start_worker, stop
from tests.support.web_support import SECRET
from web.auth import make_token

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_MS = 20_000


@dataclass
class Stack:
    base_url: str
    prefix: str
    log: Path

    def token(self, user: str) -> str:
        return make_token(load_settings({}, auth="jwt", jwt_secret=SECRET), user)

    async def create(self, user: str, task: str, data: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"{self.base_url}/jobs",
                json={"type": task, "input": data},
                headers={"Authorization": f"Bearer {self.token(user)}"},
            )
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    log = tmp_path_factory.mktemp("dashboard") / "procs.log"
    env = {"JOBSTREAM_AUTH": "jwt", "JOBSTREAM_JWT_SECRET": SECRET}
    web = WebServer(redis_server.url, prefix, env, log)
    worker = start_worker(redis_server.url, prefix, env=env, log=log)
    try:
        web.start()
        yield Stack(web.url, prefix, log)
    finally:
        stop(worker)
        web.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed for the browser tests (apt-get install chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
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


async def sign_in(page: Page, stack: Stack, user: str, query: str = "") -> None:
    await page.goto(f"{stack.base_url}/{query}")
    await expect(page.locator("#mode")).to_have_text("token needed")
    await page.fill("#token", stack.token(user))
    await page.click("#token-form button")


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def abort_event_streams(page: Page) -> None:
    """Make SSE impossible (a proxy that drops it): the page must fall back to polling."""

    async def refuse(route: Route) -> None:
        await route.abort()

    await page.route("**/events**", refuse)


RECORD_STEPS = """() => {
    window.steps = [];
    new MutationObserver(() => {
        const text = document.querySelector("#jobs tr .message")?.textContent;
        if (text && text !== window.steps.at(-1)) window.steps.push(text);
    }).observe(document.getElementById("jobs"), { childList: true, subtree: true });
}"""


async def test_dashboard_creates_a_job_and_shows_it_live(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await expect(page.locator("#mode")).to_have_text("live")
    await page.select_option("#task-type", "demo.sleep")
    await expect(page.locator("#task-input")).to_have_value('{"seconds":1,"steps":10}')
    await page.fill("#task-input", '{"seconds": 2, "steps": 8}')
    await page.evaluate(RECORD_STEPS)
    await page.click("#create")
    row = page.locator("#jobs tr")
    await expect(row).to_have_count(1)
    await expect(row.locator(".status")).to_have_text("SUCCESS")
    # The steps in between were pushed over SSE as they happened; the page never reloaded.
    steps = await page.evaluate("window.steps")
    assert len(steps) >= 4, steps
    assert steps[-1] == "step 8 of 8"
    await expect(row.locator(".progress")).to_have_text("100%")
    await row.locator(".id a").click()
    await expect(page.locator("#details-body")).to_contain_text('"slept": 2')


async def test_dashboard_sees_jobs_created_elsewhere_and_cancels_them(page: Page, stack: Stack) -> None:
    name = user()
    await sign_in(page, stack, name)
    await expect(page.locator("#mode")).to_have_text("live")
    job = await stack.create(name, "demo.sleep", {"seconds": 30, "steps": 30})
    await stack.create(user(), "demo.noop", {})  # someone else's job: never shown
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    await expect(row.locator(".status")).to_have_text("PROCESSING")
    await row.locator("button.cancel").click()
    await expect(row.locator(".status")).to_have_text("CANCELLED")
    await expect(page.locator("#jobs tr")).to_have_count(1)


async def test_dashboard_falls_back_to_polling_without_sse(page: Page, stack: Stack) -> None:
    name = user()
    await abort_event_streams(page)
    await sign_in(page, stack, name)
    await expect(page.locator("#mode")).to_have_text("polling")
    job = await stack.create(name, "demo.sleep", {"seconds": 0.5, "steps": 2})
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    await expect(row.locator(".status")).to_have_text("SUCCESS")


async def test_dashboard_shows_a_refused_input(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await page.select_option("#task-type", "demo.sleep")
    await page.fill("#task-input", '{"seconds": -1}')
    await page.click("#create")
    await expect(page.locator("#create-error")).to_contain_text("seconds")
    await page.fill("#task-input", "{not json")
    await page.click("#create")
    await expect(page.locator("#create-error")).to_have_text("The input is not valid JSON.")
    await expect(page.locator("#jobs tr")).to_have_count(0)


FOLLOW = """async ([token, transport]) => {
    const { Jobstream } = await import("./static/jobstream.js");
    const client = new Jobstream({ token, transport, sseOpenTimeoutMs: 500 });
    const job = await client.createJob("demo.sleep", { seconds: 2, steps: 4 });
    const seen = [];
    const modes = [];
    const done = await client.follow(job, {
        onUpdate: (update, mode) => seen.push([update.version, update.status, mode]),
        onMode: (mode) => modes.push(mode),
    });
    return { done, seen, modes };
}"""


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "sse-refused"])
async def test_client_follows_a_job_to_the_end(page: Page, stack: Stack, sse: bool) -> None:
    if not sse:
        await abort_event_streams(page)
    await page.goto(f"{stack.base_url}/")
    outcome = await page.evaluate(FOLLOW, [stack.token(user()), "auto"])
    assert outcome["done"]["status"] == "SUCCESS"
    assert outcome["done"]["result"] == {"slept": 2.0}
    assert outcome["modes"] == (["sse"] if sse else ["poll"])
    versions = [version for version, _, _ in outcome["seen"]]
    assert versions == sorted(set(versions))  # each state once, never going back
    assert [status for _, status, _ in outcome["seen"]][-1] == "SUCCESS"
    assert any(status == "PROCESSING" for _, status, _ in outcome["seen"])
    transports = {mode for _, _, mode in outcome["seen"]} - {"initial"}
    assert transports == ({"sse"} if sse else {"poll"})


async def test_client_reports_a_job_it_cannot_see(page: Page, stack: Stack) -> None:
    job = await stack.create(user(), "demo.noop", {})
    await page.goto(f"{stack.base_url}/")
    status = await page.evaluate(
        """async ([token, id]) => {
            const { Jobstream } = await import("./static/jobstream.js");
            try { await new Jobstream({ token }).follow(id); return "followed"; }
            catch (err) { return err.status; }
        }""",
        [stack.token(user()), job["id"]],
    )
    assert status == 404
