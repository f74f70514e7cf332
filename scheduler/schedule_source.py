"""Runtime schedules of jobstream tasks, kept in Redis: cron, every N seconds, or once at a time.

The scheduler reads them through :class:`JobScheduleSource`, taskiq-redis's
``ListRedisScheduleSource`` with three changes: JSON instead of pickle (a writable Redis
must not mean code execution in the scheduler); a removed schedule stops at once (checked
right before each send) instead of at the scheduler's next refresh; and it reads the time
keys of this minute and the last one on each refresh, plus every overdue one on the first,
instead of SCANning the keyspace on every refresh. Operators add and remove schedules
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
from redis.asyncio import Redis
from taskiq import ScheduledTask
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from broker.errors import JobstreamError
from broker.keys import Keys
from broker.registry import TaskRegistry
from broker.settings import Settings

log = logging.getLogger("jobstream.schedules")

_CRON_FIELDS = 5


class InvalidSchedule(JobstreamError):
    """A schedule that names no task, has a bad input, or has no valid time rule."""


class JobScheduleSource(ListRedisScheduleSource):
    """The runtime schedule source (see the module docstring for how it differs)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settings.redis_url,
            prefix=Keys(settings.prefix).schedule_prefix,
            serializer=JSONSerializer(),
            skip_past_schedules=True,
        )
        self._caught_up = False

    async def get_schedules(self) -> list[ScheduledTask]:
        """Cron and interval schedules, and one-shot ones due this minute or the last one
        (on the first call, every overdue one: they came due while no scheduler ran)."""
        now = dt.datetime.now(dt.UTC)
        ids: list[bytes] = []
        if not self._caught_up:
            ids += await self._get_previous_time_schedules()
            self._caught_up = True
        async with Redis(connection_pool=self._connection_pool) as redis:
            for key in (
                self._get_cron_key(),
                self._get_interval_key(),
                self._get_time_key(now - dt.timedelta(minutes=1)),
                self._get_time_key(now),
            ):
                ids += cast(list[bytes], await redis.lrange(key, 0, -1))
            unique = list(dict.fromkeys(ids))
            blobs: list[bytes | None] = []
            for start in range(0, len(unique), self._buffer_size):
                batch = [self._get_data_key(i.decode()) for i in unique[start : start + self._buffer_size]]
                blobs += cast(list[bytes | None], await redis.mget(batch))
        return [schedule for blob in blobs if blob and (schedule := self._parse(blob)) is not None]

    async def pre_send(self, task: ScheduledTask) -> None:
        """Cancel the send of a schedule removed since the scheduler last read the list."""
        async with Redis(connection_pool=self._connection_pool) as redis:
            if not await redis.exists(self._get_data_key(task.schedule_id)):
                log.info("schedule %s was removed: not sent", task.schedule_id)
                raise ScheduledTaskCancelledError

    async def list_all(self) -> list[ScheduledTask]:
        """Every stored schedule (SCAN over the schedule data keys, in batches)."""
        found: list[ScheduledTask] = []
        async with Redis(connection_pool=self._connection_pool) as redis:
            async for key in redis.scan_iter(self._get_data_key("*"), count=self._buffer_size):
                blob = cast(bytes | None, await redis.get(key))
                if blob and (schedule := self._parse(blob)) is not None:
                    found.append(schedule)
        return sorted(found, key=lambda s: s.schedule_id)

    async def exists(self, schedule_id: str) -> bool:
        """Whether a schedule with this id is stored."""
        async with Redis(connection_pool=self._connection_pool) as redis:
            return bool(await redis.exists(self._get_data_key(schedule_id)))

    async def shutdown(self) -> None:
        """Close the source's connections."""
        await self._connection_pool.disconnect()

    def _parse(self, blob: bytes) -> ScheduledTask | None:
        try:
            return ScheduledTask.model_validate(self._serializer.loadb(blob))
        except (ValueError, ValidationError):
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
        if await source.exists(schedule.schedule_id):
            await source.delete_schedule(schedule.schedule_id)
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
