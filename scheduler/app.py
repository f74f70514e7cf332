"""The Taskiq scheduler app: ``taskiq scheduler scheduler.app:scheduler --update-interval 10``.

It fires two kinds of schedules through the worker broker (each firing creates a job, see
``JobBroker.kick``): schedules declared in code as ``schedule`` labels of broker tasks
(``LabelScheduleSource``; see :func:`declare_schedule`), and runtime schedules kept in
Redis (``JobScheduleSource``; ``jobstream schedule add|list|remove``). ``--update-interval``
is how often (seconds) it re-reads them, so how soon an added schedule starts; a removed
one stops at once. Maintenance (cleanup, reaper) runs in this process, once per tick
across all replicas; its periods are ``JOBSTREAM_CLEANUP_INTERVAL_SECONDS`` and
``JOBSTREAM_REAPER_INTERVAL_SECONDS``.
"""

from __future__ import annotations

from typing import Any

from taskiq.schedule_sources import LabelScheduleSource

from scheduler.schedule_source import JobScheduleSource
from scheduler.scheduler import JobScheduler
from workers.app import broker, settings


def declare_schedule(task: str, **schedule: Any) -> None:
    """Give a registered task a code-declared schedule, e.g.
    ``declare_schedule("demo.noop", cron="0 * * * *", kwargs={}, labels={"owner": "ops"})``.

    Call it before the scheduler starts (here, or in a task module it imports).
    """
    found = broker.find_task(task)
    if found is None:
        raise LookupError(f"no task {task!r} is registered")
    found.labels.setdefault("schedule", []).append(schedule)


scheduler = JobScheduler(
    broker,
    [LabelScheduleSource(broker), JobScheduleSource(settings)],
    settings,
)
