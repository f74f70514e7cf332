"""Runtime schedules of jobstream tasks, kept in Redis: cron, every N seconds, or once at a time.

The scheduler reads them through :class:`JobScheduleSource`, on taskiq's public
``ScheduleSource``. Its Redis layout is the one taskiq-redis's ``ListRedisScheduleSource``
used before (``Keys.schedule`` and the id lists beside it), so schedules stored by an
earlier version keep firing. What differs from that source: JSON instead of pickle (a
writable Redis must not mean code execution in the scheduler); a removed schedule stops at
once (checked right before each send) instead of at the scheduler's next refresh; and each
refresh reads the time lists of this minute and the last one, plus every overdue one on
the first, instead of SCANning the keyspace every time. Operators add and remove schedules
while the scheduler runs, with :func:`add_schedule` and :func:`remove_schedule` (or
``jobstream schedule add|list|remove``).

When a schedule fires, ``JobBroker.kick`` creates a job owned by the ``owner`` label
(default ``scheduler``) with the schedule's kwargs as input.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

import msgspec
from croniter import croniter
from pydantic import ValidationError
from taskiq import ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError

from broker.connection import resilient_options
from broker.errors import JobstreamError
from broker.registry import TaskRegistry
from broker.settings import Settings
from broker.topology import open_redis

log = logging.getLogger("jobstream.schedules")

_CRON_FIELDS = 5
_BATCH = 50
"""Schedules read per MGET, and keys per SCAN step."""
_MINUTE_FORMAT = "%Y-%m-%dT%H:%M"


class InvalidSchedule(JobstreamError):
    """A schedule that names no task, has a bad input, or has no valid time rule."""


class JobScheduleSource(ScheduleSource):
    """The runtime schedule source (see the module docstring for how it differs)."""

    def __init__(self, settings: Settings) -> None:
        self.keys = settings.keys
        self.redis = open_redis(settings.topology, **resilient_options())
        self._caught_up = False

    async def shutdown(self) -> None:
        """Close the source's connections."""
        await self.redis.aclose()

    async def get_schedules(self) -> list[ScheduledTask]:
        """Cron and interval schedules, and one-shot ones due this minute or the last one
        (on the first call, every overdue one: they came due while no scheduler ran)."""
        now = dt.datetime.now(dt.UTC)
        ids: list[bytes] = []
        if not self._caught_up:
            ids += await self._overdue_ids(now)
            self._caught_up = True
        for key in (
            self.keys.cron_schedules,
            self.keys.interval_schedules,
            self._timed(now - dt.timedelta(minutes=1)),
            self._timed(now),
        ):
            ids += cast(list[bytes], await self.redis.lrange(key, 0, -1))
        unique = list(dict.fromkeys(ids))
        blobs: list[bytes | None] = []
        for start in range(0, len(unique), _BATCH):
            batch = [self.keys.schedule(i.decode()) for i in unique[start : start + _BATCH]]
            blobs += cast(list[bytes | None], await self.redis.mget(batch))
        return [schedule for blob in blobs if blob and (schedule := _parse(blob)) is not None]

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        """Store a schedule and list its id under its rule, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.schedule(schedule.schedule_id), _encode(schedule))
            pipe.rpush(self._rule_list(schedule), schedule.schedule_id)
            await pipe.execute()

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule and take its id off its rule's list (nothing if there is none)."""
        blob = cast(bytes | None, await self.redis.getdel(self.keys.schedule(schedule_id)))
        schedule = _parse(blob) if blob else None
        if schedule is not None:
            await self.redis.lrem(self._rule_list(schedule), 0, schedule_id)

    async def pre_send(self, task: ScheduledTask) -> None:
        """Cancel the send of a schedule removed since the scheduler last read the list."""
        if not await self.exists(task.schedule_id):
            log.info("schedule %s was removed: not sent", task.schedule_id)
            raise ScheduledTaskCancelledError

    async def post_send(self, task: ScheduledTask) -> None:
        """A one-shot schedule is done once sent: delete it."""
        if task.time is not None:
            await self.delete_schedule(task.schedule_id)

    async def list_all(self) -> list[ScheduledTask]:
        """Every stored schedule (SCAN over the schedule keys, in batches)."""
        found: list[ScheduledTask] = []
        async for key in self.redis.scan_iter(self.keys.schedule_pattern, count=_BATCH):
            blob = cast(bytes | None, await self.redis.get(key))
            if blob and (schedule := _parse(blob)) is not None:
                found.append(schedule)
        return sorted(found, key=lambda s: s.schedule_id)

    async def exists(self, schedule_id: str) -> bool:
        """Whether a schedule with this id is stored."""
        return bool(await self.redis.exists(self.keys.schedule(schedule_id)))

    async def _overdue_ids(self, now: dt.datetime) -> list[bytes]:
        """The ids of one-shot schedules due before the last minute (SCAN, on the first refresh only)."""
        before = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
        head = len(self.keys.timed_schedules(""))
        ids: list[bytes] = []
        async for key in self.redis.scan_iter(self.keys.timed_schedules("*"), count=_BATCH):
            try:
                due = dt.datetime.strptime(key.decode()[head:], _MINUTE_FORMAT).replace(tzinfo=dt.UTC)
            except ValueError:
                continue
            if due <= before:
                ids += cast(list[bytes], await self.redis.lrange(key, 0, -1))
        return ids

    def _timed(self, minute: dt.datetime) -> str:
        return self.keys.timed_schedules(minute.astimezone(dt.UTC).strftime(_MINUTE_FORMAT))

    def _rule_list(self, schedule: ScheduledTask) -> str:
        if schedule.cron is not None:
            return self.keys.cron_schedules
        if schedule.time is not None:
            time = schedule.time if schedule.time.tzinfo else schedule.time.replace(tzinfo=dt.UTC)
            return self._timed(time)
        return self.keys.interval_schedules


