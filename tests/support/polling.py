"""The one way the tests wait for a condition nothing signals: poll it, with a deadline.

``until`` is for coroutines (a Redis read, an HTTP call), ``wait_for`` for plain calls (a
process's exit, a file's content). Both return the first truthy value and fail with what
they waited for, plus ``context`` (a string, or a callable read only on failure, such as a
log tail), once ``timeout`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Context = str | Callable[[], str]


async def until(
    probe: Callable[[], Awaitable[T]],
    timeout: float = 5.0,
    what: str = "the condition",
    context: Context = "",
    *,
    interval: float = 0.02,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Await ``probe()`` until it returns something truthy; exceptions in ``ignore`` count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await probe()
        except ignore:
            pass
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what, context))
        await asyncio.sleep(interval)


def wait_for(
    condition: Callable[[], T], timeout: float, what: str, context: Context = "", *, interval: float = 0.02
) -> T:
    """Call ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what, context))
        time.sleep(interval)


def _timed_out(timeout: float, what: str, context: Context) -> str:
    detail = context() if callable(context) else context
    return f"timed out after {timeout}s waiting for {what}" + (f"\n{detail}" if detail else "")
