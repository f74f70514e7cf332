"""A worker's leases and heartbeat: renewed every lease/3 while it lives, handed back when it stops.

The entries a worker holds (``Deliveries.inflight``) are renewed by its own consumer, so a
live worker's long job is never reclaimed by another; an entry renewed elsewhere (this
worker stalled past a lease) is lost here, and its job is stopped. The heartbeat hash
names the worker, its queues, its slots, the jobs it runs (and how many of each queue) and
its counters, with a TTL of three leases. It is written every lease/3, and also
``PROMPT_BEAT_SECONDS`` after a job starts or ends (the changes of that time coalesced:
at most a few writes a second however many jobs run), so ``GET /workers`` shows a job as
running within a fraction of a second of its start. See docs/ARCHITECTURE.md, "Faults".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

import msgspec

from broker.connection import REDIS_FAULTS, RedisWatch, backoff
from broker.fleet import HEARTBEAT_TTL_LEASES
from broker.settings import Settings
from broker.store import GROUP
from broker.topology import RedisClient
from workers.deliveries import Deliveries
from workers.executor import JobExecutor

log = logging.getLogger("jobstream.broker")
_HAND_BACK_IDLE_LEASES = 10
"""A handed-back entry's idle time, in leases: far past one, so the next reclaim anywhere takes it."""
PROMPT_BEAT_SECONDS = 0.2
"""How soon after a job starts or ends the heartbeat is written (changes meanwhile ride along)."""


class Leases:
    """The lease loop of one worker process: renew, beat, write pending progress; sign off at the end."""

    def __init__(
        self, settings: Settings, deliveries: Deliveries, executor: JobExecutor, watch: RedisWatch
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.deliveries = deliveries
        self.executor = executor
        self.consumer_name = deliveries.consumer_name
        self.watch = watch
        self._redis: RedisClient = executor.store.redis
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # set by stop() and changed()
        self._beat_due = False
        self._hand_back: dict[str, set[str]] = {}
        self.slots = settings.worker_concurrency

    def stop(self, hand_back: dict[str, set[str]]) -> None:
        """End the loop: it hands ``hand_back`` (stream -> entry ids) back and deletes the heartbeat."""
        self._hand_back = hand_back
        self._stopping.set()
        self._wake.set()

    def changed(self) -> None:
        """A job started or ended here: write the heartbeat soon (``PROMPT_BEAT_SECONDS``)."""
        self._beat_due = True
        self._wake.set()

    async def keep(self) -> None:
        """Renew held entries and refresh the heartbeat every lease/3, and the heartbeat alone
        soon after a job starts or ends, until :meth:`stop`.

        While Redis fails, it tries again with backoff (never slower than lease/3), so the
        leases are renewed as soon as Redis is back and a blip shorter than the lease
        costs no job; then it writes the progress that could not be saved meanwhile.
        """
        period = self.settings.lease_seconds / 3
        failures = 0
        renew_at = 0.0
        while not self._stopping.is_set():
            began = time.monotonic()
            self._beat_due = False
            try:
                if began >= renew_at:
                    await self._renew(self.deliveries.inflight, idle_ms=0)
                    self.executor.leases_renewed_at = began
                    renew_at = began + period
                    await self._heartbeat()
                    await self.executor.flush_progress()
                else:
                    await self._heartbeat()
            except REDIS_FAULTS as err:
                self.watch.failed("renewing leases", err, began)
                failures += 1
            else:
                self.watch.answered()
                failures = 0
            await self._pause(min(period, backoff(failures)) if failures else renew_at - time.monotonic())
        await self._sign_off()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a job starts or ends (then a little, for the changes of
        that moment to ride along), or until :meth:`stop`."""
        if not self._beat_due:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        if self._beat_due and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PROMPT_BEAT_SECONDS)

    async def _sign_off(self) -> None:
        """Hand held entries back for prompt reclaim, and delete this worker's heartbeat.

        Done by the loop itself, after its last beat was answered: a beat still in flight
        can never land after the delete and show a gone worker as live until its TTL.
        """
        idle_ms = int(self.settings.lease_seconds * 1000) * _HAND_BACK_IDLE_LEASES
        try:
            await self._renew(self._hand_back, idle_ms=idle_ms)
        finally:
            await self._redis.delete(self.keys.worker(self.consumer_name))

    async def _renew(self, entries: dict[str, set[str]], idle_ms: int) -> None:
        scripts = self.executor.store.scripts
        for stream, held in list(entries.items()):
            if not held:
                continue
            lost = await scripts.renew_leases(
                stream=stream, group=GROUP, consumer=self.consumer_name, idle_ms=idle_ms, entry_ids=list(held)
            )
            for entry_id in lost:
                self._lost(stream, entry_id)

    def _lost(self, stream: str, entry_id: str) -> None:
        self.deliveries.release(stream, entry_id)
        for job_id, running in list(self.executor.running.items()):
            if running.delivery.entry_id == entry_id and running.delivery.stream == stream:
                log.warning("job %s: lease lost to another worker; stopping it here", job_id)
                self.executor.abandon(job_id)

    async def _heartbeat(self) -> None:
        key = self.keys.worker(self.consumer_name)
        counters: dict[str, Any] = dataclasses.asdict(self.executor.counters)
        running = self.executor.running
        busy = Counter(self.keys.queue_of(job.delivery.stream)[0] for job in running.values())
        async with self._redis.pipeline(transaction=False) as pipe:
            mapping: Any = {
                "consumer": self.consumer_name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": ",".join(self.deliveries.queues),
                "running": ",".join(running),
                "slots": self.slots,
                "busy": msgspec.json.encode(busy),
                "seen_at": int(time.time() * 1000),
                **counters,
            }
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, max(1000, int(self.settings.lease_seconds * HEARTBEAT_TTL_LEASES * 1000)))
            await pipe.execute()
