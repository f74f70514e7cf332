"""Demo tasks the tests, benchmarks and dashboard rely on (names and inputs are fixed)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Annotated

import msgspec

from broker.registry import JobContext, task


class NoopInput(msgspec.Struct, forbid_unknown_fields=True):
    """No input: ``{}``."""


class SleepInput(msgspec.Struct, forbid_unknown_fields=True):
    """Sleep ``seconds`` in ``steps`` equal steps, reporting progress after each."""

    seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 1.0
    steps: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10


class SleepResult(msgspec.Struct):
    slept: float


class FailInput(msgspec.Struct, forbid_unknown_fields=True):
    message: str = "demo failure"


class WordcountInput(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class WordCount(msgspec.Struct, array_like=False):
    word: str
    count: int


class DemoFailure(Exception):
    """Raised by ``demo.fail``."""


@task("demo.noop")
async def noop(ctx: JobContext, data: NoopInput) -> None:
    """Does nothing: the cheapest job there is (throughput benchmarks)."""


@task("demo.sleep")
async def sleep(ctx: JobContext, data: SleepInput) -> SleepResult:
    """Sleeps in steps, reporting "step i of n" after each."""
    pause = data.seconds / data.steps
    for step in range(1, data.steps + 1):
        await asyncio.sleep(pause)
        await ctx.progress(100 * step / data.steps, f"step {step} of {data.steps}")
    return SleepResult(slept=data.seconds)


@task("demo.fail")
async def fail(ctx: JobContext, data: FailInput) -> None:
    """Always fails with the given message."""
    raise DemoFailure(data.message)


_WORD = re.compile(r"[\w']+")


@task("demo.wordcount")
async def wordcount(ctx: JobContext, data: WordcountInput) -> list[WordCount]:
    """The 10 most common words of ``text`` with their counts, reporting progress by chunk."""
    lines = data.text.splitlines() or [data.text]
    counts: Counter[str] = Counter()
    chunk = max(1, len(lines) // 10)
    for start in range(0, len(lines), chunk):
        for line in lines[start : start + chunk]:
            counts.update(word.lower() for word in _WORD.findall(line))
        done = min(len(lines), start + chunk)
        await ctx.progress(100 * done / len(lines), f"counted {done} of {len(lines)} lines")
    return [WordCount(word, count) for word, count in counts.most_common(10)]