def _encode(schedule: ScheduledTask) -> bytes:
    return msgspec.json.encode(schedule.model_dump(mode="json"))


def _parse(blob: bytes) -> ScheduledTask | None:
    try:
        return ScheduledTask.model_validate(msgspec.json.decode(blob))
    except (msgspec.DecodeError, ValueError, ValidationError):
        log.warning("ignoring an unreadable schedule: %r", blob[:200])
        return None


def build_schedule(
    registry: TaskRegistry,
    task: str,
    input_json: bytes = b"{}",
    *,
    cron: str | None = None,
    every_seconds: int | None = None,
    at: dt.datetime | None = None,
    owner: str | None = None,
    schedule_id: str | None = None,
) -> ScheduledTask:
    """A validated schedule of ``task``: exactly one of ``cron``, ``every_seconds``, ``at``.

    The input is checked against the task's input type now, so a bad schedule fails when
    it is added, not every time it fires. Raises :class:`InvalidSchedule` or ``UnknownTask``.
    """
    spec = registry.get(task)
    try:
        spec.decode_input(input_json)
        value: Any = msgspec.json.decode(input_json)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise InvalidSchedule(f"{task}: invalid input: {err}") from None
    if sum(rule is not None for rule in (cron, every_seconds, at)) != 1:
        raise InvalidSchedule("give exactly one of a cron expression, an interval or a time")
    if cron is not None and (len(cron.split()) != _CRON_FIELDS or not croniter.is_valid(cron)):
        raise InvalidSchedule(f"not a 5-field cron expression: {cron!r}")
    if every_seconds is not None and every_seconds < 1:
        raise InvalidSchedule("the interval must be at least 1 second")
    kwargs, args = (value, []) if isinstance(value, dict) else ({}, [value])
    extra: dict[str, Any] = {"schedule_id": schedule_id} if schedule_id else {}
    try:
        return ScheduledTask(
            task_name=spec.name,
            labels={"owner": owner} if owner else {},
            args=args,
            kwargs=kwargs,
            cron=cron,
            interval=every_seconds,
            time=at.astimezone(dt.UTC) if at is not None else None,
            **extra,
        )
    except ValidationError as err:
        raise InvalidSchedule(str(err)) from None


async def add_schedule(settings: Settings, schedule: ScheduledTask) -> str:
    """Store ``schedule`` (replacing one with the same id); running schedulers pick it up."""
    source = JobScheduleSource(settings)
    try:
        await source.delete_schedule(schedule.schedule_id)  # off its old rule's list, if any
        await source.add_schedule(schedule)
    finally:
        await source.shutdown()
    return schedule.schedule_id


async def remove_schedule(settings: Settings, schedule_id: str) -> bool:
    """Remove a schedule; it stops firing at once. False if there was none with that id."""
    source = JobScheduleSource(settings)
    try:
        found = await source.exists(schedule_id)
        await source.delete_schedule(schedule_id)
    finally:
        await source.shutdown()
    return found


async def list_schedules(settings: Settings) -> list[ScheduledTask]:
    """Every stored runtime schedule."""
    source = JobScheduleSource(settings)
    try:
        return await source.list_all()
    finally:
        await source.shutdown()
