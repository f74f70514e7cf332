"""Listing an owner's jobs: newest first, filtered, in pages that stay stable while jobs are made.

The owner index is scored by the creation sequence (docs/ARCHITECTURE.md, "Redis layout");
a cursor is ``<sequence>.<job id>`` of the last job a page returned.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.keys import Keys
from broker.models import Job, JobStatus, job_from_fields
from broker.topology import RedisClient

Rows = list[tuple[str, float]]
"""(job id, creation sequence) rows of an owner index."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing, and the cursor of the next (None at the end)."""

    jobs: list[Job]
    cursor: str | None


async def list_jobs(
    redis: RedisClient,
    keys: Keys,
    owner: str | None,
    *,
    status: JobStatus | None = None,
    task: str | None = None,
    labels: Mapping[str, str] | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page:
    """The owner's jobs (None: everyone's), newest first, optionally filtered; resumable with ``cursor``.

    ``labels`` keeps the jobs that carry every one of these labels (key and value).

    The order is (creation sequence, id) descending and the cursor names the last job
    returned, so jobs created while a client pages neither repeat nor shift a page. The
    owner's index is kept per partition, and so is the index of every job (``owner=None``); a
    page merges a partition's indexes (:class:`_Merge`). Reads the
    indexes in bounded batches; ids whose record expired are skipped (the cleanup task
    prunes them). A page may hold fewer than ``limit`` jobs when a filter matches rarely;
    the cursor then continues the scan where it stopped.
    """
    after = _parse_cursor(cursor)
    batch = max(limit * 2, 50)
    partitions = range(keys.partitions)
    indexes = [keys.all_jobs(p) if owner is None else keys.owner_jobs(owner, p) for p in partitions]
    merge = _Merge(redis, indexes, after, batch)
    found: list[Job] = []
    last: tuple[float, str] | None = after
    scanned = 0
    while len(found) < limit and scanned < batch * 10:
        rows = await merge.next_rows(batch)
        if not rows:
            return Page(found, None)
        scanned += len(rows)
        for (job_id, score), job in zip(rows, await _read_many(redis, keys, rows), strict=True):
            last = (score, job_id)
            if job is None or not _matches(job, status, task, labels):
                continue
            found.append(job)
            if len(found) == limit:
                return Page(found, _format_cursor(last))
    return Page(found, _format_cursor(last) if last else None)


class _Merge:
    """A k-way merge of per-partition indexes (an owner's, or every job's), newest first, below ``after``.

    Each index is read in batches; a row is handed out only once every index that may hold
    more rows has its next row buffered, so none could still hold a newer one. With one
    partition it reads exactly as a single index would.
    """

    def __init__(self, redis: RedisClient, indexes: list[str], after: tuple[float, str] | None, batch: int):
        self.redis = redis
        self.after = after
        self.batch = batch
        self.buffers: dict[str, deque[tuple[str, float]]] = {index: deque() for index in indexes}
        self.offsets = dict.fromkeys(indexes, 0)
        self.open = set(indexes)  # indexes that may hold more rows

    async def next_rows(self, count: int) -> Rows:
        """Up to ``count`` rows, newest first; an empty list at the end of every index."""
        rows: Rows = []
        while len(rows) < count:
            empty = [index for index in self.open if not self.buffers[index]]
            if empty:
                await asyncio.gather(*(self._fill(index) for index in empty))
            heads = [(buf[0][1], buf[0][0], index) for index, buf in self.buffers.items() if buf]
            if not heads:
                break
            rows.append(self.buffers[max(heads)[2]].popleft())
        return rows

    async def _fill(self, index: str) -> None:
        """Read batches of ``index`` until one has rows below the cursor, or it ends."""
        top: float | str = self.after[0] if self.after else "+inf"
        while not self.buffers[index] and index in self.open:
            rows = await _index_batch(self.redis, index, top, self.offsets[index], self.batch)
            self.offsets[index] += len(rows)
            if len(rows) < self.batch:
                self.open.discard(index)
            after = self.after  # rows tied with the cursor's sequence, at or before it, go
            self.buffers[index].extend((i, sc) for i, sc in rows if after is None or (sc, i) < after)


async def _index_batch(redis: RedisClient, index: str, top: float | str, offset: int, count: int) -> Rows:
    rows: Any = await redis.zrange(
        index,
        top,
        "-inf",
        desc=True,
        byscore=True,
        offset=offset,
        num=count,
        withscores=True,
    )
    return [(member.decode(), float(score)) for member, score in rows]


async def _read_many(redis: RedisClient, keys: Keys, rows: Rows) -> Sequence[Job | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, _ in rows:
            pipe.hgetall(keys.job(job_id))
        records = await pipe.execute()
    return [job_from_fields(fields) if fields else None for fields in records]


def _matches(job: Job, status: JobStatus | None, task: str | None, labels: Mapping[str, str] | None) -> bool:
    return (
        (status is None or job.status == status)
        and (task is None or job.type == task)
        and (not labels or all(job.labels.get(key) == value for key, value in labels.items()))
    )


def _format_cursor(position: tuple[float, str]) -> str:
    return f"{int(position[0])}.{position[1]}"


def _parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """``<created ms>.<job id>`` -> (score, id); raises ``ValueError`` on anything else."""
    if not cursor:
        return None
    score, sep, job_id = cursor.partition(".")
    if not sep or not score.isdigit() or not job_id:
        raise ValueError(f"not a listing cursor: {cursor!r}")
    return float(score), job_id
