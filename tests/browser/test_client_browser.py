"""The browser client (``web/static/jobstream.js``) in Debian's chromium: following a job over
SSE or polling and back, resuming saved jobs after a reload, catching up when a hidden or
offline page comes back, giving up after ``timeoutMs``, and the React hook's example.

Each test has its own user on the session's stack, so it sees only its own jobs.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pytest
from playwright.async_api import Page, Request, Route, expect

from devtools.embedded_redis import EmbeddedRedis
from tests.browser.helpers import JWT_ENV, SET_VISIBILITY, Stack, abort_event_streams, open_blank, user
from tests.support.procs import WebServer

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="session")]
T = TypeVar("T")


async def bounded(outcome: Awaitable[T], seconds: float = 20.0) -> T:
    """What the page's promise settles with; a failure, not a hang, if it does not in time."""
    return await asyncio.wait_for(outcome, seconds)


FOLLOW = """async ([token, transport]) => {
    const { Jobstream } = await import("/static/jobstream.js");
    const client = new Jobstream({ token, transport, sseOpenTimeoutMs: 500 });
    const job = await client.createJob("demo.sleep", { seconds: 2, steps: 4 });
    const seen = [];
    const modes = [];
    const done = await client.follow(job, {
        onUpdate: (update, how) => seen.push([update.version, update.status, how]),
        onMode: (mode) => modes.push(mode),
    });
    return { done, seen, modes };
}"""


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "sse-refused"])
async def test_client_follows_a_job_to_the_end(page: Page, stack: Stack, sse: bool) -> None:
    if not sse:
        await abort_event_streams(page)
    await page.goto(f"{stack.base_url}/")  # the dashboard's page: the client under its CSP
    outcome = await bounded(page.evaluate(FOLLOW, [stack.token(user()), "auto"]))
    assert outcome["done"]["status"] == "SUCCESS"
    assert outcome["done"]["result"] == {"slept": 2.0}
    assert outcome["modes"] == (["sse"] if sse else ["poll"])
    versions = [version for version, _, _ in outcome["seen"]]
    assert versions == sorted(set(versions))  # each state once, never going back
    assert [status for _, status, _ in outcome["seen"]][-1] == "SUCCESS"
    assert any(status == "PROCESSING" for _, status, _ in outcome["seen"])
    transports = {how for _, _, how in outcome["seen"]} - {"initial"}
    assert transports == ({"sse"} if sse else {"poll"})


FOLLOW_SOMEONE_ELSES = """async ([token, id]) => {
    const { Jobstream } = await import("/static/jobstream.js");
    try { await new Jobstream({ token }).follow(id); return "followed"; }
    catch (err) { return err.status; }
}"""


async def test_client_reports_a_job_it_cannot_see(page: Page, stack: Stack) -> None:
    job = await stack.create(user(), "demo.noop", {})
    await open_blank(page, stack.base_url)
    status = await bounded(page.evaluate(FOLLOW_SOMEONE_ELSES, [stack.token(user()), job["id"]]))
    assert status == 404


async def test_follow_returns_to_sse_once_it_works_again(page: Page, stack: Stack) -> None:
    name = user()
    job = await stack.create(name, "demo.sleep", {"seconds": 3, "steps": 6})
    await abort_event_streams(page, "**/jobs/*/events**")
    await open_blank(page, stack.base_url)
    await page.evaluate(
        """([token, job]) => {
            window.log = [];
            window.followed = import("/static/jobstream.js").then(({ Jobstream }) =>
                new Jobstream({ token, sseMaxErrors: 1, sseRetryMs: 500 }).follow(job, {
                    onUpdate: (update, how) => window.log.push(["update", update.status, how]),
                    onMode: (mode) => window.log.push(["mode", mode]),
                }));
        }""",
        [stack.token(name), job],
    )
    await page.wait_for_function("window.log.some(([kind, mode]) => kind === 'mode' && mode === 'poll')")
    await page.unroute("**/jobs/*/events**")
    done = await bounded(page.evaluate("window.followed"))
    log = await page.evaluate("window.log")
    assert done["status"] == "SUCCESS"
    modes = [entry[1] for entry in log if entry[0] == "mode"]
    assert modes == ["poll", "sse"], log
    after_sse = log[log.index(["mode", "sse"]) :]
    assert {entry[2] for entry in after_sse if entry[0] == "update"} == {"sse"}, log  # polling stopped
    assert ["update", "SUCCESS", "sse"] in after_sse


