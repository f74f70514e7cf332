"""The Redis key schema: the only module that formats a Redis key or channel name."""

from __future__ import annotations

import hashlib


class Keys:
    """Key and channel names under one prefix (``js:`` by default).

    All keys of one job share the hash tag ``{<id>}`` so a job's script touches one slot.
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        """The job record hash."""
        return f"{self.prefix}job:{{{job_id}}}"

    def job_channel(self, job_id: str) -> str:
        """Pub/sub channel with one event per change of the job (the job key + ``:events``)."""
        return f"{self.prefix}job:{{{job_id}}}:events"

    def webhook(self, job_id: str) -> str:
        """The completion webhook of an ended job: its terminal record, URL, attempts, deadline."""
        return f"{self.prefix}webhook:{{{job_id}}}"

    @property
    def webhooks_due(self) -> str:
        """Sorted set of job ids whose webhook is due, by due ms (a claimed one: by lease end)."""
        return f"{self.prefix}webhooks:due"

    def owner_jobs(self, owner: str) -> str:
        """Sorted set of the owner's job ids by creation time (ms)."""
        return f"{self.prefix}owner:{owner}:jobs"

    def owner_active(self, owner: str) -> str:
        """Set of the owner's PENDING/PROCESSING job ids, for the active-job quota."""
        return f"{self.prefix}owner:{owner}:active"

    def owner_channel(self, owner: str) -> str:
        """Pub/sub channel with the events of all the owner's jobs (the dashboard feed)."""
        return f"{self.prefix}owner:{owner}:events"

    @property
    def owner_channel_prefix(self) -> str:
        """Prefix that scripts complete with ``<owner>:events`` to reach the owner channel."""
        return f"{self.prefix}owner:"

    def idempotency(self, owner: str, key: str) -> str:
        """Idempotency key -> job id. The client's key is hashed, so any bytes are safe."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}idem:{owner}:{digest}"

    def queue(self, name: str) -> str:
        """The stream of Taskiq messages for one queue."""
        return f"{self.prefix}queue:{name}"

    def delayed(self, name: str) -> str:
        """Sorted set of messages due later (delayed jobs, retry backoff), score = due ms."""
        return f"{self.prefix}queue:{name}:delayed"

    def dead(self, name: str) -> str:
        """Stream of messages that exhausted their deliveries."""
        return f"{self.prefix}queue:{name}:dead"

    def worker(self, consumer: str) -> str:
        """A live worker's heartbeat hash."""
        return f"{self.prefix}worker:{consumer}"

    @property
    def worker_pattern(self) -> str:
        """SCAN pattern over worker heartbeat hashes."""
        return f"{self.prefix}worker:*"

    @property
    def owner_index_pattern(self) -> str:
        """SCAN pattern over owner job indexes."""
        return f"{self.prefix}owner:*:jobs"

    @property
    def owner_active_pattern(self) -> str:
        """SCAN pattern over owner active-job sets."""
        return f"{self.prefix}owner:*:active"

    @property
    def dead_pattern(self) -> str:
        """SCAN pattern over dead-letter streams."""
        return f"{self.prefix}queue:*:dead"

    @property
    def idempotency_pattern(self) -> str:
        """SCAN pattern over idempotency keys."""
        return f"{self.prefix}idem:*"

    def schedule(self, schedule_id: str) -> str:
        """A runtime schedule, as JSON (the layout of taskiq-redis's ``ListRedisScheduleSource``)."""
        return f"{self.prefix}schedule:data:{schedule_id}"

    @property
    def schedule_pattern(self) -> str:
        """SCAN pattern over runtime schedules."""
        return self.schedule("*")

    @property
    def cron_schedules(self) -> str:
        """List of the ids of cron schedules."""
        return f"{self.prefix}schedule:cron"

    @property
    def interval_schedules(self) -> str:
        """List of the ids of interval schedules."""
        return f"{self.prefix}schedule:interval"

    def timed_schedules(self, minute: str) -> str:
        """List of the ids of one-shot schedules due in ``minute`` (``YYYY-MM-DDTHH:MM``, UTC)."""
        return f"{self.prefix}schedule:time:{minute}"

    @property
    def cancel_channel(self) -> str:
        """Channel on which cancel requests for running jobs reach the workers."""
        return f"{self.prefix}cancel"

    @property
    def replication_marker(self) -> str:
        """A channel nobody listens to: a PUBLISH on it before ``WAIT`` makes the WAIT cover
        every write the primary took so far, not only the connection's own (see ``broker.batching``)."""
        return f"{self.prefix}replication-marker"

    def lock(self, name: str) -> str:
        """A lock with an expiry (scheduler ticks)."""
        return f"{self.prefix}lock:{name}"
