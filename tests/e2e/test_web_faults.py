"""Faults, end to end: Redis going away and coming back, the web process restarting, stream caps.

Each test runs its own ``redis-server`` (AOF on, through ``EmbeddedRedis``) so it can stop
and restart it on the same port without touching the session Redis, and the web app in a
real uvicorn process, read with httpx (and httpx-sse for streams). Waits are on events or
deadline-bounded conditions; the only timed stretch is the outage itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.exceptions as redis_errors
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from broker.models import JobStatus
from broker.queues import ensure_groups
from broker.settings import load_settings
from broker.store import JobStore
from devtools.embedded_redis import EmbeddedRedis, free_port
from hub.event_hub import EventHub, Resync
from tests.support.polling import until
from tests.support.sse_support import ResumingReader, strictly_increasing
from tests.support.web_stack import WebStack, stack_env, terminal
from tests.support.web_support import PROBLEM_JSON
from web.problems import EXCEPTION_HANDLERS
from web.resources import REDIS_COMMAND_TIMEOUT_SECONDS

pytestmark = pytest.mark.timeout(90)

OUTAGE_SECONDS = 8.0
UNAVAILABLE_WITHIN = 1.0  # seconds: a 503 must come at least this fast
AFTER_RESTORE = 180

JobDict = dict[str, Any]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own (AOF on), to stop and restart on the same port."""
    server = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack(WebStack):
    """The shared stack on this test's own Redis, with clients that follow jobs and resume,
    and the workers' log kept apart from the web's."""

    readers: list[ResumingReader] = field(default_factory=list)

    def follow(self, job_id: str, seconds: float) -> ResumingReader:
        """A client following the job's stream for at most ``seconds``."""
        reader = ResumingReader(self.http, job_id, time.monotonic() + seconds)
        self.readers.append(reader)
        return reader

    def start_web(self) -> None:
        self.server.start()

    def stop_web(self) -> None:
        code = self.server.stop()
        assert code in (None, 0, -signal.SIGTERM), self.tail()  # uvicorn re-raises SIGTERM

    def start_worker(self, log: Path | None = None) -> subprocess.Popen[bytes]:
        return super().start_worker(log or self.log.with_name("workers.log"))

    async def until_job(self, job_id: str, done: Callable[[JobDict], bool], timeout: float) -> JobDict:
        try:
            return await self.wait(job_id, done, timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}; workers' log:\n{self.workers_tail()}") from None

    async def until_ready(self, timeout: float) -> float:
        """Poll ``/readyz`` until 200; returns how long it took."""
        started = time.monotonic()

        async def ready() -> bool:
            return (await self.http.get("/readyz")).status_code == 200

        await until(ready, timeout, "/readyz to answer 200", self.tail, interval=0.05)
        return time.monotonic() - started

    def workers_tail(self) -> str:
        log = self.log.with_name("workers.log")
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@pytest_asyncio.fixture
async def make_stack(own_redis: EmbeddedRedis, prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    stacks: list[Stack] = []

    async def make(**env: str) -> Stack:
        stack = Stack.open(own_redis.url, prefix, stack_env(**env), tmp_path / "web.log", restartable=True)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            for reader in stack.readers:
                reader.task.cancel()
                with suppress(BaseException):
                    await reader.task
            await stack.aclose()


def processing(job: JobDict) -> bool:
    return job["status"] == "PROCESSING"


# -- probing every route ----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    needs_redis: bool = True
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    probe: Probe
    status: int
    seconds: float
    content_type: str
    retry_after: str | None


async def ask(http: httpx.AsyncClient, probe: Probe, read_stream: bool = False) -> Answer:
    """One request; its status, headers and time to the response head (a stream is closed then,
    after its first bytes when ``read_stream``)."""
    started = time.monotonic()
    async with http.stream(probe.method, probe.path, json=probe.body, headers=probe.headers) as response:
        seconds = time.monotonic() - started
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            await response.aread()
        elif read_stream:
            await anext(response.aiter_bytes())
    return Answer(probe, response.status_code, seconds, kind, response.headers.get("retry-after"))


def every_route(running: JobDict, other: JobDict) -> list[Probe]:
    """Every route, with ``running`` (a PROCESSING job) and ``other`` (one to try cancelling)."""
    job_path = f"/jobs/{running['id']}"
    etag = {"If-None-Match": f'"{running["version"]}"'}
    return [
        Probe("create", "POST", "/jobs", body={"type": "demo.noop", "input": {}}),
        Probe("get", "GET", job_path),
        Probe("list", "GET", "/jobs"),
        Probe("result", "GET", f"{job_path}/result"),
        Probe("cancel", "POST", f"/jobs/{other['id']}/cancel"),
        Probe("job stream token", "POST", f"{job_path}/stream-token"),
        Probe("job events (SSE)", "GET", f"{job_path}/events"),
        Probe("owner events (SSE)", "GET", "/events"),
        Probe("long poll", "GET", f"{job_path}?wait=5", headers=etag),
        Probe("workers", "GET", "/workers"),
        Probe("queues", "GET", "/queues"),
        Probe("metrics", "GET", "/metrics"),
        Probe("readyz", "GET", "/readyz"),
        Probe("owner stream token", "POST", "/events/stream-token", needs_redis=False),
        Probe("tasks", "GET", "/tasks", needs_redis=False),
        Probe("healthz", "GET", "/healthz", needs_redis=False),
    ]


def after_restore(running: list[JobDict], finished: JobDict) -> list[Probe]:
    """A mix of what clients do, on the jobs of the test (for the burst after the outage)."""
    probes: list[Probe] = [
        Probe("create", "POST", "/jobs", body={"type": "demo.noop", "input": {}}),
        Probe("list", "GET", "/jobs"),
        Probe("finished job events (SSE)", "GET", f"/jobs/{finished['id']}/events"),
        Probe("owner events (SSE)", "GET", "/events"),
        Probe("result", "GET", f"/jobs/{finished['id']}/result"),
        Probe("long poll", "GET", f"/jobs/{finished['id']}?wait=0.2",
              headers={"If-None-Match": f'"{finished["version"]}"'}),
        Probe("workers", "GET", "/workers"),
        Probe("queues", "GET", "/queues"),
        Probe("readyz", "GET", "/readyz"),
    ]  # fmt: skip
    for job in running:
        probes += [
            Probe("get", "GET", f"/jobs/{job['id']}"),
            Probe("job stream token", "POST", f"/jobs/{job['id']}/stream-token"),
        ]
    return probes


async def burst(http: httpx.AsyncClient, probes: list[Probe], total: int, at_once: int = 20) -> list[Answer]:
    """``total`` requests cycling through ``probes``, ``at_once`` concurrently."""
    answers: list[Answer] = []
    chosen = list(itertools.islice(itertools.cycle(probes), total))
    for start in range(0, total, at_once):
        batch = chosen[start : start + at_once]
        answers += await asyncio.gather(*(ask(http, probe, read_stream=True) for probe in batch))
    return answers


def server_errors(answers: list[Answer]) -> Counter[tuple[str, int]]:
    return Counter((a.probe.name, a.status) for a in answers if a.status >= 500)


# -- the tests --------------------------------------------------------------------------------


async def test_a_redis_outage_is_503_on_every_route_and_nothing_fails_after_it(
    make_stack: Any, own_redis: EmbeddedRedis
) -> None:
    """8 s of Redis down (SIGKILLed) with jobs running: every route that needs Redis answers 503 with
    Retry-After within a second (streams and long polls too), /readyz says not ready; once
    Redis is back and /readyz is 200, 180 requests get no 5xx, a stream opened before the
    outage ends on the terminal state, and the jobs end SUCCESS on their first attempt."""
    stack: Stack = await make_stack(sse_retry_ms="100")
    stack.start_worker()
    finished = await stack.create("demo.noop")
    running = [await stack.create("demo.sleep", {"seconds": 11, "steps": 22}) for _ in range(3)]
    finished = await stack.until_job(finished["id"], terminal, 20)
    running = [await stack.until_job(job["id"], processing, 20) for job in running]
    follower = stack.follow(running[0]["id"], 60)
    await follower.until(lambda r: bool(r.events) and processing(r.events[-1]), "PROCESSING")
    warm = await burst(stack.http, after_restore(running, finished), 40)  # fills the pool
    assert not server_errors(warm)

    os.kill(own_redis.pid, signal.SIGKILL)  # a crash: what it acknowledged is in its AOF already
    own_redis.stop()  # reaps it
    down_at = time.monotonic()
    slowest: dict[str, float] = {}
    probes = every_route(running[0], running[2])
    rounds = 0
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        rounds += 1
        for answer in await asyncio.gather(*(ask(stack.http, probe) for probe in probes)):
            name = answer.probe.name
            slowest[name] = max(slowest.get(name, 0.0), answer.seconds)
            if not answer.probe.needs_redis:
                assert answer.status < 300, (name, answer.status)
                continue
            assert answer.status == 503, (name, answer.status, stack.tail())
            assert answer.content_type == PROBLEM_JSON, (name, answer.content_type)
            assert answer.retry_after is not None and int(answer.retry_after) >= 1, name
            assert answer.seconds < UNAVAILABLE_WITHIN, (name, answer.seconds)
    print(f"\noutage: {rounds} rounds of {len(probes)} routes; slowest answer per route (s):")
    print(json.dumps({name: round(seconds, 3) for name, seconds in slowest.items()}, indent=1))

    own_redis.start()
    ready_after = await stack.until_ready(10)
    answers = await burst(stack.http, after_restore(running, finished), AFTER_RESTORE)
    print(f"ready {ready_after:.2f}s after Redis; {len(answers)} requests, statuses "
          f"{dict(Counter(a.status for a in answers))}")  # fmt: skip
    assert len(answers) == AFTER_RESTORE
    assert not server_errors(answers), server_errors(answers)

    await follower.until(lambda r: bool(r.events) and terminal(r.events[-1]), "the terminal state")
    assert strictly_increasing(follower.versions), follower.versions
    ends = [await stack.until_job(job["id"], terminal, 30) for job in running]
    assert follower.events[-1] == ends[0]
    await follower.finished()

    # Connections killed while idle (a proxy's idle cut, CLIENT KILL) cost no request either.
    async with Redis.from_url(own_redis.url) as admin:
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
    assert killed
    answers = await burst(stack.http, after_restore(running, finished), 40)
    assert not server_errors(answers), server_errors(answers)
    assert "Traceback" not in stack.tail()

    # The workers' side of the outage (leases, progress, the final write): no job ran twice.
    outcome = [(job["status"], job["attempts"]) for job in ends]
    assert outcome == [("SUCCESS", 1)] * 3, stack.workers_tail()


async def test_a_frozen_redis_is_a_503_within_two_seconds_and_nothing_fails_after_it(
    make_stack: Any, own_redis: EmbeddedRedis
) -> None:
    """A Redis that stops answering without closing its sockets (SIGSTOP: a hung server or a
    silent network): every route that needs it answers 503 with Retry-After once a command
    has waited ``REDIS_COMMAND_TIMEOUT_SECONDS``, not redis-py's default 5 s; once it answers
    again, requests get no 5xx."""
    stack: Stack = await make_stack()
    job = await stack.create("demo.noop")
    warm = await burst(stack.http, after_restore([], job), 20)
    assert not server_errors(warm)
    needs_redis = [probe for probe in every_route(job, job) if probe.needs_redis]
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        answers = await asyncio.gather(*(ask(stack.http, probe) for probe in needs_redis))
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    for answer in answers:
        name = answer.probe.name
        assert answer.status == 503, (name, answer.status, stack.tail())
        assert answer.retry_after is not None, name
        assert answer.seconds < REDIS_COMMAND_TIMEOUT_SECONDS + 1.0, (name, answer.seconds)
    await stack.until_ready(10)
    answers = await burst(stack.http, after_restore([], job), 40)
    assert not server_errors(answers), server_errors(answers)
    assert "Traceback" not in stack.tail()


async def test_streams_resume_with_last_event_id_across_a_web_restart(make_stack: Any) -> None:
    """The web process restarts under open streams: they end cleanly, the clients reconnect
    with ``Last-Event-ID`` (waiting in the held socket's backlog while it is down), and see
    every later state once, then the terminal one, after which a reconnect gets 204."""
    stack: Stack = await make_stack(sse_retry_ms="100")
    stack.start_worker()
    job = await stack.create("demo.sleep", {"seconds": 6, "steps": 12})
    readers = [stack.follow(job["id"], 45) for _ in range(3)]
    for reader in readers:
        await reader.until(lambda r: bool(r.events) and processing(r.events[-1]), "PROCESSING")

    stack.stop_web()
    stack.start_web()
    for reader in readers:
        await reader.finished()
    final = await stack.job(job["id"])
    assert final["status"] == "SUCCESS"
    for reader in readers:
        assert reader.events[-1] == final
        assert strictly_increasing(reader.versions), reader.versions
        assert reader.statuses[-1] == 204  # reconnecting at the terminal version: stop
        resumed_running = [(v, status) for v, status in reader.resumed if v < final["version"]]
        assert resumed_running, f"no reconnect before the end: {reader.resumed}"
        assert {status for _, status in resumed_running} <= {200, 503}, reader.resumed  # 503: draining
        assert any(status == 200 for _, status in resumed_running), reader.resumed


async def test_the_stream_cap_answers_429_with_retry_after(make_stack: Any) -> None:
    """An owner holding ``max_streams_per_owner`` streams and long polls gets 429 (problem+json,
    Retry-After) for one more; a plain read is not capped; a slot comes back when a stream
    or a long poll ends."""
    stack: Stack = await make_stack(max_streams_per_owner="3")
    pending = await stack.create("demo.noop")  # no worker: it stays PENDING
    job_path = f"/jobs/{pending['id']}"
    job_events = Probe("job events", "GET", f"{job_path}/events")
    owner_events = Probe("owner events", "GET", "/events")
    etag = {"If-None-Match": f'"{pending["version"]}"'}
    long_poll = Probe("long poll", "GET", f"{job_path}?wait=0.2", headers=etag)
    async with AsyncExitStack() as held:
        for probe in (job_events, job_events, owner_events):
            response = await held.enter_async_context(stack.http.stream(probe.method, probe.path))
            assert response.status_code == 200
        for probe in (job_events, owner_events, long_poll):
            answer = await ask(stack.http, probe)
            assert (answer.status, answer.content_type) == (429, PROBLEM_JSON), probe.name
            assert answer.retry_after is not None and int(answer.retry_after) >= 1
        assert (await stack.http.get(job_path)).status_code == 200

    async def once_a_slot_is_free(probe: Probe) -> int:
        """The status of ``probe`` once it is not 429 (a closed stream's slot comes back as soon
        as the server sees the disconnect)."""
        deadline = time.monotonic() + 10
        while (status := (await ask(stack.http, probe)).status) == 429 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return status

    async with AsyncExitStack() as held:
        opened = 0
        while opened < 2:  # the first three streams' slots come back as the server sees them go
            response = await held.enter_async_context(stack.http.stream(job_events.method, job_events.path))
            opened += response.status_code == 200
        assert await once_a_slot_is_free(long_poll) == 304  # a waiting long poll holds the third slot
        assert await once_a_slot_is_free(job_events) == 200  # and gave it back when it answered


async def test_the_hub_resubscribes_after_a_redis_restart_and_resends_fresh_state(
    own_redis: EmbeddedRedis, prefix: str
) -> None:
    """Redis restarts under an EventHub with job and owner feeds open: the hub reconnects,
    resubscribes every channel, offers each job feed the job's fresh hash (a change made
    while it was away arrives once, nothing older) and tells each owner feed to resync."""
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.025), 2)  # its pooled socket dies with the server
    async with Redis.from_url(own_redis.url, socket_connect_timeout=1, retry=retry) as redis:
        store = JobStore(redis, load_settings({}, redis_url=own_redis.url, prefix=prefix))
        await ensure_groups(redis, store.keys, ["default"])
        changed, _ = await store.create(task="demo.noop", input_json=b"{}", owner="u", queue="default")
        unchanged, _ = await store.create(task="demo.noop", input_json=b"{}", owner="u", queue="default")
        # Its reconnect attempts are 1.5 to 3 s apart: the change below lands while it is away.
        hub = EventHub(store, backoff_base=3.0, backoff_cap=3.0)
        await hub.start()
        try:
            job_feeds = [await hub.open_job(job.id) for job in (changed, changed, unchanged)]
            for feed in job_feeds:
                await feed.snapshot("u")
            owner_feed = await hub.open_owner("u")
            await owner_feed.snapshot()

            own_redis.stop()
            await until(lambda: _true(not hub.connected), 5, "the hub to notice Redis is gone")
            own_redis.start()
            cancelled = await store.cancel(changed.id, "u", 60)  # a change the hub cannot see live
            assert cancelled.status is JobStatus.CANCELLED
            await until(lambda: _true(hub.connected), 10, "the hub to reconnect")

            for feed in job_feeds[:2]:
                fresh = await feed.next(timeout=5)
                assert fresh is not None
                assert (fresh.status, fresh.version) == (JobStatus.CANCELLED, cancelled.version)
            assert await job_feeds[2].next(timeout=0.3) is None  # no newer state: nothing resent
            assert await owner_feed.next(timeout=5) == Resync("reconnect")
            resent = await owner_feed.snapshot(50)
            assert {job.id: job.status for job in resent} == {
                changed.id: JobStatus.CANCELLED,
                unchanged.id: JobStatus.PENDING,
            }
            assert hub.stats().reconnects == 1
        finally:
            await hub.stop()


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis_errors.ConnectionError("No connection available."),  # the blocking pool's wait ran out
        redis_errors.MaxConnectionsError("Too many connections"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        TimeoutError(),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=type,
)
async def test_redis_being_unavailable_is_a_503_problem_wherever_it_is_raised(error: Exception) -> None:
    """The one mapping in ``web.problems``: each way redis-py says "not now" is a 503 with
    Retry-After, never a 500; a Redis error that is a bug (a script error) stays a 500."""

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise error

    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app) as client:
        response = await client.get("/boom")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["type"] == "urn:jobstream:problem:redis-unavailable"


async def test_a_redis_error_that_is_a_bug_stays_a_500() -> None:
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise redis_errors.ResponseError("ERR Error running script: attempt to compare nil with number")

    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert "retry-after" not in response.headers


async def _true(value: bool) -> bool:
    return value