STORAGE_KEY = "jobstream.jobs:/"
RESUME_ALL = """async ([token, key, gone]) => {
    const saved = JSON.parse(localStorage.getItem(key));
    localStorage.setItem(key, JSON.stringify([...saved, { id: gone, type: null, savedAt: "" }]));
    const { Jobstream } = await import("/static/jobstream.js");
    const client = new Jobstream({ token });
    const before = client.persisted().map((entry) => entry.id);
    const updates = [];
    const ended = await client.resumeAll({ onUpdate: (j, how) => updates.push([j.status, how]) });
    return { before, ended, updates, after: client.persisted(), left: localStorage.getItem(key) };
}"""


async def test_a_persisted_job_resumes_after_a_reload(page: Page, stack: Stack) -> None:
    name = user()
    token = stack.token(name)
    job = await stack.create(name, "demo.sleep", {"seconds": 3, "steps": 6})
    await open_blank(page, stack.base_url)
    await page.evaluate(
        """async ([token, job]) => {
            const { Jobstream } = await import("/static/jobstream.js");
            window.statuses = [];
            const onUpdate = (j) => window.statuses.push(j.status);
            new Jobstream({ token }).follow(job, { persist: true, onUpdate });
        }""",
        [token, job],
    )
    await page.wait_for_function("window.statuses.includes('PROCESSING')")
    saved = await page.evaluate(f"JSON.parse(localStorage.getItem('{STORAGE_KEY}'))")
    assert [entry["id"] for entry in saved] == [job["id"]]

    await page.reload()
    gone = str(uuid.uuid4())  # a saved job the server does not know (expired): forgotten
    outcome = await bounded(page.evaluate(RESUME_ALL, [token, STORAGE_KEY, gone]))
    assert outcome["before"] == [job["id"], gone]
    assert [(ended["id"], ended["status"]) for ended in outcome["ended"]] == [(job["id"], "SUCCESS")]
    assert outcome["ended"][0]["result"] == {"slept": 3.0}
    assert outcome["updates"][0][0] == "PROCESSING"  # it was still running when the page came back
    assert outcome["updates"][-1] == ["SUCCESS", "sse"]
    assert outcome["after"] == [] and outcome["left"] is None  # ended jobs are not kept


