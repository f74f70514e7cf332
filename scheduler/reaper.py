"""The reaper run: find active jobs whose message is gone, and end or resend them.

A job's message lives in its queue stream (new or being worked on: the stream holds
in-flight work only) or in the queue's delayed set (due later). Every script that moves
a message (create, start, retry, finish, dead-letter) changes the job's version in the
same step, except promotion, which only moves it from the delayed set to the stream. So
the reaper reads each suspect job first, then the delayed set, then the stream: a message
that existed while the job kept its version is always seen in one of them. A suspect
with no message is then handed to ``reap_job.lua``, fenced on the version read first, so
a worker that acts on the job in between wins and the job is left alone.

- PROCESSING with no message and no change for a lease: its worker has lost it (the
  worker notices at its next lease renewal and stops): FAILURE with a ``Lost`` error.
- PENDING with no message: nothing would ever run it: resent as a new dispatch, or
  failed, as ``JOBSTREAM_REAP_PENDING`` says.

The reaper also promotes due delayed messages, a backstop for queues no worker promotes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from broker.errors import ScriptCode
from broker.keys import partition_of
from broker.message import TaskMessage, decode_message, encode_message
from broker.models import JobError, JobStatus
from broker.registry import TaskRegistry
from broker.scripts import Scripts, TerminalOpts
from broker.settings import Settings
from broker.topology import RedisClient
from scheduler.scan import scan_keys, set_members, stream_entries, zset_members
from scheduler.ticks import Counts

log = logging.getLogger("jobstream.scheduler.reaper")

BATCH = 1000
"""Items per SCAN-family call, XRANGE and pipeline."""
MAX_SUSPECTS = 10_000
"""Suspects one run checks at most (memory bound); the rest wait for the next run."""

_ACTIVE = (JobStatus.PENDING.value.encode(), JobStatus.PROCESSING.value.encode())
_FIELDS = ("status", "version", "dispatch", "queue", "owner", "type", "updated_at", "created_at")
_encode = msgspec.json.Encoder().encode
_LOST_RUNNING = _encode(
    JobError(
        type="Lost",
        message="the job's message left its queue while it ran and no worker holds it any more "
        "(its worker died or lost it); the reaper ended it",
    )
)
_LOST_PENDING = _encode(JobError(type="Lost", message="the job's message was lost before any worker took it"))


@dataclass(frozen=True, slots=True)
class Suspect:
    """An active job, as read before the queue was searched for its message."""

    job_id: str
    owner: str
    task: str
    queue: str
    status: JobStatus
    version: bytes
    dispatch: int

    def owns(self, message: TaskMessage) -> bool:
        """Whether a queued message belongs to this job (for PENDING: its current dispatch)."""
        if message.task_id != self.job_id:
            return False
        return self.status == JobStatus.PROCESSING or message.labels.dispatch == self.dispatch


@dataclass(slots=True)
class ReaperCounts:
    """What one reaper run did."""

    lost: int = 0
    resent: int = 0
    failed_pending: int = 0
    spared: int = 0
    promoted: int = 0

    def as_counts(self) -> Counts:
        """The counters by name, for the tick record and the log line."""
        return {
            "lost": self.lost,
            "resent": self.resent,
            "failed_pending": self.failed_pending,
            "spared": self.spared,
            "promoted": self.promoted,
        }


class Reaper:
    """One reaper run per call of :meth:`run`."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        scripts: Scripts,
        registry: TaskRegistry,
        queues: Iterable[str],
        batch: int = BATCH,
        max_suspects: int = MAX_SUSPECTS,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = scripts
        self.registry = registry
        self.queues = sorted(set(queues))
        self.keys = settings.keys
        self.batch = batch
        self.max_suspects = max_suspects
        self.lease_ms = int(settings.lease_seconds * 1000)

    async def run(self) -> Counts:
        """Promote due messages, then find, check and reap the jobs whose message is gone."""
        counts = ReaperCounts(promoted=await self.promote_due())
        for (queue, partition), suspects in (await self.find_suspects()).items():
            await self._clear_queued(queue, partition, suspects)
            for suspect in suspects.values():
                await self._reap(suspect, counts)
        return counts.as_counts()

    async def promote_due(self) -> int:
        """Move due delayed messages to their streams (atomic; safe beside the workers)."""
        moved = 0
        for queue in self.queues:
            for partition in range(self.keys.partitions):
                while True:
                    promoted = await self.scripts.promote_due(
                        queue=queue, partition=partition, limit=self.batch
                    )
                    moved += promoted.moved
                    if promoted.moved < self.batch:
                        break
        return moved

    async def find_suspects(self) -> dict[tuple[str, int], dict[str, Suspect]]:
        """Active jobs unchanged for a lease, by queue and partition (at most ``max_suspects``)."""
        seconds, micros = await self.redis.time()
        quiet_since = int(seconds) * 1000 + int(micros) // 1000 - self.lease_ms
        found: dict[tuple[str, int], dict[str, Suspect]] = {}
        total = 0
        async for active_keys in scan_keys(self.redis, self.keys.owner_active_pattern, "set", self.batch):
            for active in active_keys:
                async for ids in set_members(self.redis, active.decode(), self.batch):
                    for suspect in await self._read_quiet(ids, quiet_since):
                        where = (suspect.queue, partition_of(suspect.job_id))
                        found.setdefault(where, {})[suspect.job_id] = suspect
                        total += 1
                    if total >= self.max_suspects:
                        return found
        return found

    async def _read_quiet(self, ids: list[bytes], quiet_since: int) -> list[Suspect]:
        """The jobs among ``ids`` that are active and have not changed since ``quiet_since``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id.decode()), list(_FIELDS))
            rows: list[list[bytes | None]] = await pipe.execute()
        suspects = []
        for job_id, row in zip(ids, rows, strict=True):
            status, version, dispatch, queue, owner, task, updated_at, created_at = row
            if status not in _ACTIVE or not (version and queue and owner is not None and task):
                continue
            if int(updated_at or created_at or 0) > quiet_since:  # changed within the lease
                continue
            suspects.append(
                Suspect(
                    job_id.decode(),
                    owner.decode(),
                    task.decode(),
                    queue.decode(),
                    JobStatus(status.decode()),
                    version,
                    int(dispatch or 1),
                )
            )
        return suspects

    async def _clear_queued(self, queue: str, partition: int, suspects: dict[str, Suspect]) -> None:
        """Drop from ``suspects`` every job with a message queued: delayed set first, then stream."""
        async for members in zset_members(self.redis, self.keys.delayed(queue, partition), self.batch):
            _drop_owners(suspects, members)
            if not suspects:
                return
        async for entries in stream_entries(self.redis, self.keys.queue(queue, partition), self.batch):
            _drop_owners(suspects, [fields.get(b"data", b"") for _entry_id, fields in entries])
            if not suspects:
                return

    async def _reap(self, suspect: Suspect, counts: ReaperCounts) -> None:
        dispatch = suspect.dispatch + 1
        running = suspect.status == JobStatus.PROCESSING
        reply = await self.scripts.reap_job(
            job_id=suspect.job_id,
            owner=suspect.owner,
            queue=suspect.queue,
            version_seen=suspect.version,
            min_idle_ms=self.lease_ms,
            active_ttl=self.settings.active_ttl_seconds,
            retention=self.registry.retention(suspect.task, self.settings.retention_seconds),
            error_json=_LOST_RUNNING if running else _LOST_PENDING,
            pending_action=self.settings.reap_pending,
            message=encode_message(suspect.job_id, suspect.task, dispatch),
            dispatch=dispatch,
            opts=TerminalOpts(webhook_window=self.settings.webhook_max_seconds),
        )
        if reply.code != ScriptCode.OK:
            counts.spared += 1
            return
        if running:
            counts.lost += 1
            log.warning("job %s: PROCESSING with no message and no lease: FAILURE (Lost)", suspect.job_id)
        elif reply.detail == JobStatus.PENDING:
            counts.resent += 1
            log.warning("job %s: PENDING with no message: resent as dispatch %d", suspect.job_id, dispatch)
        else:
            counts.failed_pending += 1
            log.warning("job %s: PENDING with no message: FAILURE (Lost)", suspect.job_id)


def _drop_owners(suspects: dict[str, Suspect], payloads: list[bytes]) -> None:
    for payload in payloads:
        try:
            message = decode_message(payload)
        except msgspec.DecodeError:
            continue  # not a jobstream message: nothing to match
        suspect = suspects.get(message.task_id)
        if suspect is not None and suspect.owns(message):
            del suspects[message.task_id]
