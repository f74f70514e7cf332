"""Periodic maintenance that runs once per tick across any number of scheduler replicas.

Every replica runs a :class:`Ticker` per maintenance job. A tick is a slot of server time
(``claim_tick.lua``): at each slot boundary every replica asks Redis to claim the slot,
and only the first one runs it. A plain ``SET NX PX`` lock would give mutual exclusion,
not once-per-tick: a replica whose timer fires later in the same period, after the
lock was released or expired, would run the tick again. Slots of Redis time also make
the replicas' own clocks irrelevant.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from broker.connection import REDIS_FAULTS, RedisWatch, backoff
from broker.scripts import Scripts
from broker.topology import RedisClient

log = logging.getLogger("jobstream.scheduler")

Counts = Mapping[str, int]
"""What one maintenance run did, by counter name (``{"index": 12, "dead": 0}``)."""

_KEEP_TICK_MS = 86_400_000
"""How long a tick hash (claims and counters) outlives the last replica that touched it."""
_AFTER_BOUNDARY_S = 0.01
"""Wake this long after a slot starts (plus jitter), so the slot has begun on the server."""


@dataclass(frozen=True, slots=True)
class Periodic:
    """A maintenance job: its name (the tick key's), its period and what one run does."""

    name: str
    period_seconds: float
    run: Callable[[], Awaitable[Counts]]


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: whether this replica runs the slot, and when the next starts."""

    won: bool
    slot_ms: int
    next_in_seconds: float


class Ticker:
    """Runs one :class:`Periodic` job on this replica's side of the tick claims."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        claimant: str,
        job: Periodic,
        watch: RedisWatch | None = None,
    ) -> None:
        self.redis = redis
        self.watch = watch or RedisWatch(log, "scheduler")
        self.scripts = scripts
        self.claimant = claimant
        self.job = job
        self.key = scripts.keys.lock(job.name)
        self.runs = 0
        self.totals: dict[str, int] = {}

    async def claim(self) -> Claim:
        """Try to claim the current slot (atomic, on server time)."""
        period_ms = max(1, int(self.job.period_seconds * 1000))
        claim = await self.scripts.claim_tick(
            name=self.job.name,
            period_ms=period_ms,
            claimant=self.claimant,
            keep_ms=max(_KEEP_TICK_MS, 3 * period_ms),
        )
        return Claim(claim.won, claim.slot_ms, claim.next_in_ms / 1000)

    async def tick(self) -> Claim:
        """Claim the current slot and, if won, run the job and record what it did."""
        claim = await self.claim()
        if claim.won:
            started = time.monotonic()
            counts = await self.job.run()
            await self._record(counts, time.monotonic() - started)
            claim = Claim(True, claim.slot_ms, claim.next_in_seconds - (time.monotonic() - started))
        return claim

    async def run_forever(self) -> None:
        """Tick at every slot boundary until cancelled; a failed run is logged, not fatal.

        While Redis is away it tries again with backoff (the watch logs the outage once)
        rather than waiting a whole period; a slot already claimed is not run twice.
        """
        failures = 0
        while True:
            wait = self.job.period_seconds
            began = time.monotonic()
            try:
                wait = (await self.tick()).next_in_seconds
            except REDIS_FAULTS as err:
                self.watch.failed(self.job.name, err, began)
                failures += 1
                wait = min(wait, backoff(failures, cap=5.0))
            except Exception:
                log.exception("%s: run failed; trying again next tick", self.job.name)
            else:
                self.watch.answered()
                failures = 0
            jitter = random.uniform(0, min(0.05, self.job.period_seconds / 20))  # noqa: S311
            await asyncio.sleep(max(0.0, wait) + _AFTER_BOUNDARY_S + jitter)

    async def _record(self, counts: Counts, seconds: float) -> None:
        self.runs += 1
        for name, value in counts.items():
            self.totals[name] = self.totals.get(name, 0) + value
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, value in counts.items():
                pipe.hincrby(self.key, f"total_{name}", value)
            pipe.hincrby(self.key, "completed", 1)
            pipe.hset(self.key, mapping={"last_ms": round(seconds * 1000, 3), "last_by": self.claimant})
            await pipe.execute()
        summary = ", ".join(f"{name} {value}" for name, value in counts.items())
        log.info("%s: %s (%.3f s)", self.job.name, summary or "nothing to do", seconds)
