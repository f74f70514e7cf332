"""Fixtures of the end-to-end tests: the web app as a real process, made on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest_asyncio

from tests.support.web_stack import WebStack, stack_env

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
