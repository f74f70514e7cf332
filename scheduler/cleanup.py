"""The cleanup run: prune what expired job records leave behind, in bounded batches.

A job hash expires by itself; what points at it does not. Each run removes owner-index
ids (and ids of the partitions' indexes of every job) and active-set ids whose job is gone
(or, for active sets, ended), idempotency keys whose job is gone, dead letters older than
the retention, and heartbeats without a TTL.

Removing an id whose job is gone needs no script: job ids are never reused, so a job that
is gone (or terminal) stays so, and a plain ZREM/SREM cannot undo a concurrent change.
Idempotency keys are the exception (a new job may take a key over), hence a script.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from broker.models import TERMINAL
from broker.scripts import Scripts
from broker.settings import Settings
from broker.topology import RedisClient
from scheduler.scan import scan_keys, set_members, zset_members
from scheduler.ticks import Counts

log = logging.getLogger("jobstream.scheduler.cleanup")

BATCH = 1000
"""Items per SCAN-family call and per pipeline."""

_TERMINAL = frozenset(status.value.encode() for status in TERMINAL)
_HEARTBEAT_LEASES = 3
_SINGLES = 16
"""Mixed groups this small are checked id by id rather than halved again."""


@dataclass(slots=True)
class CleanupCounts:
    """What one cleanup run removed."""

    index: int = 0
    every_job_index: int = 0
    active: int = 0
    idempotency: int = 0
    dead: int = 0
    heartbeats: int = 0

    def as_counts(self) -> Counts:
        """The counters by name, for the tick record and the log line."""
        return {
            "index": self.index,
            "every_job_index": self.every_job_index,
            "active": self.active,
            "idempotency": self.idempotency,
            "dead": self.dead,
            "heartbeats": self.heartbeats,
        }


class Cleanup:
    """One cleanup run per call of :meth:`run`; every step reads in batches of ``batch``."""

    def __init__(self, redis: RedisClient, settings: Settings, scripts: Scripts, batch: int = BATCH) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = scripts
        self.keys = settings.keys
        self.batch = batch

    async def run(self) -> Counts:
        """Run every step once and say what each removed."""
        counts = CleanupCounts(
            index=await self.prune_owner_indexes(),
            every_job_index=await self.prune_job_indexes(),
            active=await self.reconcile_active_sets(),
            idempotency=await self.prune_idempotency_keys(),
            dead=await self.trim_dead_letters(),
            heartbeats=await self.expire_heartbeats(),
        )
        return counts.as_counts()

    async def prune_owner_indexes(self) -> int:
        """ZREM ids whose job record no longer exists from every owner index."""
        removed = 0
        async for index_keys in scan_keys(self.redis, self.keys.owner_index_pattern, "zset", self.batch):
            for index in index_keys:
                removed += await self._prune_index(index.decode())
        return removed

    async def prune_job_indexes(self) -> int:
        """ZREM ids whose job record no longer exists from each partition's index of every job."""
        return sum([await self._prune_index(self.keys.all_jobs(p)) for p in range(self.keys.partitions)])

    async def _prune_index(self, index: str) -> int:
        removed = 0
        async for ids in zset_members(self.redis, index, self.batch):
            gone = await self._gone(ids)
            if gone:
                removed += await self.redis.zrem(index, *gone)
        return removed

    async def reconcile_active_sets(self) -> int:
        """SREM ids whose job is gone or has ended from every owner's active set."""
        removed = 0
        async for active_keys in scan_keys(self.redis, self.keys.owner_active_pattern, "set", self.batch):
            for active in active_keys:
                async for ids in set_members(self.redis, active.decode(), self.batch):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for job_id in ids:
                            pipe.hget(self.keys.job(job_id.decode()), "status")
                        statuses: list[bytes | None] = await pipe.execute()
                    ended = [i for i, s in zip(ids, statuses, strict=True) if s is None or s in _TERMINAL]
                    if ended:
                        removed += await self.redis.srem(active, *ended)
        return removed

    async def prune_idempotency_keys(self) -> int:
        """Delete idempotency keys whose job is gone (only if the key still names that job)."""
        removed = 0
        async for idem_keys in scan_keys(self.redis, self.keys.idempotency_pattern, "string", self.batch):
            async with self.redis.pipeline(transaction=False) as pipe:  # keys of many slots: no MGET
                for key in idem_keys:
                    pipe.get(key)
                values: list[bytes | None] = await pipe.execute()
            named = [(key, job_id) for key, job_id in zip(idem_keys, values, strict=True) if job_id]
            gone = set(await self._gone([job_id for _key, job_id in named]))
            stale = [(key, job_id) for key, job_id in named if job_id in gone]
            if not stale:
                continue
            dropped = await asyncio.gather(  # one pipeline: the script batcher sends them together
                *(self.scripts.drop_idempotency(key=key, job_id=job_id) for key, job_id in stale)
            )
            removed += sum(dropped)
        return removed

    async def trim_dead_letters(self) -> int:
        """XTRIM every dead-letter stream to the entries younger than the dead retention."""
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        oldest_kept = max(0, now_ms - self.settings.dead_retention_seconds * 1000)
        removed = 0
        async for dead_keys in scan_keys(self.redis, self.keys.dead_pattern, "stream", self.batch):
            for dead in dead_keys:
                # Whole nodes first, at most `batch * 10` entries a call, then the exact rest.
                while trimmed := await self.redis.xtrim(
                    dead, minid=oldest_kept, approximate=True, limit=self.batch * 10
                ):
                    removed += trimmed
                removed += await self.redis.xtrim(dead, minid=oldest_kept, approximate=False)
        return removed

    async def expire_heartbeats(self) -> int:
        """Drop (or give a TTL to) worker heartbeat hashes that have no TTL; counts both."""
        max_age_ms = int(self.settings.lease_seconds * _HEARTBEAT_LEASES * 1000)
        fixed = 0
        async for beats in scan_keys(self.redis, self.keys.worker_pattern, "hash", self.batch):
            async with self.redis.pipeline(transaction=False) as pipe:
                for beat in beats:
                    pipe.pttl(beat)
                ttls: list[int] = await pipe.execute()
            for beat, ttl in zip(beats, ttls, strict=True):
                if ttl == -1:
                    fixed += await self.scripts.expire_heartbeat(key=beat, max_age_ms=max_age_ms)
        return fixed

    async def _gone(self, job_ids: list[bytes]) -> list[bytes]:
        """The ids among ``job_ids`` whose job record no longer exists.

        Group testing: one multi-key EXISTS counts a whole group, so a batch that is all
        gone (a mass expiry) or all alive (a busy owner's index) costs one command, not
        one per id; mixed groups are halved, level by level (one pipeline per level),
        down to small groups checked id by id. Never more than ~15% over id by id.
        """
        gone: list[bytes] = []
        groups = [job_ids] if job_ids else []
        while groups:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    pipe.exists(*[self.keys.job(job_id.decode()) for job_id in group])
                counts: list[int] = await pipe.execute()
            halves: list[list[bytes]] = []
            singles: list[bytes] = []
            for group, alive in zip(groups, counts, strict=True):
                if alive == 0:
                    gone += group
                elif alive == len(group):
                    continue
                elif len(group) <= _SINGLES:
                    singles += group
                else:
                    middle = len(group) // 2
                    halves += [group[:middle], group[middle:]]
            if singles:
                gone += await self._gone_one_by_one(singles)
            groups = halves
        return gone

    async def _gone_one_by_one(self, job_ids: list[bytes]) -> list[bytes]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.keys.job(job_id.decode()))
            exists: list[int] = await pipe.execute()
        return [job_id for job_id, found in zip(job_ids, exists, strict=True) if not found]