@pytest.fixture(scope="module")
def restartable(
    redis_server: EmbeddedRedis, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    """A second web process on the stack's prefix (the stack's worker runs its jobs) that a
    test may kill and start again on the same port."""
    log = tmp_path_factory.mktemp("restartable") / "web.log"
    server = WebServer(redis_server.url, stack.prefix, JWT_ENV, log, restartable=True)
    try:
        server.start()
        yield server
    finally:
        server.close()


async def sleep_then_wake(page: Page, wake: str, asleep: bool) -> None:
    if wake == "visible":
        await page.evaluate(SET_VISIBILITY, asleep)
    else:
        await page.context.set_offline(asleep)  # back online fires the "online" event


@pytest.mark.parametrize("wake", ["visible", "online"])
async def test_a_page_that_comes_back_during_an_sse_outage_catches_up_with_one_request(
    page: Page, stack: Stack, restartable: WebServer, wake: str
) -> None:
    name = user()
    base = restartable.url
    job = await stack.create(name, "demo.sleep", {"seconds": 2.5, "steps": 2})
    await open_blank(page, base)
    await page.evaluate(
        """([token, job]) => {
            window.log = [];
            window.followed = import("/static/jobstream.js").then(({ Jobstream }) =>
                // never falls back to polling by itself: only the catch-up can bring the news
                new Jobstream({ token, sseMaxErrors: 1000 }).follow(job, {
                    onUpdate: (update, how) => window.log.push([update.status, how]),
                    onMode: (mode) => window.log.push(["mode", mode]),
                }));
        }""",
        [stack.token(name), job],
    )
    await page.wait_for_function("window.log.some(([status]) => status === 'PROCESSING')")
    await sleep_then_wake(page, wake, asleep=True)
    await abort_event_streams(page)  # the outage: no stream gets through any more...
    restartable.stop(signal.SIGKILL)  # ...and the open one dies with its server
    restartable.start()
    await stack.wait_status(name, job["id"], "SUCCESS")  # the job ended meanwhile
    assert ["SUCCESS", "sse"] not in await page.evaluate("window.log")

    reads: list[str] = []

    def on_request(request: Request) -> None:
        if urlparse(request.url).path.startswith("/jobs/"):
            reads.append(f"{request.method} {urlparse(request.url).path}")

    page.on("request", on_request)
    await sleep_then_wake(page, wake, asleep=False)
    done = await bounded(page.evaluate("window.followed"))
    assert done["status"] == "SUCCESS"
    assert (await page.evaluate("window.log"))[-1] == ["SUCCESS", "catch-up"]
    assert reads == [f"GET /jobs/{job['id']}"]  # one request, and the job had ended: nothing more


TIMEOUT = """async ([token, transport]) => {
    const { Jobstream, JobstreamTimeoutError } = await import("/static/jobstream.js");
    const counts = { calls: 0, open: 0, streams: [] };
    const realFetch = window.fetch;
    window.fetch = (...args) => {
        counts.calls += 1;
        counts.open += 1;
        return realFetch(...args).finally(() => { counts.open -= 1; });
    };
    window.EventSource = class extends window.EventSource {
        constructor(...args) { super(...args); counts.streams.push(this); }
    };
    const fast = { pollIntervalMs: 100, pollWaitSeconds: 1, sseRetryMs: 100 };
    const client = new Jobstream({ token, transport, ...fast });
    const job = await client.createJob("demo.sleep", { seconds: 30, steps: 30 });
    const started = performance.now();
    let error = null;
    try { await client.follow(job, { timeoutMs: 1000 }); } catch (err) { error = err; }
    const elapsed = performance.now() - started;
    const calls = counts.calls;
    // What a follow left running would do in this while: poll (every 100 ms) or retry SSE.
    await new Promise((resolve) => setTimeout(resolve, 600));
    return {
        id: job.id, elapsed, isTimeout: error instanceof JobstreamTimeoutError, name: error?.name,
        message: error?.message, jobId: error?.jobId, last: error?.job?.status,
        callsAfter: counts.calls - calls, open: counts.open,
        streams: counts.streams.map((source) => source.readyState),
    };
}"""


@pytest.mark.parametrize("transport", ["auto", "poll"])
async def test_timeout_rejects_and_stops_every_request(page: Page, stack: Stack, transport: str) -> None:
    name = user()
    await open_blank(page, stack.base_url)
    outcome = await bounded(page.evaluate(TIMEOUT, [stack.token(name), transport]))
    await stack.cancel(name, outcome["id"])  # the job itself kept running
    assert outcome["isTimeout"] and outcome["name"] == "JobstreamTimeoutError", outcome
    assert outcome["message"] == f"job {outcome['id']} did not end within 1000 ms (it may still be running)"
    assert outcome["jobId"] == outcome["id"]
    assert outcome["last"] in {"PENDING", "PROCESSING"}
    assert 1000 <= outcome["elapsed"] < 4000, outcome
    assert outcome["callsAfter"] == 0 and outcome["open"] == 0, outcome
    assert outcome["streams"] == ([2] if transport == "auto" else [])  # EventSource.CLOSED


REACT_PAGE = """<!doctype html>
<html lang="en"><head><title>useJob</title>
<script type="importmap">{"imports": {"react": "/__react__/react-shim.js"}}</script>
<script src="/__react__/react.js"></script>
<script src="/__react__/react-dom.js"></script>
</head><body><div id="root"></div></body></html>"""
REACT_SHIM = """const React = window.React;
export default React;
export const { createElement, useEffect, useState } = React;"""


async def serve_react(page: Page, base_url: str, tools: Path) -> None:
    """A page on the server's origin with React 18 (the npm tools' UMD builds) behind the bare
    specifier "react", as a bundler would resolve it."""
    umd = tools / "node_modules"
    files: dict[str, tuple[str, Any]] = {
        "index.html": ("text/html", REACT_PAGE),
        "react-shim.js": ("text/javascript", REACT_SHIM),
        "react.js": ("text/javascript", (umd / "react/umd/react.production.min.js").read_text()),
        "react-dom.js": ("text/javascript", (umd / "react-dom/umd/react-dom.production.min.js").read_text()),
    }

    async def serve(route: Route) -> None:
        content_type, body = files[urlparse(route.request.url).path.rsplit("/", 1)[-1]]
        await route.fulfill(content_type=content_type, body=body)

    await page.route(f"{base_url}/__react__/**", serve)
    await page.goto(f"{base_url}/__react__/index.html")


async def test_the_react_example_follows_a_job_with_use_job(page: Page, stack: Stack, tools: Path) -> None:
    name = user()
    job = await stack.create(name, "demo.sleep", {"seconds": 1.5, "steps": 3})
    await serve_react(page, stack.base_url, tools)
    await page.evaluate(
        """async ([token, id]) => {
            const { Jobstream } = await import("/static/jobstream.js");
            const { JobProgress } = await import("/static/examples/job-progress.js");
            const { createElement } = await import("react");
            const client = new Jobstream({ token });
            const root = ReactDOM.createRoot(document.getElementById("root"));
            root.render(createElement(JobProgress, { jobId: id, client }));
        }""",
        [stack.token(name), job["id"]],
    )
    await expect(page.locator("#root")).to_contain_text("keeps running if you close the page")
    await expect(page.locator("#root .step")).to_have_text("Finished: SUCCESS")
    assert await page.evaluate("document.querySelector('#root progress').value") == 100
    assert await page.evaluate(f"localStorage.getItem('{STORAGE_KEY}')") is None  # persisted until it ended
