"""Tasks that fail, for the failure-details tests (tests/e2e/test_failure_details.py loads them
in its processes with ``JOBSTREAM_TASK_MODULES``)."""

from __future__ import annotations

import msgspec

from broker import TaskError
from broker.registry import JobContext, task


class Failing(msgspec.Struct):
    message: str = "the input was wrong"
    depth: int = 0


class PdfEncrypted(TaskError):
    """A task's own failure: its class name becomes ``error.type``."""


class Opaque:
    """A value JSON cannot hold: stored as its repr."""

    def __repr__(self) -> str:
        return "<Opaque thing>"


@task("failures.value_error")
async def value_error(ctx: JobContext, data: Failing) -> None:
    """Fails with a ValueError raised one call down, in ``parse_the_input``."""
    parse_the_input(data.message)


@task("failures.retried", retries=1, backoff=2.0, backoff_max=2.0)
async def retried(ctx: JobContext, data: Failing) -> None:
    """Fails both of its attempts (the retry waits 1 to 2 s)."""
    parse_the_input(f"{data.message} (attempt {ctx.attempt})")


@task("failures.encrypted", retries=3)
async def encrypted(ctx: JobContext, data: Failing) -> None:
    """Fails at once, without retrying, with details of its own (one of them not JSON-able)."""
    raise PdfEncrypted("PDF is encrypted", details={"page": 3, "opaque": Opaque()}, retry=False)


@task("failures.deep")
async def deep(ctx: JobContext, data: Failing) -> None:
    """Fails ``depth`` calls down, through frames that alternate (Python folds repeated ones)."""
    down_one(data.depth)


def parse_the_input(message: str) -> None:
    raise ValueError(message)


def down_one(depth: int) -> None:
    if depth <= 0:
        raise RuntimeError("the bottom of the stack")
    down_two(depth - 1)


def down_two(depth: int) -> None:
    down_one(depth - 1)
