"""Fixtures of the end-to-end tests: the web app as a real process, per test or per module.

``sse_stack`` makes stacks of the test's own: for a test that changes a stack's settings or
state (restarts it, kills a process, needs no worker or no auth). ``module_stack`` hands
each test of a module the same running web process (bearer-JWT auth on), and ``user`` an
owner of its own, so the module pays for one start-up and its tests never see each
other's jobs (``user_stack``: both, the user's token sent with every request);
``module_worker`` adds one worker to it.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.embedded_redis import EmbeddedRedis
from tests.support.procs import WebServer, start_worker, stop
from tests.support.web_stack import WebStack, stack_env
from tests.support.web_support import User, new_user

MakeStack = Callable[..., Awaitable[WebStack]]


@pytest_asyncio.fixture
async def sse_stack(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[MakeStack]:
    """``await sse_stack(jwt=False, **env)``: a web process on the test's Redis and prefix.

    ``jwt=True`` turns bearer auth on; keywords become ``JOBSTREAM_*`` settings. Named for
    the SSE tests that came first; every test that needs the web app as a process uses it.
    Each stack (and each worker it started) is stopped after the test.
    """
    stacks: list[WebStack] = []

    async def make(jwt: bool = False, **env: str) -> WebStack:
        log = tmp_path / f"processes-{len(stacks)}.log"
        stack = WebStack.open(redis_url, prefix, stack_env(jwt, **env), log)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.aclose()


@pytest.fixture(scope="module")
def module_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    """One web process for the module: the session's Redis, a prefix of its own, JWT auth, access log on."""
    log = tmp_path_factory.mktemp("module-stack") / "processes.log"
    env = stack_env(jwt=True)
    server = WebServer(redis_server.url, f"m{uuid.uuid4().hex[:8]}:", env, log, log_level="info")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def module_worker(module_server: WebServer) -> Iterator[subprocess.Popen[bytes]]:
    """One worker on the module's server, running until the module ends."""
    proc = start_worker(
        module_server.redis_url, module_server.prefix, env=module_server.env, log=module_server.log
    )
    try:
        yield proc
    finally:
        stop(proc)


@pytest_asyncio.fixture
async def module_stack(module_server: WebServer) -> AsyncIterator[WebStack]:
    """This test's handle on the module's web process: its own client, the log from now on.

    The client sends no credentials: a test passes its ``user``'s headers (or sets them as
    the client's defaults). Workers the test starts on it stop with the test.
    """
    stack = WebStack.joining(module_server)
    try:
        yield stack
    finally:
        await stack.aclose()


@pytest.fixture
def user() -> User:
    """An owner of this test's own (``user-<uuid>`` with a bearer token for the JWT stacks)."""
    return new_user()


@pytest.fixture
def user_stack(module_stack: WebStack, user: User) -> WebStack:
    """``module_stack`` with every request sent as this test's ``user``."""
    module_stack.http.headers.update(user.headers)
    return module_stack
