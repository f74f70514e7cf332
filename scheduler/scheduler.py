"""``JobScheduler``: Taskiq's scheduler, plus jobstream's maintenance and replica safety.

Two things differ from the stock ``TaskiqScheduler``:

- Maintenance (cleanup, reaper) runs here, in the scheduler process, on timers that
  claim each tick in Redis (:mod:`scheduler.ticks`), not as Taskiq schedules kicked to
  workers. Kicked maintenance would need a job record per run, would wait behind user
  jobs in the queue, and the taskiq loop's whole-second, per-replica timing cannot say
  "once per tick" across replicas; a timer on server-time slots can.
- Every fired schedule carries an ``idempotency_key`` label naming the schedule and the
  slot it fired for (the minute for cron, the interval number, or "once"), so that N
  replicas firing the same schedule create one job, not N (``JobBroker.kick`` passes the
  key to ``Jobstream.submit``, the public API, which checks every creation rule).
- A firing that meets a Redis outage or a failover (or too few replicas confirming it,
  with ``JOBSTREAM_CREATE_REPLICAS``) is sent again until it lands, for up to
  :data:`FIRING_PATIENCE_SECONDS`: its key makes every try the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence

from taskiq import ScheduledTask, ScheduleSource, TaskiqScheduler
from taskiq.exceptions import SendTaskError

from broker.connection import (
    REDIS_FAULTS,
    STARTUP_PATIENCE_SECONDS,
    RedisWatch,
    resilient_options,
    until_redis_answers,
)
from broker.errors import NotReplicated
from broker.log_format import use_log_format
from broker.queues import ensure_groups
from broker.scripts import Scripts
from broker.settings import Settings
from broker.topology import RedisClient, open_redis
from scheduler.cleanup import Cleanup
from scheduler.reaper import Reaper
from scheduler.ticks import Periodic, Ticker
from workers.job_broker import JobBroker

log = logging.getLogger("jobstream.scheduler")

_SECONDS_PER_MINUTE = 60
FIRING_PATIENCE_SECONDS = 60.0
"""How long a due schedule's firing keeps trying through a Redis outage or a failover."""
_FIRING_FAULTS: tuple[type[Exception], ...] = (*REDIS_FAULTS, NotReplicated)


def fire_key(schedule: ScheduledTask, fired_at: float) -> str:
    """The idempotency key of one firing: the same on every replica that fires it.

    The taskiq loop fires on whole seconds, so ``fired_at`` is rounded to the second it
    aimed at; cron fires once a minute, an interval once per interval, a time once.
    """
    second = round(fired_at)
    if schedule.cron is not None:
        slot = f"m{second // _SECONDS_PER_MINUTE}"
    elif schedule.interval is not None:
        interval = schedule.interval
        seconds = interval if isinstance(interval, int) else int(interval.total_seconds())
        slot = f"i{second // max(1, seconds)}"
    else:
        slot = "once"
    return f"schedule:{schedule.schedule_id}:{slot}"


class JobScheduler(TaskiqScheduler):
    """``taskiq scheduler scheduler.app:scheduler``: user schedules plus maintenance."""

    def __init__(self, broker: JobBroker, sources: Sequence[ScheduleSource], settings: Settings) -> None:
        super().__init__(broker, list(sources))
        self.job_broker = broker
        self.settings = settings
        self.claimant = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.watch = RedisWatch(log, f"scheduler {self.claimant}")
        self.tickers: list[Ticker] = []
        self._redis: RedisClient | None = None
        self._loops: list[asyncio.Task[None]] = []

    async def startup(self) -> None:
        """Start the broker, create the consumer groups, and start the maintenance timers."""
        use_log_format(self.settings.log_format)
        await super().startup()
        redis = self._redis = open_redis(self.settings.topology, **resilient_options())
        broker = self.job_broker
        scripts = Scripts.register(redis, broker.keys)
        queues = broker.registry.queues(self.settings.default_queue) | set(self.settings.queues)
        watch = self.watch

        async def prepare() -> None:
            await scripts.load_all()
            await ensure_groups(redis, broker.keys, sorted(queues))

        give_up = time.monotonic() + STARTUP_PATIENCE_SECONDS
        await until_redis_answers(watch, "starting up", prepare, lambda: give_up)
        cleanup = Cleanup(redis, self.settings, scripts)
        reaper = Reaper(redis, self.settings, scripts, broker.registry, queues)
        self.tickers = [
            Ticker(redis, scripts, self.claimant, job, watch)
            for job in (
                Periodic("cleanup", self.settings.cleanup_interval_seconds, cleanup.run),
                Periodic("reaper", self.settings.reaper_interval_seconds, reaper.run),
            )
        ]
        self._loops = [
            asyncio.create_task(ticker.run_forever(), name=f"jobstream-{ticker.job.name}")
            for ticker in self.tickers
        ]
        if broker.is_scheduler_process:
            _stop_on_sigterm()
        log.info(
            "scheduler %s: cleanup every %d s, reaper every %d s",
            self.claimant,
            self.settings.cleanup_interval_seconds,
            self.settings.reaper_interval_seconds,
        )

    async def shutdown(self) -> None:
        """Stop the maintenance timers, close Redis, then stop the broker."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
        await super().shutdown()

    async def on_ready(self, source: ScheduleSource, task: ScheduledTask) -> None:
        """Send a due schedule, keyed so that replicas firing it too create one job; through
        a Redis outage, again until it lands (taskiq skips the schedule's next firings meanwhile)."""
        labels = dict(task.labels)
        labels.setdefault("idempotency_key", fire_key(task, time.time()))
        keyed = task.model_copy(update={"labels": labels})
        give_up = time.monotonic() + FIRING_PATIENCE_SECONDS
        try:
            await until_redis_answers(
                self.watch,
                f"firing schedule {task.schedule_id}",
                lambda: self._fire(source, keyed),
                lambda: give_up,
                _FIRING_FAULTS,
            )
        except SendTaskError as err:  # an unknown task, a bad input, the owner's quota
            reason = err.__cause__ or err
            log.error("schedule %s (%s): no job created: %r", task.schedule_id, task.task_name, reason)
        except _FIRING_FAULTS as err:
            log.error(
                "schedule %s (%s): no job created, Redis unavailable: %r",
                task.schedule_id,
                task.task_name,
                err,
            )

    async def _fire(self, source: ScheduleSource, task: ScheduledTask) -> None:
        """Taskiq's send; a Redis fault (or too few replicas) under its ``SendTaskError``
        comes out bare, for :meth:`on_ready` to try again."""
        try:
            await super().on_ready(source, task)
        except SendTaskError as err:
            if isinstance(err.__cause__, _FIRING_FAULTS):
                raise err.__cause__ from None
            raise


def _stop_on_sigterm() -> None:
    """Make SIGTERM cancel the scheduler like Ctrl-C does, so it shuts down in order."""
    main = asyncio.current_task()
    if main is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
