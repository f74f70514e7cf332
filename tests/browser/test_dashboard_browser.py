"""The dashboard and the browser client, in Debian's chromium driven by Playwright.

One web process (JWT auth) and one worker serve the whole module; each test has its own
user, so it sees only its own jobs. The browser is the system's ``chromium`` (CI installs
it with apt); Playwright never downloads one.

The file name makes it run last: Playwright's sync API runs its own event loop in this
process, and in 2 of 3 fresh-clone CI runs an asyncio test after it
(test_each_tick_runs_on_one_replica_only) hung; suspected, not proven.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from broker.settings import load_settings
from tests.support.procs import free_port, start_web, start_worker, stop, wait_port
from tests.support.web_support import SECRET
from web.auth import make_token

pytestmark = pytest.mark.timeout(90)

TIMEOUT_MS = 20_000


@dataclass
class Stack:
    base_url: str
    prefix: str
    log: Path

    def token(self, user: str) -> str:
        return make_token(load_settings({}, auth="jwt", jwt_secret=SECRET), user)

    def create(self, user: str, task: str, data: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base_url}/jobs",
            json={"type": task, "input": data},
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    log = tmp_path_factory.mktemp("dashboard") / "procs.log"
    env = {"JOBSTREAM_AUTH": "jwt", "JOBSTREAM_JWT_SECRET": SECRET}
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = [
        start_web(redis_url, prefix, port, env=env, log=log),
        start_worker(redis_url, prefix, env=env, log=log),
    ]
    try:
        wait_port(port)
        yield Stack(f"http://127.0.0.1:{port}", prefix, log)
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed for the browser tests (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # Refused requests (401 before sign-in, aborted streams) are logged too; those are expected.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors  # no uncaught script errors, no Content-Security-Policy violations


def sign_in(page: Page, stack: Stack, user: str, query: str = "") -> None:
    page.goto(f"{stack.base_url}/{query}")
    expect(page.locator("#mode")).to_have_text("token needed")
    page.fill("#token", stack.token(user))
    page.click("#token-form button")


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def abort_event_streams(page: Page) -> None:
    """Make SSE impossible (a proxy that drops it): the page must fall back to polling."""

    def refuse(route: Route) -> None:
        route.abort()

    page.route("**/events**", refuse)


RECORD_STEPS = """() => {
    window.steps = [];
    new MutationObserver(() => {
        const text = document.querySelector("#jobs tr .message")?.textContent;
        if (text && text !== window.steps.at(-1)) window.steps.push(text);
    }).observe(document.getElementById("jobs"), { childList: true, subtree: true });
}"""


def test_dashboard_creates_a_job_and_shows_it_live(page: Page, stack: Stack) -> None:
    sign_in(page, stack, user())
    expect(page.locator("#mode")).to_have_text("live")
    page.select_option("#task-type", "demo.sleep")
    expect(page.locator("#task-input")).to_have_value('{"seconds":1,"steps":10}')
    page.fill("#task-input", '{"seconds": 2, "steps": 8}')
    page.evaluate(RECORD_STEPS)
    page.click("#create")
    row = page.locator("#jobs tr")
    expect(row).to_have_count(1)
    expect(row.locator(".status")).to_have_text("SUCCESS")
    # The steps in between were pushed over SSE as they happened; the page never reloaded.
    steps = page.evaluate("window.steps")
    assert len(steps) >= 4, steps
    assert steps[-1] == "step 8 of 8"
    expect(row.locator(".progress")).to_have_text("100%")
    row.locator(".id a").click()
    expect(page.locator("#details-body")).to_contain_text('"slept": 2')


def test_dashboard_sees_jobs_created_elsewhere_and_cancels_them(page: Page, stack: Stack) -> None:
    name = user()
    sign_in(page, stack, name)
    expect(page.locator("#mode")).to_have_text("live")
    job = stack.create(name, "demo.sleep", {"seconds": 30, "steps": 30})
    stack.create(user(), "demo.noop", {})  # someone else's job: never shown
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    expect(row.locator(".status")).to_have_text("PROCESSING")
    row.locator("button.cancel").click()
    expect(row.locator(".status")).to_have_text("CANCELLED")
    expect(page.locator("#jobs tr")).to_have_count(1)


def test_dashboard_falls_back_to_polling_without_sse(page: Page, stack: Stack) -> None:
    name = user()
    abort_event_streams(page)
    sign_in(page, stack, name)
    expect(page.locator("#mode")).to_have_text("polling")
    job = stack.create(name, "demo.sleep", {"seconds": 0.5, "steps": 2})
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    expect(row.locator(".status")).to_have_text("SUCCESS")


def test_dashboard_shows_a_refused_input(page: Page, stack: Stack) -> None:
    sign_in(page, stack, user())
    page.select_option("#task-type", "demo.sleep")
    page.fill("#task-input", '{"seconds": -1}')
    page.click("#create")
    expect(page.locator("#create-error")).to_contain_text("seconds")
    page.fill("#task-input", "{not json")
    page.click("#create")
    expect(page.locator("#create-error")).to_have_text("The input is not valid JSON.")
    expect(page.locator("#jobs tr")).to_have_count(0)


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
def test_client_follows_a_job_to_the_end(page: Page, stack: Stack, sse: bool) -> None:
    if not sse:
        abort_event_streams(page)
    page.goto(f"{stack.base_url}/")
    outcome = page.evaluate(FOLLOW, [stack.token(user()), "auto"])
    assert outcome["done"]["status"] == "SUCCESS"
    assert outcome["done"]["result"] == {"slept": 2.0}
    assert outcome["modes"] == (["sse"] if sse else ["poll"])
    versions = [version for version, _, _ in outcome["seen"]]
    assert versions == sorted(set(versions))  # each state once, never going back
    assert [status for _, status, _ in outcome["seen"]][-1] == "SUCCESS"
    assert any(status == "PROCESSING" for _, status, _ in outcome["seen"])
    transports = {mode for _, _, mode in outcome["seen"]} - {"initial"}
    assert transports == ({"sse"} if sse else {"poll"})


def test_client_reports_a_job_it_cannot_see(page: Page, stack: Stack) -> None:
    job = stack.create(user(), "demo.noop", {})
    page.goto(f"{stack.base_url}/")
    status = page.evaluate(
        """async ([token, id]) => {
            const { Jobstream } = await import("./static/jobstream.js");
            try { await new Jobstream({ token }).follow(id); return "followed"; }
            catch (err) { return err.status; }
        }""",
        [stack.token(user()), job["id"]],
    )
    assert status == 404
